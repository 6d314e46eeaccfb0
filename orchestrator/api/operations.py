"""The control API's operations routes: the do-not-call list, the outbox's deliveries and
dead-letter replay, and the fleet's status with this daemon's counters and rates."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import Counter
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from orchestrator import exceptions, phone
from orchestrator.api.campaigns import campaign_json
from orchestrator.api.common import error, invalid, parse_limit, read_json
from orchestrator.model import iso, unstorable
from orchestrator.store.rows import DeliveryRecord

if TYPE_CHECKING:
    from orchestrator.api.server import ControlApi

log = structlog.get_logger(__name__)

#: Dead letters one ``all_dead`` replay puts back at most.
MAX_REPLAY = 10_000
#: Rates are taken over at least this many seconds when the samples allow.
RATE_WINDOW = 60.0
DELIVERY_STATES = ("pending", "done", "dead")


class DoNotCallBody(BaseModel):
    """``POST /v1/do-not-call``."""

    model_config = ConfigDict(extra="forbid")

    number: str
    reason: str | None = Field(default=None, max_length=500)


class ReplayBody(BaseModel):
    """``POST /v1/deliveries/replay``: these ids, or every dead letter (of one route)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    all_dead: bool = False
    route: str | None = Field(
        default=None, max_length=200, validation_alias=AliasChoices("route", "handler")
    )


def delivery_json(row: DeliveryRecord) -> dict[str, Any]:
    """The public JSON form of an outbox row; ``route`` is the rule it was routed by."""
    return {
        "id": row.id,
        "route": row.handler,
        "state": row.state,
        "tries": row.tries,
        "event_id": row.event_id,
        "event_seq": row.event_seq,
        "call_id": row.call_id,
        "last_error": row.last_error,
        "next_try_at": iso(row.not_before) if row.state == "pending" else None,
        "updated_at": iso(row.updated_at),
    }


def _counter_totals(counter: Counter) -> dict[str, float]:
    """A labelled counter's values by label values (joined with ``/``)."""
    out: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out["/".join(sample.labels.values())] = sample.value
    return out


class OperationsRoutes:
    """Do-not-call, deliveries and status; ``api`` gives the store, metrics and readiness."""

    def __init__(self, api: ControlApi) -> None:
        self.api = api
        self.store = api.store
        # (monotonic time, counter totals) at start and at each status request, for rates.
        self._samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=1000)
        self._samples.append((time.monotonic(), self._totals()["flat"]))

    def register(self, app: web.Application) -> None:
        """Add the routes to ``app``."""
        router = app.router
        router.add_get("/v1/do-not-call", self.dnc_list)
        router.add_post("/v1/do-not-call", self.dnc_add)
        router.add_delete("/v1/do-not-call/{number}", self.dnc_remove)
        router.add_get("/v1/deliveries", self.deliveries)
        router.add_post("/v1/deliveries/replay", self.replay)
        router.add_get("/v1/status", self.status)

    async def dnc_add(self, request: web.Request) -> web.Response:
        """Never call a number again (it is refused with DO_NOT_CALL at its next claim)."""
        payload = await read_json(request)
        if isinstance(payload, web.Response):
            return payload
        problem = unstorable(payload)
        if problem is not None:
            return error(400, "INVALID_REQUEST", f"{problem[0]}: {problem[1]}", fields=[problem[0]])
        try:
            body = DoNotCallBody.model_validate(payload)
            number = phone.validate_number(body.number, field="number")
        except ValidationError as exc:
            return invalid(exc)
        except exceptions.InputError as exc:
            return error(400, exc.code, exc.message, fields=["number"])
        added = await self.store.add_do_not_call(number, reason=body.reason)
        log.info("api.do_not_call_added", number=number, added=added)
        return web.json_response({"number": number, "added": added}, status=201 if added else 200)

    async def dnc_list(self, request: web.Request) -> web.Response:
        """The numbers on the API's list (not a do-not-call file's), by number; ``next`` is
        the cursor for ``after``."""
        limit = parse_limit(request.query, 100)
        if isinstance(limit, web.Response):
            return limit
        rows = await self.store.do_not_call(after=request.query.get("after", ""), limit=limit)
        return web.json_response(
            {
                "numbers": [
                    {"number": r["number"], "reason": r["reason"], "added_at": iso(r["added_at"])}
                    for r in rows
                ],
                "next": rows[-1]["number"] if len(rows) == limit else None,
            }
        )

    async def dnc_remove(self, request: web.Request) -> web.Response:
        """Take a number off the API's list (a do-not-call file is the file's business)."""
        number = request.match_info["number"]
        if not await self.store.remove_do_not_call(number):
            return error(404, "NOT_FOUND", "the number is not on the do-not-call list")
        log.info("api.do_not_call_removed", number=number)
        return web.json_response({"number": number, "removed": True})

    async def deliveries(self, request: web.Request) -> web.Response:
        """Outbox rows by state (``dead``: the dead letters) and route (the rule's name;
        ``handler`` is taken as a synonym)."""
        query = request.query
        state = query.get("state")
        if state is not None and state not in DELIVERY_STATES:
            return error(
                400, "INVALID_REQUEST", f"state must be one of {', '.join(DELIVERY_STATES)}",
                fields=["state"],
            )  # fmt: skip
        limit = parse_limit(query, 100)
        if isinstance(limit, web.Response):
            return limit
        rows = await self.store.list_deliveries(
            state=state, handler=query.get("route") or query.get("handler"), limit=limit
        )
        return web.json_response({"deliveries": [delivery_json(r) for r in rows]})

    async def replay(self, request: web.Request) -> web.Response:
        """Put dead letters back in their handler's queue with a fresh count of tries."""
        payload = await read_json(request)
        if isinstance(payload, web.Response):
            return payload
        try:
            body = ReplayBody.model_validate(payload)
        except ValidationError as exc:
            return invalid(exc)
        if (body.ids is None) == (not body.all_dead):
            return error(400, "INVALID_REQUEST", "give either ids or all_dead: true")
        if body.ids is not None:
            if body.route is not None:
                return error(400, "INVALID_REQUEST", "route goes with all_dead", fields=["route"])
            rows = await self.store.replay_deliveries(body.ids)
            done = {r.id for r in rows}
            skipped = [i for i in body.ids if i not in done]
            log.info("api.deliveries_replayed", replayed=len(rows), skipped=len(skipped))
            return web.json_response(
                {
                    "replayed": len(rows),
                    "ids": [r.id for r in rows],
                    "skipped": skipped,
                    "more": False,
                }
            )
        replayed: list[str] = []
        more = False
        while True:
            room = MAX_REPLAY - len(replayed)
            if room <= 0:
                more = True
                break
            dead = await self.store.list_deliveries(
                state="dead", handler=body.route, limit=min(500, room)
            )
            if not dead:
                break
            rows = await self.store.replay_deliveries([r.id for r in dead])
            if not rows:
                break
            replayed.extend(r.id for r in rows)
        log.info("api.deliveries_replayed", replayed=len(replayed), route=body.route)
        return web.json_response(
            {"replayed": len(replayed), "ids": replayed[:1000], "skipped": [], "more": more}
        )

    async def status(self, request: web.Request) -> web.Response:
        """Live calls, queue depth, the fleet's dialing state, the provider, the campaigns and
        this daemon's counters and rates."""
        gauges = await self.store.gauges()
        holds = await self.store.queue_holds()
        state = await self.store.dialing_state()
        ready, detail = await self.api.ready()
        every = request.query.get("campaigns") == "all"
        campaigns = await self.store.campaigns(limit=20, open_only=not every)
        totals = self._totals()
        return web.json_response(
            {
                "live": gauges["live"],
                "queued": gauges["queued"],
                # What holds the queued calls: they add up to "queued".
                "queue": {k: v for k, v in holds.items() if k != "dead_letters"},
                "dead_letters": holds["dead_letters"],
                # What is left of the provider key's request budget, by kind and window.
                "request_budget": gauges.get("budget", {}),
                "dialing": {
                    "paused": bool(state["reason"]),
                    "reason": state["reason"],
                    "until": iso(state["paused_until"]) if state["reason"] else None,
                    "factor": state["factor"],
                },
                "ready": ready,
                "provider": detail.get("provider"),
                "store": detail.get("store"),
                "campaigns": [
                    {
                        k: v
                        for k, v in campaign_json(c).items()
                        if k
                        in ("id", "name", "status", "reason", "rows", "dialed", "spent", "budget")
                    }
                    for c in campaigns
                ],
                "totals": {k: v for k, v in totals.items() if k != "flat"},
                "rates": self._rates(totals["flat"]),
            }
        )

    def _totals(self) -> dict[str, Any]:
        metrics = self.api.metrics
        placements = _counter_totals(metrics.placements)
        webhooks = _counter_totals(metrics.webhooks)
        events = _counter_totals(metrics.events)
        failures = _counter_totals(metrics.handler_failures)
        return {
            "placements": placements,
            "webhooks": webhooks,
            "events": events,
            "handler_failures": failures,
            "flat": {
                "placed": placements.get("placed", 0.0),
                "placement_errors": sum(v for k, v in placements.items() if k != "placed"),
                "webhooks": sum(webhooks.values()),
                "events": sum(events.values()),
                "dead_letters": sum(v for k, v in failures.items() if k.endswith("/dead")),
            },
        }

    def _rates(self, current: dict[str, float]) -> dict[str, Any]:
        """Per minute, since the newest sample at least RATE_WINDOW old (else the oldest)."""
        now = time.monotonic()
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        then, base = samples[0]
        span = max(now - then, 1e-3)
        samples.append((now, current))
        return {
            "window_seconds": round(span, 1),
            "per_minute": {
                k: round((v - base.get(k, 0.0)) * 60 / span, 2) for k, v in current.items()
            },
        }
