"""The engine's durable operations: every state change of a call, one transaction each.

The store is the source of truth. Each method here is one transaction over named queries
(:mod:`orchestrator.connector`), so the same logic runs on SQLite, PostgreSQL and in memory.
Events are written in the same transaction as the change they announce, together with one
outbox row per subscribed handler; nothing is published that is not already durable.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator import exceptions
from orchestrator.connector import Connector, Row, Transaction
from orchestrator.model import CallRef, CallStatus, Event, NewCall, iso, new_id

Router = Callable[[Event], Sequence[str]]
Clock = Callable[[], float]

WATCHDOG = "watchdog"
DIAL_BUCKET = "dial"
EXHAUSTED = "delivery.exhausted"  # the pacing row of the fleet's dialer


class Ingest(StrEnum):
    """What a webhook delivery did."""

    APPLIED = "applied"  # it moved the call forward and emitted an event
    DUPLICATE = "duplicate"  # the exact same delivery was received before
    STALE = "stale"  # out of order or after a terminal state: recorded, no event
    UNMATCHED = "unmatched"  # no call of ours
    CONFLICT = "conflict"  # the token's attempt has another provider call id


@dataclass(frozen=True, kw_only=True)
class Webhook:
    """A parsed status webhook, whichever shape it arrived in."""

    raw: bytes
    status: CallStatus
    provider_call_id: str | None = None
    correlation: str | None = None
    to: str | None = None
    from_: str | None = None
    duration: float | None = None
    recording_url: str | None = None
    transcript: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class IngestResult:
    """The outcome of one webhook delivery and the events it emitted."""

    outcome: Ingest
    call_id: str | None = None
    events: tuple[Event, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Claim:
    """An attempt claimed for dialing, with the call it belongs to."""

    attempt: Row
    call: Row

    @property
    def attempt_id(self) -> str:
        return str(self.attempt["id"])


@dataclass(frozen=True, kw_only=True)
class Pacing:
    """The fleet's dialing pace: at most ``rate`` placements per second, bursts of ``burst``."""

    rate: float
    burst: float = 1.0


@dataclass(frozen=True, kw_only=True)
class Throttled:
    """No claim now: the pace (or the provider's Retry-After) allows the next in ``wait`` s."""

    wait: float


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One (event, handler) delivery claimed from the outbox."""

    id: str
    handler: str
    tries: int
    event: Event


class Store:
    """Durable call lifecycle operations over any :class:`~orchestrator.connector.Connector`.

    ``router`` names the handlers subscribed to an event; it runs inside the transaction that
    writes the event, so the outbox rows are exactly as durable as the event.
    """

    def __init__(
        self, connector: Connector, *, router: Router | None = None, clock: Clock = time.time
    ) -> None:
        self.connector = connector
        self.router: Router = router or (lambda event: ())
        self.clock = clock
        # Connectors that can wake other daemons (PostgreSQL's NOTIFY) say so.
        self.notifies = bool(getattr(connector, "notifies", False))

    async def open(self) -> None:
        """Open the connector and apply migrations."""
        await self.connector.open()

    async def close(self) -> None:
        """Close the connector."""
        await self.connector.close()

    async def ping(self) -> None:
        """Raise StoreError unless the store answers a query."""
        async with self.connector.transaction() as tx:
            await tx.fetchone("count_live")

    # -- calls -------------------------------------------------------------------------------

    async def create_call(
        self, new: NewCall, *, idempotency_key: str | None = None
    ) -> tuple[Row, bool]:
        """Queue a call (with its first attempt and ``call.queued``); return (call, created).

        With an ``idempotency_key`` already used for the same request, the first call is
        returned and nothing is queued; for a different request, IdempotencyConflict.
        """
        now = self.clock()
        request_hash = _request_hash(new)
        async with self.connector.transaction() as tx:
            if idempotency_key is not None:
                existing = await tx.fetchone(
                    "get_call_by_idempotency_key", idempotency_key=idempotency_key
                )
                if existing is not None:
                    return _same_request(existing, request_hash), False
            call = await tx.fetchone(
                "insert_call",
                id=new_id(),
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                to_number=new.to,
                from_number=new.from_,
                agent_id=new.agent_id,
                campaign=new.campaign,
                metadata=json.dumps(dict(new.metadata), sort_keys=True),
                purpose=new.purpose,
                goal=new.goal,
                template_id=new.template_id,
                status=CallStatus.QUEUED.value,
                now=now,
            )
            if call is None:  # another transaction used the key first
                existing = await tx.fetchone(
                    "get_call_by_idempotency_key", idempotency_key=idempotency_key
                )
                assert existing is not None
                return _same_request(existing, request_hash), False
            attempt = await self._new_attempt(
                tx, call, number=1, priority=new.priority, not_before=now, now=now
            )
            await self._emit(tx, call, attempt, CallStatus.QUEUED, now=now)
        return call, True

    async def _new_attempt(
        self,
        tx: Transaction,
        call: Row,
        *,
        number: int,
        priority: int,
        not_before: float,
        now: float,
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
            webhook_token=secrets.token_urlsafe(24),
            priority=priority,
            not_before=not_before,
            now=now,
        )
        assert attempt is not None
        return attempt

    async def get_call(self, call_id: str) -> tuple[Row, list[Row], list[Event]] | None:
        """The call, its attempts and its events, or None."""
        async with self.connector.transaction() as tx:
            call = await tx.fetchone("get_call", id=call_id)
            if call is None:
                return None
            attempts = await tx.fetch("list_attempts", call_id=call_id)
            events = await tx.fetch("list_events", call_id=call_id)
        return (
            call,
            attempts,
            [Event.from_json(json.loads(e["body"]), seq=e["seq"]) for e in events],
        )

    async def list_calls(
        self,
        *,
        status: str | None = None,
        campaign: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> list[Row]:
        """Calls in id (creation) order after the cursor ``after``."""
        async with self.connector.transaction() as tx:
            return await tx.fetch(
                "list_calls", status=status, campaign=campaign, after=after, limit=limit
            )

    async def live_count(self) -> int:
        """How many attempts hold a concurrency slot right now."""
        async with self.connector.transaction() as tx:
            row = await tx.fetchone("count_live")
        return int(row["n"]) if row else 0

    # -- dialing -----------------------------------------------------------------------------

    async def claim_attempt(
        self,
        owner: str,
        *,
        max_live: int,
        lease: float,
        watchdog_after: float,
        pacing: Pacing | None = None,
    ) -> Claim | Throttled | None:
        """Claim the next due attempt if a slot is free and the pace allows: it becomes live
        and ``dialing``. None when there is nothing to claim (or no free slot).

        Claims run one at a time across every daemon on the database (``lock_dialing``), so
        ``max_live`` and ``pacing`` are limits of the fleet, not of one process. The watchdog
        timer is written in the same transaction, so even a daemon killed mid-request leaves a
        call that ends by itself.
        """
        now = self.clock()
        async with self.connector.transaction() as tx:
            await tx.fetchone("lock_dialing")
            live = await tx.fetchone("count_live")
            if live is not None and int(live["n"]) >= max_live:
                return None
            bucket = None
            if pacing is not None:
                bucket = await self._bucket(tx, pacing, now)
                if bucket["paused_until"] > now:
                    return Throttled(wait=bucket["paused_until"] - now)
                if bucket["tokens"] < 1.0:
                    return Throttled(wait=(1.0 - bucket["tokens"]) / pacing.rate)
            attempt = await tx.fetchone(
                "claim_attempt", owner=owner, lease_until=now + lease, now=now
            )
            if attempt is None:
                return None
            if bucket is not None:
                await tx.execute(
                    "put_pacing",
                    bucket=DIAL_BUCKET,
                    tokens=bucket["tokens"] - 1.0,
                    paused_until=bucket["paused_until"],
                    now=now,
                )
            await tx.execute(
                "insert_timer",
                id=new_id(),
                kind=WATCHDOG,
                ref=attempt["id"],
                due_at=now + watchdog_after,
            )
            call = await self._sync_call(tx, attempt, now=now)
        return Claim(attempt=attempt, call=call)

    async def _bucket(self, tx: Transaction, pacing: Pacing, now: float) -> Row:
        row = await tx.fetchone("get_pacing", bucket=DIAL_BUCKET)
        if row is None:
            return {"tokens": pacing.burst, "paused_until": 0.0}
        elapsed = max(0.0, now - row["updated_at"])
        tokens = min(pacing.burst, row["tokens"] + elapsed * pacing.rate)
        return {"tokens": tokens, "paused_until": row["paused_until"]}

    async def pause_dialing(self, until: float) -> None:
        """Hold every daemon's placements until ``until`` (the provider said Retry-After)."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            await tx.fetchone("lock_dialing")
            row = await tx.fetchone("get_pacing", bucket=DIAL_BUCKET)
            tokens = row["tokens"] if row else 1.0
            paused = max(until, row["paused_until"] if row else 0.0)
            await tx.execute(
                "put_pacing", bucket=DIAL_BUCKET, tokens=tokens, paused_until=paused, now=now
            )

    async def heartbeat(
        self,
        owner: str,
        *,
        lease: float,
        attempts: Iterable[str] = (),
        deliveries: Iterable[str] = (),
    ) -> int:
        """Extend the leases of ``owner``'s work still in flight (placements ``attempts``,
        ``deliveries``); how many were extended.

        Leases can then be short: a daemon that dies stops beating and its work is taken
        over within one lease, and so is work whose task died inside a living daemon.
        """
        until = self.clock() + lease
        extended = 0
        async with self.connector.transaction() as tx:
            for attempt_id in attempts:
                extended += max(0, await tx.execute(
                    "extend_attempt_lease", id=attempt_id, owner=owner, lease_until=until
                ))  # fmt: skip
            for delivery_id in deliveries:
                extended += max(0, await tx.execute(
                    "extend_delivery_lease", id=delivery_id, owner=owner, lease_until=until
                ))  # fmt: skip
        return extended

    async def placed(
        self, attempt_id: str, *, provider_call_id: str, provider_status: str
    ) -> list[Event]:
        """The provider accepted the placement; ``call.initiated`` unless it only queued it."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            attempt = await self._attempt(tx, attempt_id)
            status = CallStatus(attempt["status"])
            changes: dict[str, Any] = {
                "provider_call_id": attempt["provider_call_id"] or provider_call_id,
                "provider_status": provider_status,
                "ambiguous": 0,
                "lease_owner": None,
                "lease_until": None,
            }
            if status.terminal or provider_status != "initiated" or status.rank >= 2:
                await self._update_attempt(tx, attempt, **changes)
                return []
            return await self._advance(tx, attempt, CallStatus.INITIATED, now=now, **changes)

    async def refused(self, attempt_id: str, error: exceptions.OrchestratorError) -> list[Event]:
        """The provider (or local validation) refused the placement: ``call.rejected``."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            attempt = await self._attempt(tx, attempt_id)
            if CallStatus(attempt["status"]).terminal:
                return []
            status = getattr(error, "status", None)
            return await self._advance(
                tx,
                attempt,
                CallStatus.REJECTED,
                now=now,
                error_code=error.code,
                error_message=error.message,
                lease_owner=None,
                lease_until=None,
                error={"code": error.code, "message": error.message, "http_status": status},
            )

    async def requeue(
        self, attempt_id: str, error: exceptions.OrchestratorError | None, *, retry_at: float
    ) -> bool:
        """The placement certainly did not happen (429, 503, no connection, or shutdown began
        before it was sent, ``error=None``): queue it again.

        Only an attempt still ``dialing`` and not ambiguous goes back; returns whether it did.
        """
        now = self.clock()
        async with self.connector.transaction() as tx:
            attempt = await self._attempt(tx, attempt_id)
            if attempt["status"] != CallStatus.DIALING or attempt["ambiguous"]:
                return False
            await self._update_attempt(
                tx,
                attempt,
                status=CallStatus.QUEUED.value,
                live=0,
                not_before=retry_at,
                error_code=error.code if error else None,
                error_message=error.message if error else None,
                lease_owner=None,
                lease_until=None,
            )
            await tx.execute("delete_timer", kind=WATCHDOG, ref=attempt_id)
            await self._sync_call(tx, {**attempt, "status": CallStatus.QUEUED.value}, now=now)
            await self._notify(tx, "dial")
        return True

    async def ambiguous(self, attempt_id: str, error: exceptions.OrchestratorError) -> None:
        """The placement may have happened: never resend; wait for a webhook or the watchdog."""
        async with self.connector.transaction() as tx:
            attempt = await self._attempt(tx, attempt_id)
            if CallStatus(attempt["status"]).terminal:
                return
            await self._update_attempt(
                tx,
                attempt,
                ambiguous=0 if attempt["provider_call_id"] else 1,
                error_code=error.code,
                error_message=error.message,
                lease_owner=None,
                lease_until=None,
            )

    async def rescue(self) -> int:
        """Mark placements abandoned by a dead daemon (expired lease) ambiguous.

        One daemon of a fleet sweeps at a time; the others skip the round (0).
        """
        now = self.clock()
        async with self.connector.transaction() as tx:
            lock = await tx.fetchone("try_lock_sweeper")
            if lock is None or not lock["locked"]:
                return 0
            return len(await tx.fetch("rescue_attempts", now=now))

    async def release(self, owner: str) -> None:
        """On shutdown: hand back this daemon's leases so another daemon can go on at once."""
        async with self.connector.transaction() as tx:
            await tx.fetch("release_attempts", owner=owner)
            await tx.execute("release_deliveries", owner=owner)

    # -- webhooks ----------------------------------------------------------------------------

    async def ingest(self, hook: Webhook, *, token: str | None = None) -> IngestResult:
        """Record one webhook delivery and apply its effect, in one transaction.

        A delivery is a duplicate when the same body came before *for the same attempt*: the
        receipt is keyed by both, and only matched deliveries are kept, so a refused delivery
        (unknown token or call) stays refused when repeated and cannot pre-empt a real one.
        """
        now = self.clock()
        async with self.connector.transaction() as tx:
            matched = await self._match(tx, hook, token)
            if matched is None:
                return IngestResult(outcome=Ingest.UNMATCHED)
            attempt = await self._attempt(tx, matched["id"])
            receipt = hashlib.sha256(attempt["id"].encode() + b"\0" + hook.raw).hexdigest()
            inserted = await tx.fetchone(
                "insert_receipt", id=receipt, now=now, body=hook.raw.decode("utf-8", "replace")
            )
            if inserted is None:
                return IngestResult(outcome=Ingest.DUPLICATE, call_id=attempt["call_id"])
            result = await self._apply(tx, attempt, hook, now=now)
            await tx.execute(
                "update_receipt", id=receipt, attempt_id=attempt["id"], outcome=result.outcome.value
            )
        return result

    async def _match(self, tx: Transaction, hook: Webhook, token: str | None) -> Row | None:
        if token is not None:
            return await tx.fetchone("get_attempt_by_token", webhook_token=token)
        if hook.correlation:
            found = await tx.fetchone("get_attempt", id=hook.correlation)
            if found is not None:
                return found
        if hook.provider_call_id:
            found = await tx.fetchone(
                "get_attempt_by_provider_id", provider_call_id=hook.provider_call_id
            )
            if found is not None:
                return found
        if hook.to and hook.from_:
            return await tx.fetchone(
                "get_ambiguous_attempt", to_number=hook.to, from_number=hook.from_
            )
        return None

    async def _apply(
        self, tx: Transaction, attempt: Row, hook: Webhook, *, now: float
    ) -> IngestResult:
        known = attempt["provider_call_id"]
        if known and hook.provider_call_id and known != hook.provider_call_id:
            return IngestResult(outcome=Ingest.CONFLICT, call_id=attempt["call_id"])
        if not known and hook.provider_call_id:
            # The provider id must name one attempt only (a unique column): a token or
            # correlation naming this attempt with another attempt's provider id is a conflict.
            owner = await tx.fetchone(
                "get_attempt_by_provider_id", provider_call_id=hook.provider_call_id
            )
            if owner is not None and owner["id"] != attempt["id"]:
                return IngestResult(outcome=Ingest.CONFLICT, call_id=attempt["call_id"])
        current = CallStatus(attempt["status"])
        provider_call_id = known or hook.provider_call_id
        if current.terminal or hook.status.rank <= current.rank:
            if provider_call_id != known:
                await self._update_attempt(tx, attempt, provider_call_id=provider_call_id)
            return IngestResult(outcome=Ingest.STALE, call_id=attempt["call_id"])
        events = await self._advance(
            tx,
            attempt,
            hook.status,
            now=now,
            provider_call_id=provider_call_id,
            provider_status=hook.status.value,
            ambiguous=0,
            # The provider has spoken: an earlier requeue's or lost answer's error is history.
            error_code=None,
            error_message=None,
            duration=hook.duration,
            recording_url=hook.recording_url,
            transcript=hook.transcript,
            data=hook.data,
        )
        return IngestResult(
            outcome=Ingest.APPLIED, call_id=attempt["call_id"], events=tuple(events)
        )

    # -- timers ------------------------------------------------------------------------------

    async def next_timer(self) -> float | None:
        """When the next timer is due (epoch seconds), if any."""
        async with self.connector.transaction() as tx:
            row = await tx.fetchone("next_timer")
        return float(row["due_at"]) if row and row["due_at"] is not None else None

    async def fire_next(self) -> list[Event] | None:
        """Take the earliest due timer and run it, in one transaction; None if none is due.

        The watchdog ends a still-live attempt as ``call.timed_out``. Taking and running are
        one transaction, so a daemon killed in between strands nothing: the timer is simply
        still due.
        """
        now = self.clock()
        async with self.connector.transaction() as tx:
            timer = await tx.fetchone("next_due_timer", now=now)
            if timer is None:
                return None
            attempt = None
            if timer["kind"] == WATCHDOG:
                attempt = await tx.fetchone("try_lock_attempt", id=timer["ref"])
                if attempt is None and await tx.fetchone("get_attempt", id=timer["ref"]):
                    return []  # another transaction is changing it: look again in a moment
            await tx.execute("delete_timer", kind=timer["kind"], ref=timer["ref"])
            if attempt is None or CallStatus(attempt["status"]).terminal:
                return []
            if attempt["ambiguous"]:
                code, message = (
                    "AMBIGUOUS",
                    (
                        "the placement's outcome was never known and no webhook came "
                        f"({attempt['error_code']}: {attempt['error_message']})"
                    ),
                )
            else:
                code, message = (
                    "NO_TERMINAL_WEBHOOK",
                    (
                        f"no terminal webhook within max_call_duration (last status: "
                        f"{attempt['status']})"
                    ),
                )
            return await self._advance(
                tx,
                attempt,
                CallStatus.TIMED_OUT,
                now=now,
                error_code=code,
                error_message=message,
                lease_owner=None,
                lease_until=None,
                error={"code": code, "message": message},
            )

    # -- deliveries --------------------------------------------------------------------------

    async def claim_deliveries(
        self, handler: str, owner: str, *, limit: int, lease: float
    ) -> list[Delivery]:
        """Up to ``limit`` due deliveries for ``handler``, at most one per call (in order)."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            rows = await tx.fetch(
                "claim_deliveries",
                handler=handler,
                owner=owner,
                lease_until=now + lease,
                now=now,
                limit=limit,
            )
            out = []
            for row in sorted(rows, key=lambda r: r["event_seq"]):
                event = await tx.fetchone("get_event", seq=row["event_seq"])
                assert event is not None
                out.append(
                    Delivery(
                        id=row["id"],
                        handler=handler,
                        tries=int(row["tries"]),
                        event=Event.from_json(json.loads(event["body"]), seq=event["seq"]),
                    )
                )
        return out

    async def finish_delivery(
        self,
        delivery: Delivery,
        owner: str,
        *,
        error: str | None = None,
        retry_at: float | None = None,
        exhausted: Mapping[str, Any] | None = None,
    ) -> bool:
        """Mark a delivery done (no ``error``), due again at ``retry_at``, or dead.

        A dead delivery emits ``delivery.exhausted`` (with ``exhausted`` as its data) in the
        same transaction, unless it was itself a ``delivery.exhausted`` (no loops). Returns
        False when the lease was lost (another worker took the delivery over).
        """
        state = "done" if error is None else ("pending" if retry_at is not None else "dead")
        now = self.clock()
        async with self.connector.transaction() as tx:
            changed = await tx.execute(
                "finish_delivery",
                id=delivery.id,
                owner=owner,
                state=state,
                not_before=retry_at if retry_at is not None else now,
                last_error=error[:2000] if error else None,
                now=now,
            )
            if changed > 0 and state == "dead" and delivery.event.type != EXHAUSTED:
                source = delivery.event
                call, attempt = await self._call_attempt(tx, source.call.id, source.call.attempt)
                await self._emit(
                    tx,
                    call,
                    attempt,
                    None,
                    now=now,
                    type_=EXHAUSTED,
                    dedupe_key=f"{delivery.id}:{EXHAUSTED}",
                    data={
                        "route": delivery.handler,
                        "event_id": source.id,
                        "event_type": source.type,
                        "tries": delivery.tries,
                        **(exhausted or {}),
                    },
                    error={"code": "DELIVERY_EXHAUSTED", "message": (error or "")[:2000]},
                )
        return changed > 0

    async def list_deliveries(
        self, *, state: str | None = None, handler: str | None = None, limit: int = 100
    ) -> list[Row]:
        """Outbox rows, e.g. the dead letters (``state='dead'``)."""
        async with self.connector.transaction() as tx:
            return await tx.fetch("list_deliveries", state=state, handler=handler, limit=limit)

    # -- what handlers do (plugin actions) ---------------------------------------------------

    async def emit(
        self,
        source: Event,
        type_: str,
        *,
        key: str,
        data: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> Event | None:
        """Emit a custom event (``plugin.x.y``, ``delivery.exhausted``...) about ``source``'s
        call and attempt, once per ``key``; None if it was emitted before."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            call, attempt = await self._call_attempt(tx, source.call.id, source.call.attempt)
            return await self._emit(
                tx, call, attempt, None, now=now, type_=type_, dedupe_key=key, data=data,
                error=error,
            )  # fmt: skip

    async def schedule_retry(
        self, source: Event, *, at: float, reason: str | None = None
    ) -> Event | None:
        """The next attempt of ``source``'s call at epoch ``at``, if ``source``'s attempt is the
        call's latest and has ended; emits ``call.retry_scheduled``. A repeat (a redelivered
        event) finds the call moved on and does nothing."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            call, attempt = await self._call_attempt(tx, source.call.id, source.call.attempt)
            if int(call["attempts"]) != int(attempt["number"]):
                return None
            if not CallStatus(attempt["status"]).terminal:
                return None
            number = int(attempt["number"]) + 1
            moved = await tx.fetchone(
                "next_call_attempt", id=call["id"], previous=attempt["number"], number=number,
                now=now,
            )  # fmt: skip
            if moved is None:
                return None
            new = await self._new_attempt(
                tx, moved, number=number, priority=int(attempt["priority"]), not_before=at,
                now=now,
            )  # fmt: skip
            event = await self._emit(
                tx,
                moved,
                new,
                None,
                now=now,
                type_="call.retry_scheduled",
                data={"next_attempt_at": iso(at), "attempt": number, "reason": reason},
            )
            await self._notify(tx, "dial")
        return event

    async def give_up(self, source: Event, *, reason: str) -> Event | None:
        """``call.retries_exhausted`` for ``source``'s call, once per attempt."""
        return await self.emit(
            source,
            "call.retries_exhausted",
            key=f"{source.call.id}:{source.call.attempt}:call.retries_exhausted",
            data={"reason": reason, "attempts": source.call.attempt},
        )

    async def cancel(self, call_id: str, *, reason: str) -> list[Event]:
        """Cancel the call's queued (or scheduled) attempt: ``call.canceled``. A live call is
        left to finish; returns the events (none if nothing was waiting)."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            call = await tx.fetchone("get_call", id=call_id)
            if call is None:
                return []
            found = await tx.fetchone(
                "get_attempt_by_number", call_id=call_id, number=call["attempts"]
            )
            attempt = await self._attempt(tx, found["id"]) if found else None
            if attempt is None or attempt["status"] != CallStatus.QUEUED:
                return []
            error = {"code": "CANCELED", "message": reason}
            return await self._advance(
                tx, attempt, CallStatus.CANCELED, now=now, error_code="CANCELED",
                error_message=reason, error=error,
            )  # fmt: skip

    async def attempts_of(self, call_id: str) -> list[Row]:
        """The call's attempts in order."""
        async with self.connector.transaction() as tx:
            return await tx.fetch("list_attempts", call_id=call_id)

    async def kv_get(self, scope: str, key: str) -> Any:
        """A plugin's stored value (decoded JSON), or None."""
        async with self.connector.transaction() as tx:
            row = await tx.fetchone("kv_get", scope=scope, key=key)
        return json.loads(row["value"]) if row else None

    async def kv_set(self, scope: str, key: str, value: Any) -> None:
        """Store a JSON-serialisable value for a plugin."""
        encoded = json.dumps(value, allow_nan=False)
        async with self.connector.transaction() as tx:
            await tx.execute("kv_set", scope=scope, key=key, value=encoded, now=self.clock())

    async def kv_delete(self, scope: str, key: str) -> None:
        """Remove a plugin's value."""
        async with self.connector.transaction() as tx:
            await tx.execute("kv_delete", scope=scope, key=key)

    # -- internals ---------------------------------------------------------------------------

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
            changes.update(live=0, ended_at=now, ambiguous=0)
            await tx.execute("delete_timer", kind=WATCHDOG, ref=attempt["id"])
        row = await self._update_attempt(tx, attempt, **changes)
        call = await self._sync_call(tx, row, now=now)
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

    async def _sync_call(self, tx: Transaction, attempt: Row, *, now: float) -> Row:
        status = CallStatus(attempt["status"])
        reason = attempt.get("error_code") if status.terminal else None
        await tx.execute(
            "update_call",
            id=attempt["call_id"],
            attempt=attempt["number"],
            status=status.value,
            reason=reason,
            ended_at=now if status.terminal else None,
            now=now,
        )
        call = await tx.fetchone("get_call", id=attempt["call_id"])
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
            body=json.dumps(event.to_json()),
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
        return Event.from_json(event.to_json(), seq=seq)

    async def _notify(self, tx: Transaction, topic: str) -> None:
        """Wake the fleet's other daemons when this transaction commits."""
        if self.notifies:
            await tx.fetchone("notify", topic=topic)


def _request_hash(new: NewCall) -> str:
    body = {
        "to": new.to,
        "from": new.from_,
        "agent_id": new.agent_id,
        "metadata": dict(new.metadata),
        "purpose": new.purpose,
        "goal": new.goal,
        "template_id": new.template_id,
        "campaign": new.campaign,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _same_request(existing: Row, request_hash: str) -> Row:
    if existing["request_hash"] != request_hash:
        raise exceptions.IdempotencyConflict(
            "this Idempotency-Key was used for a different request", call_id=existing["id"]
        )
    return existing
