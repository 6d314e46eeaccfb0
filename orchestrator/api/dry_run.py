"""``?dry_run=true`` on a campaign import: the file parsed exactly as the real import would
parse it, nothing stored, and what it would do: the rows it would queue and refuse (with
lines and reasons), the recipients' time zones, and an estimate of when the campaign would
finish and what it would cost (:mod:`orchestrator.estimate`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import http_exceptions, web

from orchestrator import estimate, exceptions, imports
from orchestrator.api.common import error
from orchestrator.store.campaigns import CampaignSettings, RowError, settings_of
from orchestrator.windows import CallingWindow

__all__ = ["Plan", "dry_run", "remaining"]

#: Refused rows listed in the answer (the count covers them all).
SHOWN_ERRORS = 20
#: Seconds a call rings before it is answered (or not), unless ``ring_seconds`` says.
RING_SECONDS = 20.0


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What an estimate needs of the daemon's settings (built in ``daemon.settings``)."""

    limits: estimate.Limits
    window: CallingWindow | None = None
    default_time_zone: str | None = None


def _seconds(request: web.Request, name: str, default: float) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    value = float(text)  # ValueError: the caller answers 400
    if not 0 <= value <= 86400:
        raise ValueError(f"{name} must be 0 to 86400 seconds")
    return value


async def dry_run(
    request: web.Request,
    parser: imports.RowParser,
    fmt: imports.Format,
    settings: CampaignSettings,
    plan: Plan,
) -> web.Response:
    """Read the whole body as an import would, store nothing, and say what would happen."""
    try:
        talk = _seconds(request, "talk_seconds", settings.expected_call_minutes * 60.0)
        ring = _seconds(request, "ring_seconds", RING_SECONDS)
    except ValueError as exc:
        return error(400, "INVALID_REQUEST", str(exc), fields=["talk_seconds", "ring_seconds"])
    rows = queued = invalid = 0
    shown: list[RowError] = []
    numbers: Counter[str] = Counter()
    batches = parser.batches(request.content.iter_chunked(1 << 16))
    try:
        async for batch in batches:
            rows += len(batch)
            queued += len(batch.calls)
            invalid += len(batch.errors)
            shown.extend(batch.errors[: SHOWN_ERRORS - len(shown)])
            numbers.update(call.to for call in batch.calls)
    except exceptions.InvalidImport as exc:
        return error(400, exc.code, exc.message)
    except (http_exceptions.HttpProcessingError, ConnectionError):
        return error(400, "BODY_INCOMPLETE", "the body broke off")
    finally:
        await batches.aclose()
    zones, window, found = _estimate(numbers, settings, plan, talk=talk, ring=ring)
    report: dict[str, Any] = {
        "dry_run": True,
        "import": {
            "format": fmt.value,
            "rows": rows,
            "queued": queued,
            "invalid": invalid,
            "errors": [{"line": e.line, "reason": e.reason} for e in shown],
            "more_errors": invalid > len(shown),
            "ignored_columns": parser.stats.ignored_columns,
        },
        "time_zones": {
            "/".join(group) if group else "unknown": n for group, n in zones.most_common()
        },
        "estimate": {
            **found.to_json(),
            "talk_seconds": talk,
            "ring_seconds": ring,
            "price_per_minute": settings.price_per_minute,
            "window": window.model_dump(mode="json") if window is not None else None,
            "first_attempts_only": True,
        },
    }
    return web.json_response(report)


def remaining(
    campaign: Mapping[str, Any], numbers: Mapping[str, int], plan: Plan
) -> dict[str, Any]:
    """The estimate for what a running campaign has left to dial (``campaign show
    --estimate``): its queued calls, at its own average call length so far."""
    settings = settings_of(campaign["settings"])
    talked = int(campaign["talked"])
    talk = (
        float(campaign["talk_seconds"]) / talked
        if talked
        else settings.expected_call_minutes * 60.0
    )
    _, _, found = _estimate(numbers, settings, plan, talk=talk, ring=RING_SECONDS)
    return {**found.to_json(), "talk_seconds": round(talk, 1), "first_attempts_only": True}


def _estimate(
    numbers: Mapping[str, int],
    settings: CampaignSettings,
    plan: Plan,
    *,
    talk: float,
    ring: float,
) -> tuple[Counter[tuple[str, ...]], CallingWindow | None, estimate.Estimate]:
    """The numbers' zones, the window that applies to them, and the estimate."""
    zones = estimate.zones_of(numbers, default=plan.default_time_zone)
    window = settings.window or plan.window
    found = estimate.estimate(
        zones,
        limits=plan.limits,
        call_seconds=ring + talk,
        talk_seconds=talk,
        price_per_minute=settings.price_per_minute,
        window=window,
    )
    return zones, window, found
