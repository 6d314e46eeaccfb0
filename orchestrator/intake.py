"""Webhook intake: takes the provider's status webhooks, durably, and answers only after.

Both shapes are accepted: the documented ``call.status_changed`` and the deployed
``call.completed`` envelope. Every request is authenticated, by the per-attempt token in the
URL the orchestrator gave the provider, or by ``x-magpipe-signature`` when a secret is set.
Bad requests get a 4xx with a JSON reason; nothing a sender does can crash the intake.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any, Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import exceptions
from orchestrator.model import CORRELATION_KEY, CallStatus, Event
from orchestrator.store import Ingest, Store, Webhook

log = structlog.get_logger(__name__)

PATH = "/webhooks/magpipe"
SIGNATURE_HEADER = "x-magpipe-signature"


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class StatusChanged(_Body):
    """The documented webhook."""

    event: Literal["call.status_changed"]
    call_id: str = Field(min_length=1, max_length=200)
    status: str = Field(max_length=40)
    duration: float | None = Field(default=None, ge=0)
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
    duration_seconds: float | None = Field(default=None, ge=0)
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
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _reject(400, "MALFORMED_JSON", "the body is not JSON")
    if not isinstance(body, dict):
        return _reject(400, "INVALID_BODY", "the body must be a JSON object")
    kind = body.get("event")
    try:
        if kind == "call.status_changed":
            doc = StatusChanged.model_validate(body)
            status = CallStatus.from_provider(doc.status)
            if status is None:
                return _reject(400, "UNKNOWN_STATUS", f"unknown call status {doc.status!r}")
            correlation = (doc.metadata or {}).get(CORRELATION_KEY)
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


class Intake:
    """The aiohttp app behind ``webhooks.listen``."""

    def __init__(
        self,
        store: Store,
        *,
        publish: Callable[[Iterable[Event]], None],
        secret: str | None = None,
        max_body: int = 1 << 20,
    ) -> None:
        self.store = store
        self.publish = publish
        self._secret = secret.encode() if secret else None
        self.max_body = max_body
        self.stats: dict[str, int] = {}

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
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.match_info.get("token")
        if request.content_length is not None and request.content_length > self.max_body:
            return _reject(413, "TOO_LARGE", f"the body exceeds {self.max_body} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _reject(413, "TOO_LARGE", f"the body exceeds {self.max_body} bytes")
        if self._secret is not None:
            given = request.headers.get(SIGNATURE_HEADER, "")
            expected = "sha256=" + hmac.new(self._secret, raw, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(given.encode(), expected.encode()):
                log.warning("intake.bad_signature", remote=request.remote)
                return _reject(401, "BAD_SIGNATURE", f"missing or wrong {SIGNATURE_HEADER}")
        elif token is None:
            return _reject(
                401,
                "UNAUTHENTICATED",
                "account-level webhooks need magpipe.webhook_secret (x-magpipe-signature)",
            )
        parsed = parse(raw)
        if isinstance(parsed, web.Response):
            log.warning("intake.invalid", reason=parsed.text, remote=request.remote)
            return parsed
        try:
            result = await self.store.ingest(parsed, token=token)
        except exceptions.StoreError as exc:
            log.error("intake.store_failed", error=str(exc))
            return _reject(503, "STORE_UNAVAILABLE", "try again later")
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
        if result.outcome is Ingest.STALE:
            bound.info("intake.stale")
        self.publish(result.events)
        return web.json_response({"ok": True, "outcome": result.outcome.value})
