"""The control API's call routes: queue a call, show one, list them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import exceptions, phone
from orchestrator.api.common import error, invalid, parse_limit, read_json, utf8
from orchestrator.model import RESERVED_PREFIX, CallStatus, Event, NewCall, finite, iso, unstorable
from orchestrator.store.rows import Attempt, Call

if TYPE_CHECKING:
    from orchestrator.api.server import ControlApi

log = structlog.get_logger(__name__)


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


def call_json(
    call: Call,
    attempts: list[Attempt] | None = None,
    events: list[Event] | None = None,
) -> dict[str, Any]:
    """The public JSON form of a call (with attempts and events when given)."""
    out: dict[str, Any] = {
        "id": call.id,
        "status": call.status,
        "reason": call.reason,
        "to": call.to_number,
        "from": call.from_number,
        "agent_id": call.agent_id,
        "campaign": call.campaign,
        "metadata": call.metadata,
        "purpose": call.purpose,
        "goal": call.goal,
        "template_id": call.template_id,
        "created_at": iso(call.created_at),
        "updated_at": iso(call.updated_at),
        "ended_at": iso(call.ended_at),
    }
    if attempts is not None:
        out["attempts"] = [_attempt_json(a) for a in attempts]
        latest = attempts[-1] if attempts else None
        out["next_attempt_at"] = (
            iso(latest.not_before) if latest and latest.status is CallStatus.QUEUED else None
        )
    if events is not None:
        out["events"] = [e.to_json() for e in events]
    return out


def _attempt_json(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "status": a.status,
        "provider_call_id": a.provider_call_id,
        "provider_status": a.provider_status,
        "ambiguous": a.ambiguous,
        "error": {"code": a.error_code, "message": a.error_message} if a.error_code else None,
        "duration": finite(a.duration),
        "created_at": iso(a.created_at),
        "placed_at": iso(a.placed_at),
        "ended_at": iso(a.ended_at),
        "next_attempt_at": iso(a.not_before) if a.status is CallStatus.QUEUED else None,
        "agent_call_sid": a.agent_call_sid,
        "settled_by": a.settled_by,
        "placement_failures": a.failures,
        "last_lookup": (
            {"at": iso(a.checked_at), "result": a.check_result, "count": a.checks}
            if a.checked_at is not None
            else None
        ),
        "next_lookup_at": iso(a.check_at) if a.live and a.check_at else None,
    }


class CallRoutes:
    """``/v1/calls``; ``api`` gives the store, the defaults and the dialer's wake-up."""

    def __init__(self, api: ControlApi) -> None:
        self.api = api
        self.store = api.store

    def register(self, app: web.Application) -> None:
        """Add the routes to ``app``."""
        app.router.add_post("/v1/calls", self.create)
        app.router.add_get("/v1/calls", self.list)
        app.router.add_get("/v1/calls/{id}", self.get)

    async def create(self, request: web.Request) -> web.Response:
        """Queue a call; an ``Idempotency-Key`` makes a repeat return the first call."""
        # Parsing and validation apart: pydantic's ValidationError is a ValueError too.
        payload = await read_json(request)
        if isinstance(payload, web.Response):
            return payload
        problem = unstorable(payload)
        if problem is not None:
            where, why = problem
            return error(400, "INVALID_REQUEST", f"{where}: {why}", fields=[where])
        try:
            body = CallBody.model_validate(payload)
        except ValidationError as exc:
            return invalid(exc)
        caller = body.from_ or self.api.defaults.from_
        if caller is None:
            return error(
                400,
                "INVALID_REQUEST",
                "from: required (no defaults.from configured)",
                fields=["from"],
            )
        try:
            new = NewCall(
                to=phone.validate_number(body.to, field="to"),
                from_=phone.validate_number(caller, field="from"),
                agent_id=body.agent_id or self.api.defaults.agent_id,
                metadata=phone.validate_metadata(body.metadata, reserved_prefix=RESERVED_PREFIX),
                purpose=body.purpose or self.api.defaults.purpose,
                goal=body.goal or self.api.defaults.goal,
                template_id=body.template_id or self.api.defaults.template_id,
                campaign=body.campaign,
            )
        except exceptions.InputError as exc:
            return error(400, exc.code, exc.message)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not (0 < len(key) <= 200 and utf8(key)):
            return error(
                400, "INVALID_REQUEST", "Idempotency-Key must be 1 to 200 characters of UTF-8"
            )
        try:
            call, created = await self.store.create_call(new, idempotency_key=key)
        except exceptions.IdempotencyConflict as exc:
            return error(409, exc.code, exc.message)
        if created:
            self.api.on_queued()
            log.info("api.call_queued", call_id=call.id, to=new.to)
        return web.json_response(
            {"id": call.id, "status": call.status, "created": created}, status=202
        )

    async def get(self, request: web.Request) -> web.Response:
        """One call with its attempts and events."""
        found = await self.store.get_call(request.match_info["id"])
        if found is None:
            return error(404, "NOT_FOUND", "no such call")
        call, attempts, events = found
        return web.json_response(call_json(call, attempts, events))

    async def list(self, request: web.Request) -> web.Response:
        """Calls in creation order; ``next`` is the cursor for ``after``."""
        query = request.query
        most = parse_limit(query, 50)
        if isinstance(most, web.Response):
            return most
        rows = await self.store.list_calls(
            status=query.get("status"),
            campaign=query.get("campaign"),
            after=query.get("after"),
            limit=most,
        )
        return web.json_response(
            {
                "calls": [call_json(r) for r in rows],
                "next": rows[-1].id if len(rows) == most else None,
            }
        )
