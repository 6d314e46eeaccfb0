"""Webhook intake: takes the provider's status webhooks, durably, and answers only after.

Both shapes are accepted: the documented ``call.status_changed`` and the deployed
``call.completed`` envelope. Bad requests get a 4xx with a JSON reason; nothing a sender does can
crash the intake. Numbers must be JSON numbers (not ``"12"`` or ``true``) and finite.

Authentication depends on the URL:

* ``/webhooks/magpipe/{token}``, the per-call URL the orchestrator gave the provider: the
  unguessable token proves origin (a documented-dialect provider does not sign). An unknown
  token is refused 401. If a secret is configured *and* the request carries
  ``x-magpipe-signature``, that signature must also be valid (401 otherwise).
* ``/webhooks/magpipe``, the account-level URL (the deployed provider's): it carries no token,
  so with ``magpipe.webhook_secret`` configured a valid ``x-magpipe-signature`` is required
  (401 otherwise). Without a secret configured, account-level deliveries are always refused
  401: nothing would authenticate them.

Signatures are compared in constant time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import exceptions
from orchestrator.metrics import Metrics
from orchestrator.model import (
    CORRELATION_KEY,
    LEGACY_CORRELATION_KEY,
    CallStatus,
    Event,
    load_json,
    unstorable,
)
from orchestrator.store import Ingest, IngestResult, Store, Webhook

log = structlog.get_logger(__name__)

PATH = "/webhooks/magpipe"
SIGNATURE_HEADER = "x-magpipe-signature"

# A duration: a JSON number (an int or a float, never "12" or true), finite, not negative.
Seconds = Annotated[float, Field(ge=0, strict=True, allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class StatusChanged(_Body):
    """The documented webhook."""

    event: Literal["call.status_changed"]
    call_id: str = Field(min_length=1, max_length=200)
    status: str = Field(max_length=40)
    duration: Seconds | None = None
    recording_url: str | None = None
    transcript: str | None = None
    metadata: dict[str, Any] | None = None
    timestamp: str | None = None


class CompletedData(_Body):
    """The ``data`` of the deployed ``call.completed`` envelope."""

    call_record_id: str = Field(min_length=1, max_length=200)
    status: str = Field(default="completed", max_length=40)
    caller_number: str | None = None
    service_number: str | None = None
    duration_seconds: Seconds | None = None
    transcript: str | None = None
    summary: str | None = None
    extracted_data: dict[str, Any] | None = None
    agent_id: str | None = None
    agent_name: str | None = None
    direction: str | None = None


class Completed(_Body):
    """The deployed webhook envelope."""

    event: Literal["call.completed"]
    timestamp: str | None = None
    data: CompletedData


def _reject(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def parse(raw: bytes) -> Webhook | web.Response:
    """Parse and validate a body into a Webhook, or the 4xx answer explaining why not."""
    try:
        body = load_json(raw)
    except ValueError:
        return _reject(400, "MALFORMED_JSON", "the body is not JSON")
    if not isinstance(body, dict):
        return _reject(400, "INVALID_BODY", "the body must be a JSON object")
    # 1e999 parses as inf and "\ud800" as a lone surrogate; neither can be stored and written
    # back as JSON, anywhere in the body (extracted_data is stored as it came).
    problem = unstorable(body)
    if problem is not None:
        where, why = problem
        return _reject(400, "INVALID_BODY", f"{where}: {why}")
    kind = body.get("event")
    try:
        if kind == "call.status_changed":
            doc = StatusChanged.model_validate(body)
            status = CallStatus.from_provider(doc.status)
            if status is None:
                return _reject(400, "UNKNOWN_STATUS", f"unknown call status {doc.status!r}")
            echoed = doc.metadata or {}
            correlation = echoed.get(CORRELATION_KEY) or echoed.get(LEGACY_CORRELATION_KEY)
            return Webhook(
                raw=raw,
                status=status,
                provider_call_id=doc.call_id,
                correlation=correlation if isinstance(correlation, str) else None,
                duration=doc.duration,
                recording_url=doc.recording_url,
                transcript=doc.transcript,
            )
        if kind == "call.completed":
            env = Completed.model_validate(body)
            status = CallStatus.from_provider(env.data.status) or CallStatus.COMPLETED
            extra = {
                k: v
                for k, v in (
                    ("summary", env.data.summary),
                    ("extracted_data", env.data.extracted_data),
                )
                if v is not None
            }
            return Webhook(
                raw=raw,
                status=status,
                provider_call_id=env.data.call_record_id,
                to=env.data.caller_number,
                from_=env.data.service_number,
                duration=env.data.duration_seconds,
                transcript=env.data.transcript,
                data=extra,
            )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return _reject(400, "INVALID_BODY", f"{where}: {first['msg']}")
    return _reject(400, "UNKNOWN_EVENT", f"unsupported event type {kind!r}")


class GroupCommit:
    """Writes the webhooks that arrive while a transaction is being written together, in the
    next one (group commit): a lone webhook is written at once, a burst in a few commits.

    Each request still waits for its own webhook to be committed before it is answered. The
    writer is a task that lives only while webhooks wait; whatever ends it early (cancelled,
    or a bug) is handed to every waiting request (a 503: the provider sends it again), so
    none is left hanging.
    """

    def __init__(self, store: Store, *, max_batch: int = 64) -> None:
        self.store = store
        self.max_batch = max_batch
        self._waiting: list[tuple[Webhook, str | None, asyncio.Future[IngestResult]]] = []
        self._batch: list[tuple[Webhook, str | None, asyncio.Future[IngestResult]]] = []
        self._writer: asyncio.Task[None] | None = None
        #: Transactions written and webhooks in them (the mean batch is their ratio).
        self.commits = 0
        self.written = 0

    async def ingest(self, hook: Webhook, *, token: str | None = None) -> IngestResult:
        """What :meth:`Store.ingest` does, sharing the transaction with concurrent callers."""
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((hook, token, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="intake:group-commit")
            self._writer.add_done_callback(self._ended)
        return await future

    async def _write(self) -> None:
        while self._waiting:
            self._batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            results = await self.store.ingest_many([(h, t) for h, t, _ in self._batch])
            batch, self._batch = self._batch, []
            self.commits += 1
            self.written += len(batch)
            for (_, _, future), result in zip(batch, results, strict=True):
                if future.done():  # its request went away; the webhook is written anyway
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        # Here, not in a callback: a webhook arriving from now on must start a new writer.
        self._writer = None

    def _ended(self, task: asyncio.Task[None]) -> None:
        """Whatever ended the writer early (cancelled, even before it ran, or a bug) is told
        to every request still waiting, so none is left hanging."""
        if self._writer is task:
            self._writer = None
        error: BaseException | None = (
            exceptions.StoreError("the webhook writer was stopped")
            if task.cancelled()
            else task.exception()
        )
        if error is None:
            return
        for _, _, future in self._batch + self._waiting:
            if not future.done():
                future.set_exception(error)
        self._batch, self._waiting = [], []


class Intake:
    """The aiohttp app behind ``webhooks.listen``."""

    def __init__(
        self,
        store: Store,
        *,
        publish: Callable[[Iterable[Event]], None],
        secret: str | None = None,
        max_body: int = 1 << 20,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.publish = publish
        self._secret = secret.encode() if secret else None
        self.max_body = max_body
        self.stats: dict[str, int] = {}
        self.metrics = metrics
        self.commit = GroupCommit(store)

    def app(self) -> web.Application:
        """The intake application (no access log: URLs carry webhook tokens)."""
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post(PATH, self.handle)
        app.router.add_post(PATH + "/{token}", self.handle)
        return app

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    async def handle(self, request: web.Request) -> web.Response:
        """Authenticate, validate, store, and only then answer."""
        response = await self._handle(request)
        self._count(str(response.status))
        if self.metrics is not None:
            self.metrics.webhooks.labels(str(response.status)).inc()
        return response

    def _authenticate(
        self, request: web.Request, raw: bytes, token: str | None
    ) -> web.Response | None:
        """The 401 for a request that does not prove its origin, else None (see the module
        docstring; the token itself is checked against the store when the webhook is applied)."""
        given = request.headers.get(SIGNATURE_HEADER)
        if token is None and self._secret is None:
            return _reject(
                401,
                "UNAUTHENTICATED",
                "account-level webhooks need magpipe.webhook_secret (x-magpipe-signature)",
            )
        if self._secret is None or (token is not None and given is None):
            return None  # the per-call token authenticates
        expected = b"sha256=" + hmac.new(self._secret, raw, hashlib.sha256).hexdigest().encode()
        # Undecodable header bytes arrive as surrogates: compare them as the bytes they were.
        if not hmac.compare_digest((given or "").encode("utf-8", "surrogateescape"), expected):
            log.warning("intake.bad_signature", remote=request.remote, per_call=token is not None)
            return _reject(401, "BAD_SIGNATURE", f"missing or wrong {SIGNATURE_HEADER}")
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.match_info.get("token")
        if request.content_length is not None and request.content_length > self.max_body:
            return _reject(413, "TOO_LARGE", f"the body exceeds {self.max_body} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _reject(413, "TOO_LARGE", f"the body exceeds {self.max_body} bytes")
        refused = self._authenticate(request, raw, token)
        if refused is not None:
            return refused
        parsed = parse(raw)
        if isinstance(parsed, web.Response):
            log.warning("intake.invalid", reason=parsed.text, remote=request.remote)
            return parsed
        try:
            result = await self.commit.ingest(parsed, token=token)
        except exceptions.StoreError as exc:
            log.error("intake.store_failed", error=str(exc))
            return _reject(503, "STORE_UNAVAILABLE", "try again later")
        if result.outcome is Ingest.APPLIED or result.outcome is Ingest.DUPLICATE:
            self.publish(result.events)
            return web.json_response({"ok": True, "outcome": result.outcome.value})
        # The rarer outcomes, each logged with its call.
        bound = log.bind(call_id=result.call_id, status=parsed.status.value)
        if result.outcome is Ingest.UNMATCHED:
            if token is not None:
                bound.warning("intake.unknown_token")
                return _reject(401, "UNKNOWN_TOKEN", "no call has this webhook token")
            bound.warning("intake.unknown_call", provider_call_id=parsed.provider_call_id)
            return _reject(404, "UNKNOWN_CALL", "no call of ours matches this webhook")
        if result.outcome is Ingest.CONFLICT:
            bound.warning("intake.conflict", provider_call_id=parsed.provider_call_id)
            return _reject(409, "CONFLICT", "this token belongs to another provider call")
        if result.outcome is Ingest.MISMATCH:
            # The provider's agent took another call's record: both calls are looked up.
            bound.warning(
                "intake.mismatch", provider_call_id=parsed.provider_call_id, number=parsed.to
            )
            if self.metrics is not None:
                self.metrics.webhook_mismatches.inc()
        if result.outcome is Ingest.STALE:
            # A status short of final only repeats what the call has reached or passed (nearly
            # every call: the placement's answer said `initiated` before the webhook did), a
            # harmless repeat; a final status after the call ended may contradict its outcome.
            if parsed.status.terminal:
                bound.info("intake.stale")
            else:
                bound.debug("intake.stale")
        self.publish(result.events)
        return web.json_response({"ok": True, "outcome": result.outcome.value})
