"""A Magpipe simulator: an aiohttp app that places fake calls and sends their status webhooks.

It speaks either the documented API or the shape the provider actually deploys (see the
README's "The real service, and what the daemon does about it"), can inject the faults a real provider shows (429, 503, slow or dropped
answers, duplicate, shuffled, early or lost webhooks), and exposes `/_simulator/...` routes so
tests and demos can see what happened. The pure model lives in `orchestrator.provider.simulator.model`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import random
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aiohttp
import phonenumbers
import structlog
from aiohttp import web

from orchestrator.provider.simulator import limits
from orchestrator.provider.simulator.answers import (
    Rejection as _Rejection,
)
from orchestrator.provider.simulator.answers import (
    error_response as _error_response,
)
from orchestrator.provider.simulator.answers import (
    json_object as _json_object,
)
from orchestrator.provider.simulator.answers import (
    plain_error as _plain_error,
)
from orchestrator.provider.simulator.limits import KeyBudget
from orchestrator.provider.simulator.model import (
    CallRecord,
    Dialect,
    Outcome,
    SimulatorConfig,
    WebhookRecord,
    draw_plan,
    iso_now,
)
from orchestrator.provider.simulator.records import Records

__all__ = [
    "GET_CALL_PATH",
    "LIST_CALLS_PATH",
    "PLACE_CALL_PATH",
    "SIGNATURE_HEADER",
    "TERMINATE_CALL_PATH",
    "Simulator",
    "build_app",
    "is_valid_e164",
    "sign",
]

log = structlog.get_logger(__name__)

PLACE_CALL_PATH = "/functions/v1/initiate-bridged-call"
GET_CALL_PATH = "/functions/v1/get-call"
LIST_CALLS_PATH = "/functions/v1/list-calls"
TERMINATE_CALL_PATH = "/functions/v1/terminate-call"
# The deployed placement's certain failures: the record (if any) is marked failed first.
CARRIER_ERRORS = (
    "Failed to create call record",
    "Failed to configure call agent",
    "Failed to start agent SIP leg",
    "Failed to start PSTN leg",
)
# The deployed agent finds "its" record as the newest outbound one of the last two minutes.
MISATTRIBUTION_WINDOW = 120.0
SIGNATURE_HEADER = "x-magpipe-signature"
WEBHOOK_TIMEOUT_SECONDS = 10.0

# `+`, a country code that does not start with 0, 10 to 15 digits in all (the document's rule).
_E164 = re.compile(r"\+[1-9]\d{9,14}")


def is_valid_e164(number: object) -> bool:
    """Whether `number` is an E.164 string the document accepts: the right form and dialable."""
    if not isinstance(number, str) or _E164.fullmatch(number) is None:
        return False
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(parsed))


def sign(secret: str, body: bytes) -> str:
    """The `x-magpipe-signature` value for a webhook body: `sha256=` and the hex HMAC."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _Slots:
    """A FIFO counter of live calls, so queued calls start in the order they were placed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.live = 0
        self.max_live_seen = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        # Nobody may jump the queue: a free slot goes to the oldest waiter first.
        if self.live < self.limit and not self._waiters:
            self._take()
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we were cancelled: give it back.
                self.release()
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                # Hand the slot straight over, so `live` never dips and overshoots.
                waiter.set_result(None)
                return
        self.live -= 1

    def _take(self) -> None:
        self.live += 1
        self.max_live_seen = max(self.max_live_seen, self.live)


class Simulator:
    """A running Magpipe stand-in: serves the provider API and drives each call's lifecycle.

    Use `async with Simulator(config) as sim:` (ephemeral port) or `start()`/`stop()`.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.calls: list[CallRecord] = []
        self._dials: dict[str, int] = {}  # how often each number was dialled (scripts)
        self._asked: dict[str, int] = {}  # placement requests per number (scripted faults)
        self.balance = config.balance
        self.token = config.token  # rotated through /_simulator/account to test a revoked key
        self._rng = random.Random(config.seed)
        self._slots = _Slots(config.max_concurrent)
        self._tasks: set[asyncio.Task[None]] = set()
        # Late tails (the deployed agent leg's conference limit): not waited for by wait_idle.
        self._tails: set[asyncio.Task[None]] = set()
        self._hangups: dict[str, asyncio.Event] = {}
        #: Every request to the provider API: (endpoint, epoch seconds, the call id it names),
        #: oldest first.
        self.requests: list[tuple[str, float, str | None]] = []
        self._requests = 0
        self._rejected = 0
        #: The key's request budget, when one is enforced (``--rate-limit``).
        self.budget = KeyBudget(config.rate_limit) if config.rate_limit else None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._url: str | None = None

    # -- lifecycle of the simulator itself -------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on `host:port` (0 picks a free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_SECONDS)
        )
        # A short shutdown timeout: in-flight answers (slow faults) must not hold up stop().
        runner = web.AppRunner(build_app(self), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self._session.close()
            self._session = None
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._url = f"http://{_url_host(bound_host)}:{bound_port}"
        return self._url

    async def stop(self) -> None:
        """Stop serving, cancel every call lifecycle and close the webhook session."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        tasks = [*self._tasks, *self._tails]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The base URL the simulator serves on; only valid once started."""
        if self._url is None:
            raise RuntimeError("simulator not started")
        return self._url

    def stats(self) -> dict[str, Any]:
        """Counters for inspection: placed calls, live calls, requests, rejections, balance."""
        return {
            "placed": len(self.calls),
            "live": self._slots.live,
            "max_live_seen": self._slots.max_live_seen,
            "requests": self._requests,
            "requests_by_endpoint": dict(collections.Counter(e for e, _, _ in self.requests)),
            "rejected": self._rejected,
            "rate_limited": self.budget.limited if self.budget else 0,
            "busiest_minute": self.budget.busiest if self.budget else None,
            "balance": round(self.balance, 6),
        }

    async def wait_idle(self, timeout: float) -> None:  # noqa: ASYNC109 - the agreed API
        """Wait until every call lifecycle has finished sending its webhooks.

        Raises TimeoutError if that takes longer than `timeout` seconds.
        """
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.wait(set(self._tasks))

    # -- the provider API ------------------------------------------------------------------

    async def handle_place_call(self, request: web.Request) -> web.StreamResponse:
        """`POST /functions/v1/initiate-bridged-call`: validate, place, answer (or misbehave)."""
        self._requests += 1
        self._log_request("initiate-bridged-call")
        raw = await request.read()
        body = _json_object(raw)
        to = _first(body, "to", "phone_number")
        script = self.config.scripts.get(to) if isinstance(to, str) else None
        asked = self._asked.get(to, 0) if isinstance(to, str) else 0
        if isinstance(to, str):
            self._asked[to] = asked + 1
        forced = script.fault_on(asked) if script is not None else None

        if script is not None and script.answer is not None:
            answer = script.answer
            return self._reject(
                web.Response(status=answer.status, text=answer.body, headers=dict(answer.headers)),
                "scripted answer",
            )
        try:
            # Every draw for this request happens here, before any await, so concurrent
            # requests cannot interleave their draws and seeded runs stay reproducible.
            self._check_auth(request)
            if self._hit("rate_limit", forced, self._rng):
                retry = str(self.config.faults.retry_after)
                raise _Rejection(
                    _error_response(
                        429, "RATE_LIMITED", "Too many requests", {"Retry-After": retry}
                    ),
                    "rate_limit fault",
                )
            if self._hit("server_error", forced, self._rng):
                raise _Rejection(
                    _error_response(503, "SERVICE_UNAVAILABLE", "Service temporarily unavailable"),
                    "server_error fault",
                )
            fields = self._validate(body)
            if self._hit("carrier_error", forced, self._rng):
                message = self._rng.choice(CARRIER_ERRORS)
                if message != CARRIER_ERRORS[0]:
                    # The record was written, then marked failed: nobody was rung.
                    failed = self._new_call(fields)
                    failed.set_status("failed")
                    failed.rang = False
                    failed.outcome = Outcome.FAILED
                    failed.duration = 0
                    failed.ended_at = iso_now()
                raise _Rejection(
                    web.json_response({"error": message, "details": "carrier"}, status=500),
                    "carrier_error fault",
                )
            hang = self._hit("hang_placement", forced, self._rng)
        except _Rejection as rejection:
            return self._reject(rejection.response, rejection.reason)
        if hang:
            # No answer, and no call: the request hangs until the client gives up.
            log.info("simulator.placement_hung", to=to)
            await asyncio.sleep(self.config.faults.hang_seconds)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=504)

        call = self._new_call(fields)
        early = self._hit("early_webhook", forced, self._rng)
        slow = self._hit("slow", forced, self._rng)
        drop = self._hit("drop_answer", forced, self._rng)

        # The call's own generator: its lifecycle draws never touch the shared one.
        call_rng = random.Random(call.plan.rng_seed)
        acquired = self._slots.try_acquire()
        initiated_sent = False
        if acquired and early and self.config.dialect is Dialect.DOCUMENTED:
            # The documented webhook beats the answer to the POST: the receiver must cope with
            # hearing about a call it does not know yet.
            call.set_status("initiated")
            await self._deliver(call, call.documented_webhook(), call_rng)
            initiated_sent = True
        self._spawn(call, call_rng, acquired=acquired, initiated_sent=initiated_sent)

        if slow:
            await asyncio.sleep(self.config.faults.slow_seconds)
        if drop:
            # Close without a byte of answer: the call is placed but the client cannot know.
            log.info("simulator.answer_dropped", call_id=call.id)
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=200)
        return web.json_response(self._success_body(call, acquired))

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expected = self.token.encode()
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected):
            return
        deployed = self.config.dialect is Dialect.DEPLOYED
        code = "unauthorized" if deployed else "UNAUTHORIZED"
        raise _Rejection(
            _error_response(401, code, "Invalid or expired access token"), "unauthorized"
        )

    def _validate(self, body: dict[str, Any] | None) -> dict[str, Any]:
        """Check a place-call body in the documented order and return its fields."""
        deployed = self.config.dialect is Dialect.DEPLOYED
        if body is None:
            if deployed:
                raise _Rejection(_plain_error(400, "Invalid JSON body"), "body not an object")
            raise _Rejection(
                _error_response(400, "INVALID_REQUEST", "Request body must be a JSON object"),
                "body not an object",
            )
        to = _first(body, "to", "phone_number")
        from_ = _first(body, "from", "caller_id")
        if deployed and (not to or not from_):
            raise _Rejection(
                _plain_error(400, "phone_number and caller_id are required"), "numbers missing"
            )
        if not is_valid_e164(to):
            if deployed:
                raise _Rejection(
                    _plain_error(400, "Invalid phone number format. Use E.164 (+14155551234)"),
                    "invalid to",
                )
            raise _Rejection(
                _error_response(
                    400,
                    "INVALID_PHONE_NUMBER",
                    "The 'to' field must be a valid E.164 phone number",
                ),
                "invalid to",
            )
        if from_ not in self.config.numbers:
            raise _Rejection(
                _error_response(
                    422 if deployed else 403,
                    "NUMBER_NOT_OWNED",
                    "The 'from' number is not provisioned in your account",
                ),
                "number not owned",
            )
        agent_id = body.get("agent_id")
        if agent_id is not None and agent_id not in self.config.agents:
            if deployed:
                response = _error_response(
                    422, "no_agent_assigned", "No agent is assigned to handle this call"
                )
            else:
                response = _error_response(
                    404, "AGENT_NOT_FOUND", "Agent with specified ID not found"
                )
            raise _Rejection(response, "agent not found")
        metadata = body.get("metadata")
        if metadata is None:
            metadata = {}
        if not _is_flat_object(metadata):
            message = "metadata must be a flat JSON object"
            response = (
                _plain_error(400, message)
                if deployed
                else _error_response(400, "INVALID_REQUEST", message)
            )
            raise _Rejection(response, "bad metadata")
        if self.balance <= 0:
            if deployed:
                response = _error_response(402, "insufficient_credits", "Insufficient credits")
            else:
                response = _error_response(
                    402, "INSUFFICIENT_BALANCE", "Insufficient account balance to place call"
                )
            raise _Rejection(response, "insufficient balance")
        webhook_url = body.get("webhook_url")
        dynamic = body.get("dynamic_variables")
        return {
            "to": to,
            "from_": from_,
            "agent_id": agent_id,
            "metadata": metadata,
            "purpose": _str_or_none(body.get("purpose")),
            "goal": _str_or_none(body.get("goal")),
            "template_id": _str_or_none(body.get("template_id")),
            "dynamic_variables": dynamic if isinstance(dynamic, dict) else None,
            # The deployed code ignores a per-call webhook_url: webhooks are per API key.
            "webhook_url": None if deployed else _str_or_none(webhook_url),
        }

    def _new_call(self, fields: dict[str, Any]) -> CallRecord:
        dial = self._dials.get(fields["to"], 0)
        self._dials[fields["to"]] = dial + 1
        plan = draw_plan(self.config, self._rng, fields["to"], dial)
        call = CallRecord(
            id=CallRecord.new_id(),
            dialect=self.config.dialect,
            outcome=plan.outcome,
            plan=plan,
            dial=dial,
            **fields,
        )
        if self.config.dialect is Dialect.DEPLOYED:
            call.call_sid = CallRecord.new_sid()
            call.agent_call_sid = CallRecord.new_sid()
        self.calls.append(call)
        log.info(
            "simulator.call_placed",
            call_id=call.id,
            to=call.to,
            from_number=call.from_,
            outcome=call.outcome.value,
        )
        return call

    def _success_body(self, call: CallRecord, acquired: bool) -> dict[str, Any]:
        if self.config.dialect is Dialect.DEPLOYED:
            return {
                "success": True,
                "call_sid": call.call_sid,
                "agent_call_sid": call.agent_call_sid,
                "call_record_id": call.id,
                "status": "queued",
                "message": "Call initiated successfully",
            }
        return {
            "success": True,
            "call_id": call.id,
            "status": "initiated" if acquired else "queued",
            "from_number": call.from_,
            "to_number": call.to,
            "agent_id": call.agent_id or (self.config.agents[0] if self.config.agents else None),
            "created_at": call.placed_at,
        }

    def _reject(self, response: web.Response, reason: str) -> web.Response:
        self._rejected += 1
        log.info("simulator.request_rejected", status=response.status, reason=reason)
        return response

    def _hit(self, fault: str, forced: str | None, rng: random.Random) -> bool:
        """Draw whether `fault` strikes now; a script naming it forces it."""
        probability = 1.0 if forced == fault else float(getattr(self.config.faults, fault))
        # No draw when the fault is off, so enabling no faults leaves the outcome stream alone.
        return probability > 0 and rng.random() < probability

    # -- call lifecycles -------------------------------------------------------------------

    def _spawn(
        self, call: CallRecord, rng: random.Random, *, acquired: bool, initiated_sent: bool
    ) -> None:
        self._hangups[call.id] = asyncio.Event()
        task = asyncio.create_task(
            self._lifecycle(call, rng, acquired=acquired, initiated_sent=initiated_sent),
            name=f"simulated-call-{call.id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lifecycle(
        self, call: CallRecord, rng: random.Random, *, acquired: bool, initiated_sent: bool
    ) -> None:
        """Walk one call through its statuses, sending webhooks, then free its slot. A hang-up
        (terminate-call) ends it where it is: canceled before an answer, completed after."""
        plan = call.plan
        script = self.config.scripts.get(call.to)
        forced = script.fault_on(call.dial) if script is not None else None
        hangup = self._hangups[call.id]
        holding = acquired
        started = asyncio.get_running_loop().time()
        try:
            if not holding:
                await self._slots.acquire()
                holding = True
            shuffle = self._hit("out_of_order", forced, rng)
            stuck = self._hit("stuck", forced, rng)
            buffer: list[dict[str, Any]] | None = [] if shuffle else None
            call.agent_leg_live = self.config.dialect is Dialect.DEPLOYED
            outcome = plan.outcome
            if not initiated_sent:
                await self._advance(call, "initiated", rng, buffer)
            hung = await self._wait(hangup, plan.dial_delay)
            if not hung:
                await self._advance(call, "ringing", rng, buffer)
                hung = await self._wait(hangup, plan.ring)
            if hung:
                outcome = Outcome.CANCELED
            elif outcome is Outcome.COMPLETED or stuck:
                outcome = Outcome.COMPLETED
                started = asyncio.get_running_loop().time()
                await self._advance(call, "in-progress", rng, buffer)
                await self._wait(hangup, None if stuck else plan.talk)
            call.outcome = outcome
            talked = (asyncio.get_running_loop().time() - started) / (self.config.time_scale or 1)
            call.duration = round(plan.talk if not hangup.is_set() else talked)
            if outcome is not Outcome.COMPLETED:
                call.duration = 0
            call.ended_at = iso_now()
            self.balance -= call.duration / 60 * self.config.price_per_minute
            # The slot frees at the terminal state, before its webhook goes out.
            self._slots.release()
            holding = False
            if call.answered:
                call.agent_leg_live = False  # the agent's leg ends with an answered call
            await self._advance(call, outcome.value, rng, buffer)
            if buffer:
                shuffled = list(buffer)
                rng.shuffle(shuffled)
                if shuffled == buffer:
                    shuffled.reverse()
                for payload in shuffled:
                    await self._deliver(call, payload, rng)
            if call.agent_leg_live:
                tail = asyncio.create_task(self._conference(call, rng), name=f"tail-{call.id}")
                self._tails.add(tail)
                tail.add_done_callback(self._tails.discard)
        finally:
            if holding:
                self._slots.release()

    async def _conference(self, call: CallRecord, rng: random.Random) -> None:
        """Deployed: the agent's leg of an unanswered call stays up until the conference limit
        (unless it is hung up by its own id); then the record is overwritten to ``completed``
        and a misleading call.completed goes out."""
        limit = self.config.conference_limit
        if not limit:
            return
        if await self._wait(self._hangups[call.id], limit, agent=call):
            return
        call.agent_leg_live = False
        call.overwritten = True
        call.set_status("completed")
        call.duration = round(limit)
        default_agent = self.config.agents[0] if self.config.agents else None
        await self._deliver(call, call.deployed_webhook(default_agent), rng)

    async def _wait(
        self, hangup: asyncio.Event, seconds: float | None, *, agent: CallRecord | None = None
    ) -> bool:
        """Sleep ``seconds`` (scaled; None: for ever) unless hung up first; True if hung up."""
        if agent is not None:
            hangup = self._hangups.setdefault(f"agent:{agent.id}", asyncio.Event())
        if hangup.is_set():
            return True
        timeout = None if seconds is None else seconds * self.config.time_scale
        try:
            await asyncio.wait_for(hangup.wait(), timeout=timeout)
        except TimeoutError:
            return False
        return True

    async def _advance(
        self,
        call: CallRecord,
        status: str,
        rng: random.Random,
        buffer: list[dict[str, Any]] | None,
    ) -> None:
        call.set_status(status)
        if self.config.dialect is Dialect.DEPLOYED:
            # The deployed provider reports only answered calls, once, after post-processing.
            if status == Outcome.COMPLETED and call.answered:
                default_agent = self.config.agents[0] if self.config.agents else None
                payload = call.deployed_webhook(default_agent)
                other = self._misattributed(call, rng)
                if other is not None:
                    payload["data"]["call_record_id"] = other.id
                await self._deliver(call, payload, rng)
            return
        payload = call.documented_webhook()
        if buffer is not None:
            buffer.append(payload)
        else:
            await self._deliver(call, payload, rng)

    def _misattributed(self, call: CallRecord, rng: random.Random) -> CallRecord | None:
        """With the ``misattribute`` fault: the record the deployed agent would wrongly take as
        its own, the newest other outbound record of the last two minutes (scaled), if any."""
        script = self.config.scripts.get(call.to)
        if not self._hit("misattribute", script.fault_on(call.dial) if script else None, rng):
            return None
        window = MISATTRIBUTION_WINDOW * max(self.config.time_scale, 0.01)
        now = datetime.now(UTC)
        recent = [
            c for c in self.calls
            if c is not call and (now - c.created).total_seconds() <= window
        ]  # fmt: skip
        return max(recent, key=lambda c: c.created) if recent else None

    async def _deliver(self, call: CallRecord, payload: dict[str, Any], rng: random.Random) -> None:
        """Send one webhook (maybe twice, maybe not at all) and record what happened."""
        url = call.webhook_url or self.config.webhook_url
        if url is None:
            return
        script = self.config.scripts.get(call.to)
        forced = script.fault_on(call.dial) if script is not None else None
        status = str(payload.get("status") or payload.get("data", {}).get("status"))
        if self._hit("lose_webhooks", forced, rng):
            call.webhooks.append(
                WebhookRecord(status=status, url=url, payload=payload, sent_at=iso_now(), lost=True)
            )
            log.info("simulator.webhook_lost", call_id=call.id, status=status)
            return
        copies = 2 if self._hit("duplicate_webhooks", forced, rng) else 1
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.config.webhook_secret:
            headers[SIGNATURE_HEADER] = sign(self.config.webhook_secret, body)
        for _ in range(copies):
            record = WebhookRecord(status=status, url=url, payload=payload, sent_at=iso_now())
            call.webhooks.append(record)
            await self._post(record, body, headers)
            log.info(
                "simulator.webhook",
                call_id=call.id,
                status=status,
                url=url,
                http_status=record.http_status,
                error=record.error,
            )

    async def _post(self, record: WebhookRecord, body: bytes, headers: Mapping[str, str]) -> None:
        # A receiver that is down or broken is the receiver's problem: record it, never raise.
        if self._session is None or record.url is None:
            record.error = "simulator not started"
            return
        try:
            async with self._session.post(record.url, data=body, headers=headers) as response:
                await response.read()
                record.http_status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds * self.config.time_scale)

    # -- requests --------------------------------------------------------------------------

    def _log_request(self, endpoint: str, call_id: object = None) -> None:
        if len(self.requests) < 1_000_000:
            named = call_id if isinstance(call_id, str) else None
            self.requests.append((endpoint, time.time(), named))

    # -- inspection routes -----------------------------------------------------------------

    async def handle_calls(self, request: web.Request) -> web.Response:
        """`GET /_simulator/calls`: every placed call with its webhooks."""
        return web.json_response([call.to_json() for call in self.calls])

    async def handle_requests(self, request: web.Request) -> web.Response:
        """`GET /_simulator/requests`: every provider API request, `{endpoint, at, call_id}`."""
        return web.json_response(
            [{"endpoint": e, "at": at, "call_id": c} for e, at, c in self.requests]
        )

    async def handle_stats(self, request: web.Request) -> web.Response:
        """`GET /_simulator/stats`: the counters from `stats()`."""
        return web.json_response(self.stats())

    async def handle_account(self, request: web.Request) -> web.Response:
        """`POST /_simulator/account` `{"balance": n, "token": "..."}`: change the balance or
        the accepted API token at runtime (either or both)."""
        body = _json_object(await request.read())
        balance = body.get("balance") if body is not None else None
        token = body.get("token") if body is not None else None
        bad_balance = balance is not None and (
            isinstance(balance, bool) or not isinstance(balance, int | float)
        )
        if body is None or bad_balance or (token is not None and not isinstance(token, str)):
            return web.json_response(
                {"error": 'expected {"balance": number} and/or {"token": string}'}, status=400
            )
        if balance is not None:
            self.balance = float(balance)
        if token is not None:
            self.token = token
        return web.json_response({"balance": self.balance})


def build_app(sim: Simulator) -> web.Application:
    """The aiohttp application serving `sim`: the provider API and the inspection routes."""
    app = web.Application(middlewares=[limits.middleware(sim.budget)] if sim.budget else [])
    app.router.add_post(PLACE_CALL_PATH, sim.handle_place_call)
    records = Records(sim)
    app.router.add_post(GET_CALL_PATH, records.get_call)
    app.router.add_post(LIST_CALLS_PATH, records.list_calls)
    app.router.add_post(TERMINATE_CALL_PATH, records.terminate_call)
    app.router.add_get("/_simulator/calls", sim.handle_calls)
    app.router.add_get("/_simulator/requests", sim.handle_requests)
    app.router.add_get("/_simulator/stats", sim.handle_stats)
    app.router.add_post("/_simulator/account", sim.handle_account)
    return app


# -- small helpers ---------------------------------------------------------------------------


def _first(body: dict[str, Any] | None, *keys: str) -> Any:
    """The first present, non-null value among `keys`: both spellings of a field are accepted."""
    if body is None:
        return None
    for key in keys:
        value = body.get(key)
        if value is not None:
            return value
    return None


def _is_flat_object(value: object) -> bool:
    if not isinstance(value, dict):
        return False
    return all(
        isinstance(k, str) and (v is None or isinstance(v, str | int | float | bool))
        for k, v in value.items()
    )


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
