"""The control API: queue calls and look at them. Every route but the health checks needs
``Authorization: Bearer <api.token>``."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import config, exceptions, phone
from orchestrator.metrics import CONTENT_TYPE_LATEST, Metrics
from orchestrator.model import RESERVED_PREFIX, NewCall, finite, iso, load_json, unstorable
from orchestrator.store import Store

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 1 << 20


class CallBody(BaseModel):
    """``POST /v1/calls``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: str
    from_: str | None = Field(default=None, alias="from")
    agent_id: str | None = None
    metadata: dict[str, Any] | None = None
    purpose: str | None = None
    goal: str | None = None
    template_id: str | None = None
    campaign: str | None = Field(default=None, max_length=200)


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    error = {"code": code, "message": message, **extra}
    return web.json_response({"error": error}, status=status)


def _utf8(text: str) -> bool:
    """False for a header value that was not UTF-8 (aiohttp keeps such bytes as surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _invalid(exc: ValidationError, limit: int = 10) -> web.Response:
    """400 INVALID_REQUEST naming each field the schema refused (``body`` for the whole)."""
    fields: list[str] = []
    problems: list[str] = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(part) for part in error["loc"])[:100] or "body"
        fields.append(where)
        problems.append(f"{where}: {error['msg']}")
    return _error(400, "INVALID_REQUEST", "; ".join(problems), fields=fields)


def call_json(
    call: dict[str, Any],
    attempts: list[dict[str, Any]] | None = None,
    events: list[Any] | None = None,
) -> dict[str, Any]:
    """The public JSON form of a call row (with attempts and events when given)."""
    out: dict[str, Any] = {
        "id": call["id"],
        "status": call["status"],
        "reason": call["reason"],
        "to": call["to_number"],
        "from": call["from_number"],
        "agent_id": call["agent_id"],
        "campaign": call["campaign"],
        "metadata": json.loads(call["metadata"]),
        "purpose": call["purpose"],
        "goal": call["goal"],
        "template_id": call["template_id"],
        "created_at": iso(call["created_at"]),
        "updated_at": iso(call["updated_at"]),
        "ended_at": iso(call["ended_at"]),
    }
    if attempts is not None:
        out["attempts"] = [
            {
                "number": a["number"],
                "status": a["status"],
                "provider_call_id": a["provider_call_id"],
                "provider_status": a["provider_status"],
                "ambiguous": bool(a["ambiguous"]),
                "error": (
                    {"code": a["error_code"], "message": a["error_message"]}
                    if a["error_code"]
                    else None
                ),
                "duration": finite(a["duration"]),
                "created_at": iso(a["created_at"]),
                "placed_at": iso(a["placed_at"]),
                "ended_at": iso(a["ended_at"]),
                "next_attempt_at": iso(a["not_before"]) if a["status"] == "queued" else None,
                "agent_call_sid": a["agent_call_sid"],
                "settled_by": a["settled_by"],
                "last_lookup": (
                    {"at": iso(a["checked_at"]), "result": a["check_result"], "count": a["checks"]}
                    if a["checked_at"] is not None
                    else None
                ),
                "next_lookup_at": iso(a["check_at"]) if a["live"] and a["check_at"] else None,
            }
            for a in attempts
        ]
        latest = attempts[-1] if attempts else None
        out["next_attempt_at"] = (
            iso(latest["not_before"]) if latest and latest["status"] == "queued" else None
        )
    if events is not None:
        out["events"] = [e.to_json() for e in events]
    return out


class ControlApi:
    """The aiohttp app behind ``api.listen``."""

    def __init__(
        self,
        store: Store,
        *,
        token: str | None,
        defaults: config.Defaults,
        on_queued: Callable[[], None],
        ready: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]],
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self._token = token.encode() if token else None
        self.defaults = defaults
        self.on_queued = on_queued
        self.ready = ready
        self.metrics = metrics or Metrics()

    def app(self) -> web.Application:
        """The API application."""
        app = web.Application(middlewares=[self._auth], client_max_size=MAX_BODY)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_post("/v1/calls", self.create)
        app.router.add_get("/v1/calls", self.list)
        app.router.add_get("/v1/calls/{id}", self.get)
        app.router.add_get("/metrics", self.metrics_text)
        # Imported here: the routes module uses this module's helpers.
        from orchestrator.api_campaigns import CampaignRoutes

        CampaignRoutes(self).register(app)
        return app

    async def metrics_text(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus exposition (behind the API token like the rest)."""
        try:
            body = await self.metrics.render(self.store.gauges)
        except exceptions.StoreError as exc:
            return _error(503, "STORE_UNAVAILABLE", str(exc))
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/healthz", "/readyz"):
            return await handler(request)
        if self._token is None:
            return _error(403, "API_DISABLED", "set api.token to use the control API")
        # Undecodable header bytes arrive as surrogates: compare them as the bytes they were.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, b"Bearer " + self._token):
            return _error(401, "UNAUTHORIZED", "missing or wrong bearer token")
        try:
            return await handler(request)
        except exceptions.StoreError as exc:
            log.error("api.store_failed", error=str(exc))
            return _error(503, "STORE_UNAVAILABLE", "the store is unavailable")

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive."""
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        """Store and provider usable."""
        ok, detail = await self.ready()
        return web.json_response({"ok": ok, **detail}, status=200 if ok else 503)

    async def create(self, request: web.Request) -> web.Response:
        """Queue a call; an ``Idempotency-Key`` makes a repeat return the first call."""
        # Parsing and validation apart: pydantic's ValidationError is a ValueError too.
        try:
            payload = load_json(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "TOO_LARGE", f"the body exceeds {MAX_BODY} bytes")
        except ValueError as exc:
            return _error(400, "MALFORMED_JSON", f"the body is not JSON ({exc})"[:300])
        problem = unstorable(payload)
        if problem is not None:
            where, why = problem
            return _error(400, "INVALID_REQUEST", f"{where}: {why}", fields=[where])
        try:
            body = CallBody.model_validate(payload)
        except ValidationError as exc:
            return _invalid(exc)
        caller = body.from_ or self.defaults.from_
        if caller is None:
            return _error(
                400,
                "INVALID_REQUEST",
                "from: required (no defaults.from configured)",
                fields=["from"],
            )
        try:
            new = NewCall(
                to=phone.validate_number(body.to, field="to"),
                from_=phone.validate_number(caller, field="from"),
                agent_id=body.agent_id or self.defaults.agent_id,
                metadata=phone.validate_metadata(body.metadata, reserved_prefix=RESERVED_PREFIX),
                purpose=body.purpose or self.defaults.purpose,
                goal=body.goal or self.defaults.goal,
                template_id=body.template_id or self.defaults.template_id,
                campaign=body.campaign,
            )
        except exceptions.InputError as exc:
            return _error(400, exc.code, exc.message)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not (0 < len(key) <= 200 and _utf8(key)):
            return _error(
                400, "INVALID_REQUEST", "Idempotency-Key must be 1 to 200 characters of UTF-8"
            )
        try:
            call, created = await self.store.create_call(new, idempotency_key=key)
        except exceptions.IdempotencyConflict as exc:
            return _error(409, exc.code, exc.message)
        if created:
            self.on_queued()
            log.info("api.call_queued", call_id=call["id"], to=new.to)
        return web.json_response(
            {"id": call["id"], "status": call["status"], "created": created}, status=202
        )

    async def get(self, request: web.Request) -> web.Response:
        """One call with its attempts and events."""
        found = await self.store.get_call(request.match_info["id"])
        if found is None:
            return _error(404, "NOT_FOUND", "no such call")
        call, attempts, events = found
        return web.json_response(call_json(call, attempts, events))

    async def list(self, request: web.Request) -> web.Response:
        """Calls in creation order; ``next`` is the cursor for ``after``."""
        query = request.query
        try:
            limit = int(query.get("limit", "50"))
        except ValueError:
            return _error(400, "INVALID_REQUEST", "limit must be a number")
        if not 1 <= limit <= 1000:
            return _error(400, "INVALID_REQUEST", "limit must be between 1 and 1000")
        rows = await self.store.list_calls(
            status=query.get("status"),
            campaign=query.get("campaign"),
            after=query.get("after"),
            limit=limit,
        )
        return web.json_response(
            {
                "calls": [call_json(r) for r in rows],
                "next": rows[-1]["id"] if len(rows) == limit else None,
            }
        )
