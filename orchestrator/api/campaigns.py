"""The control API's campaign routes: create a campaign (empty, or from a CSV or JSON-lines
body), add rows, list and show campaigns, their refused rows, and pause, resume or cancel.

An import body (CSV or JSON lines, :mod:`orchestrator.imports`) is read as a stream, a chunk of
rows per transaction, so its size is not limited by the API's JSON body limit and its memory
does not grow with its length.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import http_exceptions, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator import exceptions, imports
from orchestrator.api.common import error, invalid, parse_limit, read_json
from orchestrator.api.dry_run import dry_run, remaining
from orchestrator.connectors.protocol import Row
from orchestrator.model import finite, iso, load_json, unstorable
from orchestrator.store.campaigns import (
    BUDGET_REACHED,
    CampaignSettings,
    CampaignStatus,
    RowError,
    budget_allows,
    call_cost,
)

if TYPE_CHECKING:
    from orchestrator.api.server import ControlApi

log = structlog.get_logger(__name__)

SETTINGS_HEADER = "X-Campaign-Settings"
#: Refused rows listed in an import's answer (the rest: ``GET /v1/campaigns/{id}/errors``).
SHOWN_ERRORS = 20
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
        # What one more call is expected to cost (the budget counts live calls at this).
        "expected_call_cost": finite(round(call_cost(row), 4)),
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }
    if progress is not None:
        out["progress"] = dict(progress)
    return out


def _errors_json(errors: list[RowError], import_no: int | None) -> list[dict[str, Any]]:
    return [{"import": import_no, "line": e.line, "reason": e.reason} for e in errors]


def _cursor(text: str) -> tuple[int, int]:
    """An errors cursor: ``IMPORT:LINE`` as ``next`` gives it (a bare ``LINE``: import 1)."""
    first, sep, second = text.partition(":")
    return (int(first), int(second)) if sep else (1, int(first))


def _aliased(settings: object) -> object:
    """Settings as given, with ``from`` (a number or a list) spelled ``from_numbers``."""
    if isinstance(settings, dict) and "from" in settings and "from_numbers" not in settings:
        settings = dict(settings)
        value = settings.pop("from")
        settings["from_numbers"] = [value] if isinstance(value, str) else value
    return settings


class CampaignRoutes:
    """``/v1/campaigns``; ``api`` gives the store and the dialer's wake-up."""

    def __init__(self, api: ControlApi) -> None:
        self.api = api
        self.store = api.store

    def register(self, app: web.Application) -> None:
        """Add the routes to ``app``."""
        router = app.router
        router.add_post("/v1/campaigns", self.create)
        router.add_get("/v1/campaigns", self.list)
        router.add_get("/v1/campaigns/{id}", self.show)
        router.add_patch("/v1/campaigns/{id}", self.update)
        router.add_post("/v1/campaigns/{id}/rows", self.rows)
        router.add_get("/v1/campaigns/{id}/errors", self.errors)
        router.add_post("/v1/campaigns/{id}/{action:pause|resume|cancel}", self.transition)

    async def create(self, request: web.Request) -> web.Response:
        """A JSON body ``{name, settings}`` creates an empty campaign; a CSV or JSON-lines body
        creates one named by ``?name=`` (settings in the X-Campaign-Settings header) and
        imports the body into it."""
        media = request.content_type.lower()
        if media == "application/json" and "format" not in request.query:
            payload = await read_json(request)
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
            return error(
                400,
                "INVALID_REQUEST",
                "name: required (POST /v1/campaigns?name=NAME with the file as the body)",
                fields=["name"],
            )
        raw = request.headers.get(SETTINGS_HEADER, "{}")
        try:
            settings = load_json(raw.encode("utf-8", "surrogateescape"))
        except ValueError as exc:
            return error(400, "MALFORMED_JSON", f"{SETTINGS_HEADER} is not JSON ({exc})"[:300])
        body = self._campaign_body(
            {"name": request.query.get("name"), "settings": _aliased(settings)}
        )
        if isinstance(body, web.Response):
            return body
        return await self._import(request, None, body)

    def _campaign_body(self, payload: Any) -> CampaignBody | web.Response:
        problem = unstorable(payload)
        if problem is not None:
            return error(400, "INVALID_REQUEST", f"{problem[0]}: {problem[1]}", fields=[problem[0]])
        try:
            return CampaignBody.model_validate(payload)
        except ValidationError as exc:
            return invalid(exc)
        except exceptions.InputError as exc:  # a caller id of the pool
            return error(400, exc.code, exc.message, fields=["settings.from_numbers"])

    async def rows(self, request: web.Request) -> web.Response:
        """Import a CSV or JSON-lines body into an existing campaign."""
        row = await self.store.campaign(request.match_info["id"])
        if row is None:
            return error(404, "NOT_FOUND", "no such campaign")
        return await self._import(request, row, None)

    async def _import(
        self, request: web.Request, campaign: Row | None, body: CampaignBody | None
    ) -> web.Response:
        """Stream the body into ``campaign`` (or a new one from ``body``)."""
        if campaign is not None and campaign["status"] == CampaignStatus.CANCELED:
            return error(409, "CAMPAIGN_CANCELED", "the campaign is canceled")
        try:
            fmt = imports.detect_format(
                request.headers.get("Content-Type"), request.query.get("format")
            )
            mapping = imports.ColumnMap.parse(request.query.items())
        except exceptions.UnsupportedFormat as exc:
            return error(415, exc.code, exc.message)
        except exceptions.InvalidImport as exc:
            return error(400, exc.code, exc.message)
        pool = (
            body.settings.from_numbers
            if body is not None
            else json.loads(campaign["settings"] if campaign else "{}").get("from_numbers")
        )
        parser = imports.RowParser(
            fmt, mapping, default_from="" if pool else self.api.defaults.from_
        )
        if request.query.get("dry_run", "").lower() in ("1", "true", "yes"):
            settings = (
                body.settings
                if body is not None
                else CampaignSettings.model_validate_json(
                    campaign["settings"] if campaign else "{}"
                )
            )
            return await dry_run(request, parser, fmt, settings, self.api.plan)
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
        except exceptions.InvalidImport as exc:  # the file as a whole, before any row
            return error(400, exc.code, exc.message)
        except exceptions.InputError as exc:  # canceled while importing
            return error(
                409, "CAMPAIGN_CANCELED", exc.message, campaign=campaign_id, imported=summary()
            )
        except (http_exceptions.HttpProcessingError, ConnectionError) as exc:
            log.warning("api.import_broken", campaign=campaign_id, error=repr(exc))
            return error(
                400,
                "BODY_INCOMPLETE",
                "the body broke off; the chunks of rows before it were imported",
                campaign=campaign_id,
                imported=summary(),
            )
        finally:
            await batches.aclose()
            if import_no is not None and campaign_id is not None:
                # All its chunks are in (or it broke off): the campaign may complete.
                await self.store.end_import(campaign_id)
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
        """Campaigns, newest first; ``?open=true``: only the active and paused ones."""
        limit = parse_limit(request.query, 100)
        if isinstance(limit, web.Response):
            return limit
        open_only = request.query.get("open", "").lower() in ("1", "true", "yes")
        rows = await self.store.campaigns(limit=limit, open_only=open_only)
        return web.json_response({"campaigns": [campaign_json(r) for r in rows]})

    async def show(self, request: web.Request) -> web.Response:
        """One campaign with its calls by status and attempts."""
        campaign_id = request.match_info["id"]
        row = await self.store.campaign(campaign_id)
        if row is None:
            return error(404, "NOT_FOUND", "no such campaign")
        progress = await self.store.campaign_progress(campaign_id)
        shown = campaign_json(row, progress)
        if request.query.get("estimate", "").lower() in ("1", "true", "yes"):
            # What remains: its queued calls' zones, at its own average call so far.
            numbers = await self.store.queued_numbers(campaign_id)
            shown["estimate"] = remaining(row, numbers, self.api.plan)
        return web.json_response(shown)

    async def update(self, request: web.Request) -> web.Response:
        """``PATCH``: change some settings (the rest stay), validated as at creation. Raising
        the budget of a campaign paused for its budget resumes it."""
        campaign_id = request.match_info["id"]
        payload = await read_json(request)
        if isinstance(payload, web.Response):
            return payload
        if isinstance(payload, dict) and set(payload) == {"settings"}:
            payload = payload["settings"]  # the shape creation takes
        if not isinstance(payload, dict) or not payload:
            return error(400, "INVALID_REQUEST", "the body is an object of the settings to change")
        problem = unstorable(payload)
        if problem is not None:
            return error(400, "INVALID_REQUEST", f"{problem[0]}: {problem[1]}", fields=[problem[0]])
        if await self.store.campaign(campaign_id) is None:
            return error(404, "NOT_FOUND", "no such campaign")
        patch = _aliased(payload)
        assert isinstance(patch, dict)
        try:
            updated = await self.store.set_campaign(campaign_id, patch)
        except ValidationError as exc:
            return invalid(exc)
        except exceptions.InputError as exc:  # a caller id of the pool
            return error(400, exc.code, exc.message, fields=["settings.from_numbers"])
        if updated is None:
            return error(409, "CAMPAIGN_CANCELED", "a canceled campaign cannot be changed")
        if updated["status"] == CampaignStatus.ACTIVE:
            self.api.on_queued()
        log.info("api.campaign_updated", campaign=campaign_id, changed=sorted(payload))
        progress = await self.store.campaign_progress(campaign_id)
        return web.json_response(campaign_json(updated, progress))

    async def errors(self, request: web.Request) -> web.Response:
        """The rows the imports refused, by line; ``next`` is the cursor for ``after``."""
        campaign_id = request.match_info["id"]
        limit = parse_limit(request.query, 100)
        if isinstance(limit, web.Response):
            return limit
        try:
            after = _cursor(request.query.get("after", "0:0"))
        except ValueError:
            return error(
                400, "INVALID_REQUEST", "after must be IMPORT:LINE (from next)", fields=["after"]
            )
        if await self.store.campaign(campaign_id) is None:
            return error(404, "NOT_FOUND", "no such campaign")
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
            payload = await read_json(request)
            if isinstance(payload, web.Response):
                return payload
            try:
                body = ReasonBody.model_validate(payload)
            except ValidationError as exc:
                return invalid(exc)
            reason, hangup = body.reason, body.hangup
        if hangup and action != "cancel":
            return error(400, "INVALID_REQUEST", "hangup: only a cancel hangs calls up")
        current = await self.store.campaign(campaign_id)
        if current is None:
            return error(404, "NOT_FOUND", "no such campaign")
        spent = str(current["reason"] or "").startswith(BUDGET_REACHED)
        if action == "resume" and spent and not budget_allows(current):
            # Resumed as it is, the next claim would pause it again at once.
            return error(
                409,
                "BUDGET_REACHED",
                f"{current['reason']}: raise the budget (PATCH /v1/campaigns/{campaign_id} "
                '{"budget": N}, or orchestrator campaign set ID --budget N) and it resumes',
                campaign_status=str(current["status"]),
            )
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
            return error(
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
