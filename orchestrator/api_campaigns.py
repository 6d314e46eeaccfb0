"""The control API's campaign, do-not-call, dead-letter and status routes (registered by
:meth:`orchestrator.api.ControlApi.app`, behind the same bearer token).

An import body (CSV or JSON lines, :mod:`orchestrator.imports`) is read as a stream, a chunk of
rows per transaction, so its size is not limited by the API's JSON body limit and its memory
does not grow with its length.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import http_exceptions, web
from prometheus_client import Counter
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from orchestrator import exceptions, imports, phone
from orchestrator.api import MAX_BODY, _error, _invalid
from orchestrator.campaigns import CampaignSettings, CampaignStatus, RowError
from orchestrator.connectors.protocol import Row
from orchestrator.model import finite, iso, load_json, unstorable

if TYPE_CHECKING:
    from orchestrator.api import ControlApi

log = structlog.get_logger(__name__)

SETTINGS_HEADER = "X-Campaign-Settings"
#: Refused rows listed in an import's answer (the rest: ``GET /v1/campaigns/{id}/errors``).
SHOWN_ERRORS = 20
#: Dead letters one ``all_dead`` replay puts back at most.
MAX_REPLAY = 10_000
#: Rates are taken over at least this many seconds when the samples allow.
RATE_WINDOW = 60.0
DELIVERY_STATES = ("pending", "done", "dead")
ACTIONS = ("pause", "resume", "cancel")


class CampaignBody(BaseModel):
    """``POST /v1/campaigns`` (JSON): a campaign with no rows yet."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    settings: CampaignSettings = Field(default_factory=CampaignSettings)


class ReasonBody(BaseModel):
    """The optional body of pause and cancel (``hangup``: cancel only, its live calls are hung
    up at the provider too)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)
    hangup: bool = False


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


def campaign_json(row: Row, progress: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The public JSON form of a campaign row (with its progress when given)."""
    budget = finite(row["budget"])
    spent = finite(float(row["spent"])) or 0.0
    out: dict[str, Any] = {
        "id": row["id"],
        "name": row["name"],
        "status": row["status"],
        "reason": row["reason"],
        "settings": json.loads(row["settings"]),
        "rows": {"total": int(row["rows_total"]), "invalid": int(row["rows_invalid"])},
        "dialed": int(row["dialed"]),
        "spent": round(spent, 4),
        "budget": budget,
        "budget_left": round(max(0.0, budget - spent), 4) if budget is not None else None,
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }
    if progress is not None:
        out["progress"] = dict(progress)
    return out


def delivery_json(row: Row) -> dict[str, Any]:
    """The public JSON form of an outbox row; ``route`` is the rule it was routed by."""
    return {
        "id": row["id"],
        "route": row["handler"],
        "state": row["state"],
        "tries": int(row["tries"]),
        "event_id": row["event_id"],
        "event_seq": int(row["event_seq"]),
        "call_id": row["call_id"],
        "last_error": row["last_error"],
        "next_try_at": iso(row["not_before"]) if row["state"] == "pending" else None,
        "updated_at": iso(row["updated_at"]),
    }


def _errors_json(errors: list[RowError], import_no: int | None) -> list[dict[str, Any]]:
    return [{"import": import_no, "line": e.line, "reason": e.reason} for e in errors]


def _cursor(text: str) -> tuple[int, int]:
    """An errors cursor: ``IMPORT:LINE`` as ``next`` gives it (a bare ``LINE``: import 1)."""
    first, sep, second = text.partition(":")
    return (int(first), int(second)) if sep else (1, int(first))


def _limit(query: Mapping[str, str], default: int, top: int = 1000) -> int | web.Response:
    try:
        limit = int(query.get("limit", str(default)))
    except ValueError:
        return _error(400, "INVALID_REQUEST", "limit must be a number", fields=["limit"])
    if not 1 <= limit <= top:
        return _error(
            400, "INVALID_REQUEST", f"limit must be between 1 and {top}", fields=["limit"]
        )
    return limit


def _aliased(settings: object) -> object:
    """Settings as given, with ``from`` (a number or a list) spelled ``from_numbers``."""
    if isinstance(settings, dict) and "from" in settings and "from_numbers" not in settings:
        settings = dict(settings)
        value = settings.pop("from")
        settings["from_numbers"] = [value] if isinstance(value, str) else value
    return settings


def _counter_totals(counter: Counter) -> dict[str, float]:
    """A labelled counter's values by label values (joined with ``/``)."""
    out: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out["/".join(sample.labels.values())] = sample.value
    return out


class CampaignRoutes:
    """The routes; ``api`` gives the store, defaults, metrics and the dialer's wake-up."""

    def __init__(self, api: ControlApi) -> None:
        self.api = api
        self.store = api.store
        # (monotonic time, counter totals) at start and at each status request, for rates.
        self._samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=1000)
        self._samples.append((time.monotonic(), self._totals()["flat"]))

    def register(self, app: web.Application) -> None:
        """Add the routes to ``app``."""
        router = app.router
        router.add_post("/v1/campaigns", self.create)
        router.add_get("/v1/campaigns", self.list)
        router.add_get("/v1/campaigns/{id}", self.show)
        router.add_post("/v1/campaigns/{id}/rows", self.rows)
        router.add_get("/v1/campaigns/{id}/errors", self.errors)
        router.add_post("/v1/campaigns/{id}/{action:pause|resume|cancel}", self.transition)
        router.add_get("/v1/do-not-call", self.dnc_list)
        router.add_post("/v1/do-not-call", self.dnc_add)
        router.add_delete("/v1/do-not-call/{number}", self.dnc_remove)
        router.add_get("/v1/deliveries", self.deliveries)
        router.add_post("/v1/deliveries/replay", self.replay)
        router.add_get("/v1/status", self.status)

    # -- campaigns ---------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        """A JSON body ``{name, settings}`` creates an empty campaign; a CSV or JSON-lines body
        creates one named by ``?name=`` (settings in the X-Campaign-Settings header) and
        imports the body into it."""
        media = request.content_type.lower()
        if media == "application/json" and "format" not in request.query:
            payload = await self._json(request)
            if isinstance(payload, web.Response):
                return payload
            if isinstance(payload, dict) and "settings" in payload:
                payload = {**payload, "settings": _aliased(payload["settings"])}
            body = self._campaign_body(payload)
            if isinstance(body, web.Response):
                return body
            row = await self.store.create_campaign(body.name, body.settings)
            log.info("api.campaign_created", campaign=row["id"], name=body.name)
            return web.json_response(campaign_json(row), status=201)
        if not request.query.get("name"):
            return _error(
                400,
                "INVALID_REQUEST",
                "name: required (POST /v1/campaigns?name=NAME with the file as the body)",
                fields=["name"],
            )
        raw = request.headers.get(SETTINGS_HEADER, "{}")
        try:
            settings = load_json(raw.encode("utf-8", "surrogateescape"))
        except ValueError as exc:
            return _error(400, "MALFORMED_JSON", f"{SETTINGS_HEADER} is not JSON ({exc})"[:300])
        body = self._campaign_body(
            {"name": request.query.get("name"), "settings": _aliased(settings)}
        )
        if isinstance(body, web.Response):
            return body
        return await self._import(request, None, body)

    def _campaign_body(self, payload: Any) -> CampaignBody | web.Response:
        problem = unstorable(payload)
        if problem is not None:
            return _error(
                400, "INVALID_REQUEST", f"{problem[0]}: {problem[1]}", fields=[problem[0]]
            )
        try:
            return CampaignBody.model_validate(payload)
        except ValidationError as exc:
            return _invalid(exc)
        except exceptions.InputError as exc:  # a caller id of the pool
            return _error(400, exc.code, exc.message, fields=["settings.from_numbers"])

    async def rows(self, request: web.Request) -> web.Response:
        """Import a CSV or JSON-lines body into an existing campaign."""
        row = await self.store.campaign(request.match_info["id"])
        if row is None:
            return _error(404, "NOT_FOUND", "no such campaign")
        return await self._import(request, row, None)

    async def _import(
        self, request: web.Request, campaign: Row | None, body: CampaignBody | None
    ) -> web.Response:
        """Stream the body into ``campaign`` (or a new one from ``body``)."""
        if campaign is not None and campaign["status"] == CampaignStatus.CANCELED:
            return _error(409, "CAMPAIGN_CANCELED", "the campaign is canceled")
        try:
            fmt = imports.detect_format(
                request.headers.get("Content-Type"), request.query.get("format")
            )
            mapping = imports.ColumnMap.parse(request.query.items())
        except imports.UnsupportedFormat as exc:
            return _error(415, exc.code, exc.message)
        except imports.InvalidImport as exc:
            return _error(400, exc.code, exc.message)
        pool = (
            body.settings.from_numbers
            if body is not None
            else json.loads(campaign["settings"] if campaign else "{}").get("from_numbers")
        )
        parser = imports.RowParser(
            fmt, mapping, default_from="" if pool else self.api.defaults.from_
        )
        batches = parser.batches(request.content.iter_chunked(1 << 16))
        shown: list[RowError] = []
        written = imports.Stats()  # what is in the store

        def summary() -> dict[str, Any]:
            return {
                "number": import_no,  # which import of the campaign this was
                "format": fmt.value,
                "rows": written.rows,
                "queued": written.queued,
                "invalid": written.invalid,
                "errors": _errors_json(shown, import_no),
                "more_errors": written.invalid > len(shown),
                "ignored_columns": parser.stats.ignored_columns,
            }

        campaign_id = campaign["id"] if campaign is not None else None
        import_no: int | None = None
        try:
            batch: imports.Batch | None = await anext(batches)
            if campaign_id is None:
                assert body is not None
                created = await self.store.create_campaign(body.name, body.settings)
                campaign_id = created["id"]
                log.info("api.campaign_created", campaign=campaign_id, name=body.name)
            import_no = await self.store.begin_import(campaign_id)
            while batch is not None:
                await self.store.import_rows(
                    campaign_id, batch.calls, batch.errors, import_no=import_no
                )
                written.rows += len(batch)
                written.queued += len(batch.calls)
                written.invalid += len(batch.errors)
                shown.extend(batch.errors[: SHOWN_ERRORS - len(shown)])
                if batch.calls:
                    self.api.on_queued()
                batch = await anext(batches, None)
        except imports.InvalidImport as exc:  # the file as a whole, before any row
            return _error(400, exc.code, exc.message)
        except exceptions.InputError as exc:  # canceled while importing
            return _error(
                409, "CAMPAIGN_CANCELED", exc.message, campaign=campaign_id, imported=summary()
            )
        except (http_exceptions.HttpProcessingError, ConnectionError) as exc:
            log.warning("api.import_broken", campaign=campaign_id, error=repr(exc))
            return _error(
                400,
                "BODY_INCOMPLETE",
                "the body broke off; the chunks of rows before it were imported",
                campaign=campaign_id,
                imported=summary(),
            )
        finally:
            await batches.aclose()
        log.info(
            "api.campaign_imported",
            campaign=campaign_id,
            rows=written.rows,
            queued=written.queued,
            invalid=written.invalid,
        )
        row = await self.store.campaign(campaign_id)
        assert row is not None
        return web.json_response(
            {"campaign": campaign_json(row), "import": summary()},
            status=201 if body is not None else 200,
        )

    async def list(self, request: web.Request) -> web.Response:
        """Campaigns, newest first."""
        limit = _limit(request.query, 100)
        if isinstance(limit, web.Response):
            return limit
        rows = await self.store.campaigns(limit=limit)
        return web.json_response({"campaigns": [campaign_json(r) for r in rows]})

    async def show(self, request: web.Request) -> web.Response:
        """One campaign with its calls by status and attempts."""
        campaign_id = request.match_info["id"]
        row = await self.store.campaign(campaign_id)
        if row is None:
            return _error(404, "NOT_FOUND", "no such campaign")
        progress = await self.store.campaign_progress(campaign_id)
        return web.json_response(campaign_json(row, progress))

    async def errors(self, request: web.Request) -> web.Response:
        """The rows the imports refused, by line; ``next`` is the cursor for ``after``."""
        campaign_id = request.match_info["id"]
        limit = _limit(request.query, 100)
        if isinstance(limit, web.Response):
            return limit
        try:
            after = _cursor(request.query.get("after", "0:0"))
        except ValueError:
            return _error(
                400, "INVALID_REQUEST", "after must be IMPORT:LINE (from next)", fields=["after"]
            )
        if await self.store.campaign(campaign_id) is None:
            return _error(404, "NOT_FOUND", "no such campaign")
        rows = await self.store.campaign_errors(campaign_id, after=after, limit=limit)
        return web.json_response(
            {
                "errors": [
                    {"import": int(r["import_no"]), "line": int(r["line"]), "reason": r["reason"]}
                    for r in rows
                ],
                "next": f"{rows[-1]['import_no']}:{rows[-1]['line']}"
                if len(rows) == limit
                else None,
            }
        )

    async def transition(self, request: web.Request) -> web.Response:
        """Pause, resume or cancel; 409 when the campaign's status does not allow it."""
        campaign_id = request.match_info["id"]
        action = request.match_info["action"]
        reason, hangup = None, False
        if request.can_read_body:
            payload = await self._json(request)
            if isinstance(payload, web.Response):
                return payload
            try:
                body = ReasonBody.model_validate(payload)
            except ValidationError as exc:
                return _invalid(exc)
            reason, hangup = body.reason, body.hangup
        if hangup and action != "cancel":
            return _error(400, "INVALID_REQUEST", "hangup: only a cancel hangs calls up")
        if await self.store.campaign(campaign_id) is None:
            return _error(404, "NOT_FOUND", "no such campaign")
        if action == "pause":
            row = await self.store.pause_campaign(
                campaign_id, reason=reason or "paused through the API"
            )
        elif action == "resume":
            row = await self.store.resume_campaign(campaign_id)
        else:
            row = await self.store.cancel_campaign(
                campaign_id, reason=reason or "canceled through the API", hangup=hangup
            )
        if row is None:
            current = await self.store.campaign(campaign_id)
            now = str(current["status"]) if current else "gone"
            return _error(
                409,
                "INVALID_TRANSITION",
                f"cannot {action} a campaign that is {now}",
                campaign_status=now,
            )
        if action == "resume":
            self.api.on_queued()
        log.info("api.campaign_" + action, campaign=campaign_id, reason=reason, hangup=hangup)
        progress = await self.store.campaign_progress(campaign_id)
        return web.json_response(campaign_json(row, progress))

    # -- do not call -------------------------------------------------------------------------

    async def dnc_add(self, request: web.Request) -> web.Response:
        """Never call a number again (it is refused with DO_NOT_CALL at its next claim)."""
        payload = await self._json(request)
        if isinstance(payload, web.Response):
            return payload
        problem = unstorable(payload)
        if problem is not None:
            return _error(
                400, "INVALID_REQUEST", f"{problem[0]}: {problem[1]}", fields=[problem[0]]
            )
        try:
            body = DoNotCallBody.model_validate(payload)
            number = phone.validate_number(body.number, field="number")
        except ValidationError as exc:
            return _invalid(exc)
        except exceptions.InputError as exc:
            return _error(400, exc.code, exc.message, fields=["number"])
        added = await self.store.add_do_not_call(number, reason=body.reason)
        log.info("api.do_not_call_added", number=number, added=added)
        return web.json_response({"number": number, "added": added}, status=201 if added else 200)

    async def dnc_list(self, request: web.Request) -> web.Response:
        """The numbers on the API's list (not a do-not-call file's), by number; ``next`` is
        the cursor for ``after``."""
        limit = _limit(request.query, 100)
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
            return _error(404, "NOT_FOUND", "the number is not on the do-not-call list")
        log.info("api.do_not_call_removed", number=number)
        return web.json_response({"number": number, "removed": True})

    # -- dead letters ------------------------------------------------------------------------

    async def deliveries(self, request: web.Request) -> web.Response:
        """Outbox rows by state (``dead``: the dead letters) and route (the rule's name;
        ``handler`` is taken as a synonym)."""
        query = request.query
        state = query.get("state")
        if state is not None and state not in DELIVERY_STATES:
            return _error(
                400, "INVALID_REQUEST", f"state must be one of {', '.join(DELIVERY_STATES)}",
                fields=["state"],
            )  # fmt: skip
        limit = _limit(query, 100)
        if isinstance(limit, web.Response):
            return limit
        rows = await self.store.list_deliveries(
            state=state, handler=query.get("route") or query.get("handler"), limit=limit
        )
        return web.json_response({"deliveries": [delivery_json(r) for r in rows]})

    async def replay(self, request: web.Request) -> web.Response:
        """Put dead letters back in their handler's queue with a fresh count of tries."""
        payload = await self._json(request)
        if isinstance(payload, web.Response):
            return payload
        try:
            body = ReplayBody.model_validate(payload)
        except ValidationError as exc:
            return _invalid(exc)
        if (body.ids is None) == (not body.all_dead):
            return _error(400, "INVALID_REQUEST", "give either ids or all_dead: true")
        if body.ids is not None:
            if body.route is not None:
                return _error(400, "INVALID_REQUEST", "route goes with all_dead", fields=["route"])
            rows = await self.store.replay_deliveries(body.ids)
            done = {r["id"] for r in rows}
            skipped = [i for i in body.ids if i not in done]
            log.info("api.deliveries_replayed", replayed=len(rows), skipped=len(skipped))
            return web.json_response(
                {
                    "replayed": len(rows),
                    "ids": [r["id"] for r in rows],
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
            rows = await self.store.replay_deliveries([r["id"] for r in dead])
            if not rows:
                break
            replayed.extend(r["id"] for r in rows)
        log.info("api.deliveries_replayed", replayed=len(replayed), route=body.route)
        return web.json_response(
            {"replayed": len(replayed), "ids": replayed[:1000], "skipped": [], "more": more}
        )

    # -- status ------------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        """Live calls, queue depth, the fleet's dialing state, the provider, the campaigns and
        this daemon's counters and rates."""
        gauges = await self.store.gauges()
        state = await self.store.dialing_state()
        ready, detail = await self.api.ready()
        campaigns = await self.store.campaigns(limit=20)
        totals = self._totals()
        return web.json_response(
            {
                "live": gauges["live"],
                "queued": gauges["queued"],
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

    # -- helpers -----------------------------------------------------------------------------

    async def _json(self, request: web.Request) -> Any:
        """The body as JSON, or the 4xx answer."""
        try:
            return load_json(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "TOO_LARGE", f"the body exceeds {MAX_BODY} bytes")
        except ValueError as exc:
            return _error(400, "MALFORMED_JSON", f"the body is not JSON ({exc})"[:300])
