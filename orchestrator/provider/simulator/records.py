"""The provider's records in the simulator: ``get-call``, ``list-calls`` and ``terminate-call``
with the deployed service's quirks (database status spellings, metadata keys starting with
``_`` dropped by get-call, no metadata in list-calls, newest first, at most 100 a page, a
hang-up by a leg's id)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from orchestrator.provider.simulator.answers import Rejection, error_response, json_object
from orchestrator.provider.simulator.model import CallRecord

if TYPE_CHECKING:
    from orchestrator.provider.simulator import Simulator

log = structlog.get_logger(__name__)


class Records:
    """The record routes of one :class:`~orchestrator.provider.simulator.Simulator`."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def _find(self, call_id: object) -> CallRecord | None:
        if not isinstance(call_id, str):
            return None
        return next((c for c in reversed(self.sim.calls) if c.id == call_id), None)

    async def _records_request(self, request: web.Request, endpoint: str) -> dict[str, Any]:
        """Count, authenticate and parse a records request (raises Rejection)."""
        body = json_object(await request.read())
        self.sim._log_request(endpoint, body.get("call_id") if body is not None else None)
        self.sim._check_auth(request)
        if body is None:
            raise Rejection(
                error_response(400, "invalid_request", "Request body must be a JSON object"),
                "body not an object",
            )
        if self.sim._hit("records_error", None, self.sim._rng):
            raise Rejection(
                error_response(500, "server_error", "Internal server error"), "records_error fault"
            )
        return body

    async def get_call(self, request: web.Request) -> web.Response:
        """`POST /functions/v1/get-call` `{"call_id"}`: the record, metadata without `_` keys."""
        try:
            body = await self._records_request(request, "get-call")
        except Rejection as rejection:
            return self.sim._reject(rejection.response, rejection.reason)
        call_id = body.get("call_id")
        if not call_id:
            return error_response(400, "missing_param", "call_id is required")
        call = self._find(call_id)
        if call is None:  # also for an id that is not a UUID
            return error_response(404, "not_found", "Call not found")
        return web.json_response(call.record(with_metadata=True))

    async def list_calls(self, request: web.Request) -> web.Response:
        """`POST /functions/v1/list-calls`: records newest first, at most 100 a page, filtered
        by direction, status, agent, time window and a number at either end; no metadata."""
        try:
            body = await self._records_request(request, "list-calls")
        except Rejection as rejection:
            return self.sim._reject(rejection.response, rejection.reason)
        limit = body.get("limit", 50)
        offset = body.get("offset", 0)
        if not isinstance(limit, int) or not isinstance(offset, int) or limit < 1 or offset < 0:
            return error_response(400, "invalid_param", "limit and offset must be integers")
        since, until = _when(body.get("from_date")), _when(body.get("to_date"))
        number = body.get("phone_number")
        wanted = {
            "direction": body.get("direction"),
            "status": body.get("status"),
            "agent_id": body.get("agent_id"),
        }

        def matches(call: CallRecord) -> bool:
            record = call.record(with_metadata=False)
            return (
                all(v is None or record[k] == v for k, v in wanted.items())
                and (since is None or call.created >= since)
                and (until is None or call.created <= until)
                and (number is None or number in (call.to, call.from_))
            )

        found = sorted(
            (c for c in self.sim.calls if matches(c)), key=lambda c: c.created, reverse=True
        )
        limit = min(limit, 100)
        page = found[offset : offset + limit]
        return web.json_response(
            {
                "calls": [c.record(with_metadata=False) for c in page],
                "total": len(found),
                "has_more": offset + limit < len(found),
            }
        )

    async def terminate_call(self, request: web.Request) -> web.Response:
        """`POST /functions/v1/terminate-call` `{"call_id"}`: hang up the call whose record id
        or phone leg's id it is, or the agent's leg by ``agent_call_sid``."""
        try:
            body = await self._records_request(request, "terminate-call")
        except Rejection as rejection:
            return self.sim._reject(rejection.response, rejection.reason)
        call_id = body.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            return web.json_response({"success": False, "error": "call_id is required"}, status=400)
        for call in reversed(self.sim.calls):
            if call_id == call.agent_call_sid and call.agent_leg_live:
                self.sim._hangups.setdefault(f"agent:{call.id}", asyncio.Event()).set()
                call.agent_leg_live = False
                if not call.terminal:
                    self.sim._hangups[call.id].set()
                call.hung_up = True
                break
            if call_id in (call.id, call.call_sid) and not call.terminal and call.rang:
                self.sim._hangups[call.id].set()
                call.hung_up = True
                break
        else:
            return web.json_response(
                {"success": False, "error": "call_not_found", "message": "No active call"},
                status=404,
            )
        log.info("simulator.call_terminated", call_id=call.id, by=call_id)
        return web.json_response(
            {"success": True, "call_id": call_id, "platform": "simulator", "status": "terminated"}
        )


def _when(value: object) -> datetime | None:
    """A list-calls date bound (ISO 8601; no zone means UTC), or None."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
