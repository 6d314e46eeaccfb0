"""The outbox side of the store: deliveries claimed by handler workers, and what handlers may
do through their context (custom events, retries, cancels, a key-value store)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.connectors.protocol import Row, Transaction
from orchestrator.model import CallStatus, Event, iso
from orchestrator.store.campaigns import settings_of
from orchestrator.store.ledger import Ledger
from orchestrator.store.rows import Attempt, DeliveryRecord

EXHAUSTED = "delivery.exhausted"


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One (event, handler) delivery claimed from the outbox."""

    id: str
    handler: str
    tries: int
    event: Event


class Outbox(Ledger):
    """Deliveries and handler actions; :class:`~orchestrator.store.Store` builds on it."""

    # -- deliveries --------------------------------------------------------------------------

    async def claim_deliveries(
        self, handler: str, owner: str, *, limit: int, lease: float
    ) -> list[Delivery]:
        """Up to ``limit`` due deliveries for ``handler``, at most one per call (in order)."""
        claimed, _ = await self.settle_and_claim(handler, owner, done=(), limit=limit, lease=lease)
        return claimed

    async def settle_and_claim(
        self,
        handler: str,
        owner: str,
        *,
        done: Sequence[Delivery],
        limit: int,
        lease: float,
        returned: Sequence[tuple[Delivery, float]] = (),
    ) -> tuple[list[Delivery], list[str]]:
        """Mark the deliveries ``done`` as handled, put the ``returned`` ones back untried
        (each due at its time), and claim up to ``limit`` more, in one transaction: a worker's
        turn at the store, however many finished since its last.

        Returns (claimed, the ids of ``done`` whose lease was lost to another worker). The
        next delivery of a call just finished can be among those claimed.
        """
        now = self.clock()
        lost = []
        async with self.connector.transaction() as tx:
            for delivery, due in returned:
                await tx.execute(
                    "return_delivery", id=delivery.id, owner=owner, not_before=due, now=now
                )
            for delivery in done:
                changed = await tx.execute(
                    "finish_delivery",
                    id=delivery.id,
                    owner=owner,
                    state="done",
                    not_before=now,
                    last_error=None,
                    now=now,
                )
                if not changed:
                    lost.append(delivery.id)
            rows = (
                await tx.fetch(
                    "claim_deliveries",
                    handler=handler,
                    owner=owner,
                    lease_until=now + lease,
                    now=now,
                    limit=limit,
                )
                if limit > 0
                else []
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
        return out, lost

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
    ) -> list[DeliveryRecord]:
        """Outbox rows, e.g. the dead letters (``state='dead'``)."""
        async with self.connector.transaction() as tx:
            rows = await tx.fetch("list_deliveries", state=state, handler=handler, limit=limit)
        return [DeliveryRecord.from_row(r) for r in rows]

    async def replay_deliveries(self, ids: Sequence[str]) -> list[DeliveryRecord]:
        """Put dead letters back in the queue (tries start again); the rows replayed (ids
        that were not dead are skipped)."""
        now = self.clock()
        replayed = []
        async with self.connector.transaction() as tx:
            for delivery_id in ids:
                row = await tx.fetchone("replay_delivery", id=delivery_id, now=now)
                if row is not None:
                    replayed.append(DeliveryRecord.from_row(row))
            if replayed:
                await self._notify(tx, "deliver")
        return replayed

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
        return await self.emit_for(
            source.call.id, source.call.attempt, type_, key=key, data=data, error=error
        )

    async def emit_for(
        self,
        call_id: str,
        attempt: int,
        type_: str,
        *,
        key: str,
        data: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> Event | None:
        """Emit an event of ``type_`` about a call's attempt (``account.balance_low``...),
        once per ``key``."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            call, row = await self._call_attempt(tx, call_id, attempt)
            return await self._emit(
                tx, call, row, None, now=now, type_=type_, dedupe_key=key, data=data,
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
            cap = await self._campaign_cap(tx, attempt)
            if cap is not None and number > cap:
                # The campaign allows no more: say so instead of scheduling.
                await self._emit(
                    tx, call, attempt, None, now=now, type_="call.retries_exhausted",
                    dedupe_key=f"{call['id']}:{attempt['number']}:call.retries_exhausted",
                    data={"reason": f"the campaign allows {cap} attempt(s)",
                          "attempts": attempt["number"]},
                )  # fmt: skip
                return None
            moved = await tx.fetchone(
                "next_call_attempt", id=call["id"], previous=attempt["number"], number=number,
                now=now,
            )  # fmt: skip
            if moved is None:
                return None
            new = await self._new_attempt(
                tx, moved, number=number, priority=int(attempt["priority"]), not_before=at,
                now=now, campaign=attempt["campaign"],
            )  # fmt: skip
            if attempt["campaign"]:
                # A campaign completed meanwhile (a dead letter replayed late) has work again.
                await tx.execute("reopen_campaign", id=attempt["campaign"], now=now)
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

    async def _campaign_cap(self, tx: Transaction, attempt: Row) -> int | None:
        if not attempt.get("campaign"):
            return None
        campaign = await tx.fetchone("get_campaign", id=attempt["campaign"])
        return settings_of(campaign["settings"]).max_attempts if campaign else None

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

    async def attempts_of(self, call_id: str) -> list[Attempt]:
        """The call's attempts in order."""
        async with self.connector.transaction() as tx:
            rows = await tx.fetch("list_attempts", call_id=call_id)
        return [Attempt.from_row(r) for r in rows]

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
