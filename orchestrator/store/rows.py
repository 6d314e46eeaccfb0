"""Typed rows: what the store hands out of a call, an attempt and a delivery.

Inside a transaction the store works on the connector's rows (mappings, one per query); what
leaves it is one of these frozen values, so a caller reads ``attempt.provider_call_id``, not
``attempt["provider_call_id"]``, and mypy sees a misspelt column. Each is built by
``from_row`` from a row of its whole table (``SELECT *``): a column missing is a KeyError at once,
never a silent None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Self

from orchestrator.connectors.protocol import Row
from orchestrator.model import CallStatus

__all__ = ["Attempt", "Call", "DeliveryRecord"]


def _time(row: Row, name: str) -> float | None:
    """A nullable time (or length) column as a float."""
    value = row[name]
    return None if value is None else float(value)


@dataclass(frozen=True, kw_only=True, slots=True)
class Call:
    """One person to reach: the request as queued and where it stands (``calls``)."""

    id: str
    idempotency_key: str | None
    request_hash: str | None
    to_number: str
    from_number: str
    agent_id: str | None
    campaign: str | None
    #: The caller's metadata (a flat JSON object), parsed.
    metadata: dict[str, Any]
    purpose: str | None
    goal: str | None
    template_id: str | None
    status: CallStatus
    reason: str | None
    #: How many attempts the call has had (queued ones included).
    attempts: int
    created_at: float
    updated_at: float
    ended_at: float | None

    @classmethod
    def from_row(cls, row: Row) -> Self:
        """The call in a ``calls`` row."""
        return cls(
            id=row["id"],
            idempotency_key=row["idempotency_key"],
            request_hash=row["request_hash"],
            to_number=row["to_number"],
            from_number=row["from_number"],
            agent_id=row["agent_id"],
            campaign=row["campaign"],
            metadata=json.loads(row["metadata"]),
            purpose=row["purpose"],
            goal=row["goal"],
            template_id=row["template_id"],
            status=CallStatus(row["status"]),
            reason=row["reason"],
            attempts=int(row["attempts"]),
            created_at=float(row["created_at"]),
            updated_at=float(row["updated_at"]),
            ended_at=_time(row, "ended_at"),
        )

    @property
    def terminal(self) -> bool:
        """True once the call has its final outcome."""
        return self.status.terminal


@dataclass(frozen=True, kw_only=True, slots=True)
class Attempt:
    """One placement of a call, which is also its dial job (``attempts``)."""

    id: str
    call_id: str
    #: 1 for the first placement, 2 for the first retry, ...
    number: int
    to_number: str
    from_number: str
    campaign: str | None
    status: CallStatus
    #: True while it holds a concurrency slot (from the claim to its final status).
    live: bool
    #: True when its placement may or may not have rung someone: never resent, looked up.
    ambiguous: bool
    webhook_token: str
    provider_call_id: str | None
    provider_status: str | None
    agent_call_sid: str | None
    error_code: str | None
    error_message: str | None
    priority: int
    #: When a queued attempt may be claimed (epoch seconds).
    not_before: float
    lease_owner: str | None
    lease_until: float | None
    duration: float | None
    created_at: float
    placed_at: float | None
    ended_at: float | None
    #: When the provider's record is next looked up, and what the last look-up found.
    check_at: float | None
    checked_at: float | None
    check_result: str | None
    checks: int
    #: Why the daemon is ending it (``watchdog``, ``canceled``), while it does.
    ending: str | None
    #: What told us its final status: ``webhook``, ``lookup``, ``watchdog``...
    settled_by: str | None
    #: Placements the provider certainly failed in a row (its carrier overrun): bounded.
    failures: int

    @classmethod
    def from_row(cls, row: Row) -> Self:
        """The attempt in an ``attempts`` row."""
        return cls(
            id=row["id"],
            call_id=row["call_id"],
            number=int(row["number"]),
            to_number=row["to_number"],
            from_number=row["from_number"],
            campaign=row["campaign"],
            status=CallStatus(row["status"]),
            live=bool(row["live"]),
            ambiguous=bool(row["ambiguous"]),
            webhook_token=row["webhook_token"],
            provider_call_id=row["provider_call_id"],
            provider_status=row["provider_status"],
            agent_call_sid=row["agent_call_sid"],
            error_code=row["error_code"],
            error_message=row["error_message"],
            priority=int(row["priority"]),
            not_before=float(row["not_before"]),
            lease_owner=row["lease_owner"],
            duration=_time(row, "duration"),
            created_at=float(row["created_at"]),
            check_result=row["check_result"],
            checks=int(row["checks"]),
            ending=row["ending"],
            settled_by=row["settled_by"],
            failures=int(row["failures"]),
            lease_until=_time(row, "lease_until"),
            placed_at=_time(row, "placed_at"),
            ended_at=_time(row, "ended_at"),
            check_at=_time(row, "check_at"),
            checked_at=_time(row, "checked_at"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryRecord:
    """One (event, route) delivery as listed for operators (``deliveries``)."""

    id: str
    event_seq: int
    event_id: str
    call_id: str
    #: The route (rule) it belongs to.
    handler: str
    #: ``pending``, ``done`` or ``dead``.
    state: str
    tries: int
    not_before: float
    lease_owner: str | None
    lease_until: float | None
    last_error: str | None
    updated_at: float

    @classmethod
    def from_row(cls, row: Row) -> Self:
        """The delivery in a ``deliveries`` row."""
        return cls(
            id=row["id"],
            event_seq=int(row["event_seq"]),
            event_id=row["event_id"],
            call_id=row["call_id"],
            handler=row["handler"],
            state=row["state"],
            tries=int(row["tries"]),
            not_before=float(row["not_before"]),
            lease_owner=row["lease_owner"],
            lease_until=_time(row, "lease_until"),
            last_error=row["last_error"],
            updated_at=float(row["updated_at"]),
        )


def columns(kind: type[Call] | type[Attempt] | type[DeliveryRecord]) -> list[str]:
    """The columns a typed row reads (a test compares them with the tables)."""
    return [f.name for f in fields(kind)]
