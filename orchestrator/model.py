"""The values of a call's life: statuses, event types and the event itself."""

from __future__ import annotations

import fnmatch
import json
import math
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

# The metadata key that carries the orchestrator's correlation id. Users may not use keys with
# these prefixes, so a webhook's echoed metadata always points at the attempt that placed it.
# It must not start with "_": the provider's get-call drops such keys, and a look-up of an
# ambiguous placement reads the key back from there. The old key is still read from webhooks
# of calls placed before the change (and stays reserved).
RESERVED_PREFIX = ("orchestrator_", "_orchestrator")
CORRELATION_KEY = "orchestrator_attempt"
LEGACY_CORRELATION_KEY = "_orchestrator_attempt"


class CallStatus(StrEnum):
    """Where a call (and each of its attempts) stands. Terminal statuses are final."""

    QUEUED = "queued"
    DIALING = "dialing"
    INITIATED = "initiated"
    RINGING = "ringing"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        """True for the statuses a call never leaves."""
        return self in TERMINAL

    @property
    def rank(self) -> int:
        """Order along the lifecycle; a webhook never moves a call to a lower rank."""
        return _RANK[self]

    @property
    def event_type(self) -> str:
        """The lifecycle event announcing this status, e.g. ``call.no_answer``."""
        return f"call.{self.value}"

    @classmethod
    def from_provider(cls, status: str) -> CallStatus | None:
        """Map a webhook's status (``in-progress``, ``no-answer``...) to ours, else None."""
        try:
            found = cls(status.strip().lower().replace("-", "_"))
        except ValueError:
            return None
        return found if found in _PROVIDER else None

    @classmethod
    def from_record(cls, status: str) -> CallStatus | None:
        """Map the status of the provider's *record* of a call (get-call, list-calls) to ours.

        Records use the database's spellings: ``in-progress`` with a hyphen is written with the
        record, before anyone answers (so: initiated), ``in_progress`` with an underscore means
        answered; ``queued`` is held before dialing. Terminal statuses come either way
        (``no_answer``, ``no-answer``). Unknown spellings give None.
        """
        text = status.strip().lower()
        if text in ("in-progress", "queued", "pending"):
            return cls.INITIATED
        return cls.from_provider(text)


TERMINAL = frozenset(
    {
        CallStatus.COMPLETED,
        CallStatus.BUSY,
        CallStatus.NO_ANSWER,
        CallStatus.FAILED,
        CallStatus.CANCELED,
        CallStatus.REJECTED,
        CallStatus.TIMED_OUT,
    }
)
_PROVIDER = frozenset(
    {
        CallStatus.INITIATED,
        CallStatus.RINGING,
        CallStatus.IN_PROGRESS,
        CallStatus.COMPLETED,
        CallStatus.BUSY,
        CallStatus.NO_ANSWER,
        CallStatus.FAILED,
        CallStatus.CANCELED,
    }
)
_RANK = {
    CallStatus.QUEUED: 0,
    CallStatus.DIALING: 1,
    CallStatus.INITIATED: 2,
    CallStatus.RINGING: 3,
    CallStatus.IN_PROGRESS: 4,
    **dict.fromkeys(TERMINAL, 5),
}

#: The lifecycle event types, one per status a call can announce.
STATUS_EVENT_TYPES = tuple(s.event_type for s in CallStatus if s is not CallStatus.DIALING)
#: Every event type the orchestrator emits; plugins add ``plugin.<instance>.<name>``.
EVENT_TYPES = (
    *STATUS_EVENT_TYPES,
    "call.requeued",
    "call.retry_scheduled",
    "call.retries_exhausted",
    "delivery.exhausted",
    "handler.disabled",
    "account.balance_low",
    "account.unauthorized",
    "campaign.paused",
    "campaign.budget_reached",
    "campaign.completed",
)


def matches(pattern: str, event_type: str) -> bool:
    """True if ``event_type`` matches ``pattern`` (``call.*``, ``call.completed``, ``*``)."""
    return fnmatch.fnmatchcase(event_type, pattern)


_MS_BITS = 48
_RAND_BITS = 74  # rand_a (12 bits) and rand_b (62 bits) of RFC 9562's UUIDv7 layout
_RAND_MASK = (1 << _RAND_BITS) - 1
_MAX_STEP = 1 << 32
_id_lock = threading.Lock()
_last_id = 0  # (unix ms << 74 | 74 random bits) of the last id this process made


def next_id_value(last: int, ms: int, rand: int) -> int:
    """The ``(ms << 74 | rand)`` value of the next id, strictly above ``last``.

    A new millisecond starts from fresh random bits. Within the same millisecond (or if the
    clock stepped back) the last value is counted on by a random step of 1 to 2**32, as RFC 9562
    section 6.2 (method 2, "monotonic random") suggests: the ids stay increasing and still hard
    to guess. A carry out of the random bits advances the timestamp by a millisecond.
    """
    candidate = (ms & ((1 << _MS_BITS) - 1)) << _RAND_BITS | (rand & _RAND_MASK)
    if candidate <= last:
        candidate = last + 1 + (rand % _MAX_STEP)
    return candidate


def new_id() -> str:
    """A UUIDv7 id: unique, and sortable by creation time as a string.

    Within one process the ids are strictly increasing, even several in one millisecond.
    """
    global _last_id
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big") >> (80 - _RAND_BITS)
    with _id_lock:
        _last_id = next_id_value(_last_id, ms, rand)
        current = _last_id
    ms, rand = current >> _RAND_BITS, current & _RAND_MASK
    value = (
        (ms & ((1 << _MS_BITS) - 1)) << 80
        | 0x7 << 76  # version 7
        | (rand >> 62) << 64  # rand_a
        | 0x2 << 62  # RFC 9562 variant
        | (rand & ((1 << 62) - 1))  # rand_b
    )
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def new_token() -> str:
    """A webhook token: 128 random bits (what makes it unguessable) after a time-ordered
    prefix, so a bulk import appends to the token index instead of writing all over it
    (random tokens made a million-row import twice as slow). The prefix tells only when the
    attempt was created."""
    return new_id().replace("-", "") + secrets.token_urlsafe(16)


def finite(value: float | None) -> float | None:
    """``value`` if it is a finite number, else None (JSON has no Infinity or NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(raw: bytes) -> Any:
    """Parse a request body as standard JSON: no ``NaN``/``Infinity`` literals. Anything that is
    not JSON (bad syntax, bad encoding, nesting too deep to parse) raises ValueError."""
    try:
        return json.loads(raw, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def unstorable(value: Any) -> tuple[str, str] | None:
    """The first thing in a parsed JSON value that cannot be stored and written back as standard
    JSON, as ``(where, why)`` (``where`` a dotted path, ``body`` for the value itself): a number
    out of range (``1e999`` parses as inf) or a string with a lone surrogate (``"\\ud800"``).
    None if there is nothing of the kind."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path[:100] or "body", "the number is out of range"
        if isinstance(item, str) and not _is_unicode(item):
            return path[:100] or "body", "the string is not valid Unicode"
        if isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}.{key}" if path else str(key)
                if not _is_unicode(key):
                    return path[:100] or "body", "a key is not valid Unicode"
                stack.append((where, child))
        elif isinstance(item, list):
            stack.extend((f"{path}.{i}" if path else str(i), v) for i, v in enumerate(item))
    return None


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def iso(ts: float | None) -> str | None:
    """ISO 8601 (UTC, milliseconds, ``Z``) for an epoch timestamp."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, kw_only=True)
class CallRef:
    """The call an event is about, as handlers see it."""

    id: str
    to: str
    from_: str
    agent_id: str | None
    campaign: str | None
    metadata: Mapping[str, Any]
    attempt: int
    provider_call_id: str | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form; ``from_`` is spelled ``from``."""
        return {
            "id": self.id,
            "to": self.to,
            "from": self.from_,
            "agent_id": self.agent_id,
            "campaign": self.campaign,
            "metadata": dict(self.metadata),
            "attempt": self.attempt,
            "provider_call_id": self.provider_call_id,
        }


@dataclass(frozen=True, kw_only=True)
class Event:
    """One lifecycle event. ``id`` is stable: a redelivered event carries the same id."""

    id: str
    type: str
    occurred_at: float
    call: CallRef
    status: str | None = None
    duration: float | None = None
    recording_url: str | None = None
    transcript: str | None = None
    error: Mapping[str, Any] | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        """The event as JSON handlers and the API receive it."""
        return {
            "id": self.id,
            "type": self.type,
            "occurred_at": iso(self.occurred_at),
            "call": self.call.to_json(),
            "status": self.status,
            "duration": finite(self.duration),
            "recording_url": self.recording_url,
            "transcript": self.transcript,
            "error": dict(self.error) if self.error is not None else None,
            "data": dict(self.data),
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any], *, seq: int = 0) -> Event:
        """Rebuild an event from :meth:`to_json` output (as stored in the event log)."""
        call = body["call"]
        occurred = datetime.fromisoformat(str(body["occurred_at"]).replace("Z", "+00:00"))
        return cls(
            id=body["id"],
            type=body["type"],
            occurred_at=occurred.timestamp(),
            call=CallRef(
                id=call["id"],
                to=call["to"],
                from_=call["from"],
                agent_id=call.get("agent_id"),
                campaign=call.get("campaign"),
                metadata=call.get("metadata") or {},
                attempt=int(call.get("attempt") or 0),
                provider_call_id=call.get("provider_call_id"),
            ),
            status=body.get("status"),
            duration=body.get("duration"),
            recording_url=body.get("recording_url"),
            transcript=body.get("transcript"),
            error=body.get("error"),
            data=body.get("data") or {},
            seq=seq,
        )


@dataclass(frozen=True, kw_only=True)
class NewCall:
    """A call to queue, already validated."""

    to: str
    from_: str
    agent_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    purpose: str | None = None
    goal: str | None = None
    template_id: str | None = None
    campaign: str | None = None
    priority: int = 0
