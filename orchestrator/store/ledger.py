"""How a state change is written: the attempt (locked first), the call that follows its latest
attempt, and the event announcing the change with one outbox row per route, all in the
caller's transaction.

This is the one place where events come from, so "nothing is published that is not durable"
and "one lock order" (attempt, then call and timers) are kept here for every operation of
:class:`~orchestrator.store.Store`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator import exceptions
from orchestrator.connectors.protocol import Connector, Row, Transaction
from orchestrator.model import CallRef, CallStatus, Event, new_id, new_token

Router = Callable[[Event], Sequence[str]]
Clock = Callable[[], float]

WATCHDOG = "watchdog"


@dataclass(frozen=True, kw_only=True)
class Window:
    """One of a request budget's token buckets: at most ``burst`` + ``rate`` x its length in
    any window of that length, so the bucket never lets more through than the limit."""

    name: str
    rate: float
    burst: float


@dataclass(frozen=True, kw_only=True)
class RequestBudget:
    """The provider key's request budget (``magpipe.rate_limit``), fleet-wide in the store:
    ``per_minute`` and ``per_hour`` requests, of which placements have ``placements`` and
    look-ups (and hang-ups) the rest, each share kept for its own (neither starves the other).
    """

    per_minute: float
    per_hour: float
    placements: float = 0.6

    def windows(self, kind: str) -> tuple[Window, ...]:
        """The buckets a request of ``kind`` (``dial`` or ``lookup``) spends one token of."""
        share = self.placements if kind == "dial" else 1.0 - self.placements
        out = []
        for window, seconds, limit in (
            ("minute", 60.0, self.per_minute),
            ("hour", 3600.0, self.per_hour),
        ):
            allowed = limit * share
            # A tenth at once, the rest spread over the window: never more than the limit in
            # any window of that length (a bucket full at the start is its burst).
            burst = max(1.0, allowed / 10)
            rate = max(allowed - burst, allowed / 100, 1e-6) / seconds
            out.append(Window(name=f"budget:{kind}:{window}", rate=rate, burst=burst))
        return tuple(out)

    def long_run_rate(self, kind: str) -> float:
        """Requests a second of ``kind`` the budget allows over hours: its tightest window's
        share spread evenly (what an estimate of a long campaign applies)."""
        share = self.placements if kind == "dial" else 1.0 - self.placements
        return min(self.per_minute * share / 60.0, self.per_hour * share / 3600.0)


@dataclass(frozen=True, kw_only=True)
class CheckTiming:
    """When live attempts are looked up at the provider (``magpipe.reconcile``): ``after``
    placement, then ``every``; an ambiguous placement ``ambiguous_grace`` after it was sent.
    When the watchdog fires, the attempt's last look-up is due at once and the watchdog waits
    ``final_grace`` for it before ending the attempt regardless."""

    after: float = 60.0
    every: float = 60.0
    ambiguous_grace: float = 300.0
    final_grace: float = 30.0


class Ledger:
    """The store's writing primitives over any :class:`~orchestrator.connectors.protocol.Connector`.

    ``router`` names the routes an event goes to; it runs inside the transaction that writes
    the event, so the outbox rows are exactly as durable as the event. ``checks`` schedules the
    look-ups of live attempts at the provider; None schedules none (webhooks and the watchdog
    alone then say how a call ended).
    """

    def __init__(
        self,
        connector: Connector,
        *,
        router: Router | None = None,
        clock: Clock = time.time,
        checks: CheckTiming | None = None,
        budget: RequestBudget | None = None,
    ) -> None:
        self.connector = connector
        self.router: Router = router or (lambda event: ())
        self.clock = clock
        self.checks = checks
        #: The provider key's request budget, spent by placements and look-ups (None: none).
        self.budget = budget
        # Connectors that can wake other daemons (PostgreSQL's NOTIFY) say so.
        self.notifies = bool(getattr(connector, "notifies", False))

    async def _new_attempt(
        self,
        tx: Transaction,
        call: Row,
        *,
        number: int,
        priority: int,
        not_before: float,
        now: float,
        campaign: str | None = None,
    ) -> Row:
        attempt = await tx.fetchone(
            "insert_attempt",
            id=new_id(),
            call_id=call["id"],
            number=number,
            to_number=call["to_number"],
            from_number=call["from_number"],
            # The per-attempt secret in the webhook URL: it authenticates the provider's
            # deliveries and names the attempt even before the placing POST has returned.
            webhook_token=new_token(),
            priority=priority,
            not_before=not_before,
            campaign=campaign,
            now=now,
        )
        assert attempt is not None
        return attempt

    async def _call_attempt(self, tx: Transaction, call_id: str, number: int) -> tuple[Row, Row]:
        found = await tx.fetchone("get_attempt_by_number", call_id=call_id, number=number)
        attempt = await tx.fetchone("lock_attempt", id=found["id"]) if found else None
        call = await tx.fetchone("get_call", id=call_id)
        if call is None or attempt is None:
            raise exceptions.StoreError(f"no attempt {number} of call {call_id}", call_id=call_id)
        return call, attempt

    async def _attempt(self, tx: Transaction, attempt_id: str) -> Row:
        """The attempt, locked for this transaction (see ``lock_attempt``)."""
        attempt = await tx.fetchone("lock_attempt", id=attempt_id)
        if attempt is None:
            raise exceptions.StoreError(f"no attempt {attempt_id}")
        return attempt

    async def _update_attempt(self, tx: Transaction, attempt: Row, **changes: Any) -> Row:
        row = {**attempt, **{k: v for k, v in changes.items() if k in attempt}}
        await tx.execute(
            "update_attempt",
            **{
                k: row[k]
                for k in (
                    "id",
                    "status",
                    "live",
                    "ambiguous",
                    "provider_call_id",
                    "provider_status",
                    "error_code",
                    "error_message",
                    "not_before",
                    "lease_owner",
                    "lease_until",
                    "duration",
                    "ended_at",
                    "agent_call_sid",
                    "check_at",
                    "checked_at",
                    "check_result",
                    "checks",
                    "ending",
                    "settled_by",
                    "failures",
                )
            },
        )
        return row

    async def _advance(
        self, tx: Transaction, attempt: Row, status: CallStatus, *, now: float, **fields: Any
    ) -> list[Event]:
        """Move an attempt (and its call) to ``status`` and emit the event for it."""
        changes = {"status": status.value, **fields}
        if status.terminal:
            changes.update(live=0, ended_at=now, ambiguous=0, check_at=None)
            await tx.execute("delete_timer", kind=WATCHDOG, ref=attempt["id"])
        row = await self._update_attempt(tx, attempt, **changes)
        call = await self._sync_call(tx, row, now=now)
        duration = fields.get("duration")
        placed = row.get("placed_at") is not None
        if status.terminal and row.get("campaign") and (duration or placed):
            # Every placed call counts towards the average a live call is expected to cost,
            # the unanswered ones (no talk, no cost) too.
            await self._charge(tx, str(row["campaign"]), float(duration or 0.0), now=now)
        event = await self._emit(
            tx,
            call,
            row,
            status,
            now=now,
            duration=fields.get("duration"),
            recording_url=fields.get("recording_url"),
            transcript=fields.get("transcript"),
            error=fields.get("error"),
            data=fields.get("data") or {},
        )
        return [event] if event is not None else []

    async def _charge(
        self, tx: Transaction, campaign_id: str, duration: float, *, now: float
    ) -> None:
        """Add a finished call's estimated cost to its campaign's spend (budget caps)."""
        campaign = await tx.fetchone("get_campaign", id=campaign_id)
        if campaign is not None:
            cost = duration / 60.0 * float(campaign["price_per_minute"])
            await tx.fetchone(
                "campaign_spent", id=campaign_id, cost=cost, seconds=duration, now=now
            )

    async def _sync_call(self, tx: Transaction, attempt: Row, *, now: float) -> Row:
        status = CallStatus(attempt["status"])
        reason = attempt.get("error_code") if status.terminal else None
        # Only the call's latest attempt changes it; an older one reads it as it is.
        call = await tx.fetchone(
            "update_call",
            id=attempt["call_id"],
            attempt=attempt["number"],
            status=status.value,
            reason=reason,
            ended_at=now if status.terminal else None,
            now=now,
        ) or await tx.fetchone("get_call", id=attempt["call_id"])
        assert call is not None
        return call

    async def _emit(
        self,
        tx: Transaction,
        call: Row,
        attempt: Row,
        status: CallStatus | None,
        *,
        now: float,
        type_: str | None = None,
        dedupe_key: str | None = None,
        **fields: Any,
    ) -> Event | None:
        """Write one event (at most once per ``dedupe_key``; a status event's key is its
        attempt and type) with its outbox rows; None if it was written before."""
        event_type = type_ or (status.event_type if status else "")
        event = Event(
            id=new_id(),
            type=event_type,
            occurred_at=now,
            call=CallRef(
                id=call["id"],
                to=call["to_number"],
                from_=call["from_number"],
                agent_id=call["agent_id"],
                campaign=call["campaign"],
                metadata=json.loads(call["metadata"]),
                attempt=int(attempt["number"]),
                provider_call_id=attempt["provider_call_id"],
            ),
            status=status.value if status else None,
            duration=fields.get("duration"),
            recording_url=fields.get("recording_url"),
            transcript=fields.get("transcript"),
            error=fields.get("error"),
            data=fields.get("data") or {},
        )
        inserted = await tx.fetchone(
            "insert_event",
            id=event.id,
            call_id=call["id"],
            attempt_id=attempt["id"],
            type=event.type,
            occurred_at=now,
            dedupe_key=dedupe_key or f"{attempt['id']}:{event.type}",
            body=json.dumps(body := event.to_json()),
        )
        if inserted is None:
            return None
        seq = int(inserted["seq"])
        handlers = self.router(event)
        for handler in handlers:
            await tx.execute(
                "insert_delivery",
                id=new_id(),
                event_seq=seq,
                event_id=event.id,
                call_id=call["id"],
                handler=handler,
                now=now,
            )
        if handlers:
            await self._notify(tx, "deliver")
        if status is CallStatus.QUEUED or (status is not None and status.terminal):
            await self._notify(tx, "dial")  # new work, or a slot freed
        # As a handler will read it back from the log (times at the log's precision).
        return Event.from_json(body, seq=seq)

    async def _notify(self, tx: Transaction, topic: str) -> None:
        """Wake the fleet's other daemons when this transaction commits."""
        if self.notifies:
            await tx.fetchone("notify", topic=topic)
