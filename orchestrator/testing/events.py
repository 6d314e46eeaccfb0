"""Events for tests: :func:`make_event` builds an event with sensible defaults, for plugin tests
and for users' rule tests (``orchestrator rules test FILE`` fills the fields a test leaves out
with them)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from orchestrator.model import CallRef, CallStatus, Event

#: The call an event made by :func:`make_event` is about, unless overridden.
DEFAULT_CALL: Mapping[str, Any] = {
    "id": "call_test",
    "to": "+14155550100",
    "from": "+16045550100",
    "agent_id": None,
    "campaign": None,
    "metadata": {},
    "attempt": 1,
    "provider_call_id": None,
}
#: 2024-01-01T00:00:00Z: events made for tests have a fixed time unless told otherwise.
DEFAULT_TIME = 1_704_067_200.0
_EVENT_FIELDS = (
    "id",
    "type",
    "occurred_at",
    "call",
    "status",
    "duration",
    "recording_url",
    "transcript",
    "error",
    "data",
    "seq",
)


def make_event(**overrides: Any) -> Event:
    """An event with sensible defaults; ``overrides`` are fields of ``Event.to_json()``.

    ``type`` defaults to ``call.completed``; ``status`` to the status a ``call.<status>`` type
    announces; ``call`` is merged over :data:`DEFAULT_CALL` (``from`` or ``from_``);
    ``occurred_at`` is epoch seconds or ISO 8601. An unknown field is a ValueError.
    """
    unknown = sorted(set(overrides) - set(_EVENT_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown event field(s) {', '.join(unknown)}; fields: {', '.join(_EVENT_FIELDS)}"
        )
    kind = str(overrides.get("type", "call.completed"))
    given = dict(overrides.get("call") or {})
    if "from_" in given:
        given["from"] = given.pop("from_")
    bad = sorted(set(given) - set(DEFAULT_CALL))
    if bad:
        raise ValueError(
            f"unknown call field(s) {', '.join(bad)}; fields: {', '.join(DEFAULT_CALL)}"
        )
    call = {**DEFAULT_CALL, **given}
    status = kind.removeprefix("call.")
    default_status = status if status in set(CallStatus) - {CallStatus.DIALING} else None
    occurred = overrides.get("occurred_at", DEFAULT_TIME)
    if isinstance(occurred, str):
        occurred = datetime.fromisoformat(occurred.replace("Z", "+00:00")).timestamp()
    return Event(
        id=str(overrides.get("id", "evt_test")),
        type=kind,
        occurred_at=float(occurred),
        call=CallRef(
            id=call["id"],
            to=call["to"],
            from_=call["from"],
            agent_id=call["agent_id"],
            campaign=call["campaign"],
            metadata=dict(call["metadata"] or {}),
            attempt=call["attempt"],
            provider_call_id=call["provider_call_id"],
        ),
        status=overrides.get("status", default_status),
        duration=overrides.get("duration"),
        recording_url=overrides.get("recording_url"),
        transcript=overrides.get("transcript"),
        error=overrides.get("error"),
        data=dict(overrides.get("data") or {}),
        seq=int(overrides.get("seq", 0)),
    )
