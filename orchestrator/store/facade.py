"""The engine's durable operations: every state change of a call, one transaction each.

The store is the source of truth. Each method here is one transaction over named queries
(:mod:`orchestrator.connectors.protocol`), so the same logic runs on SQLite, PostgreSQL and in memory.
Events are written in the same transaction as the change they announce, together with one
outbox row per route (:mod:`orchestrator.store.ledger`); nothing is published that is not already
durable. Deliveries and handler actions are in :mod:`orchestrator.store.outbox`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator import exceptions
from orchestrator.connectors.protocol import Row, Transaction
from orchestrator.model import CallStatus, Event, NewCall, new_id
from orchestrator.store.campaigns import Campaigns
from orchestrator.store.ledger import WATCHDOG
from orchestrator.store.lookups import Checks
from orchestrator.store.outbox import Outbox
from orchestrator.store.rows import Attempt, Call

__all__ = ["Ingest", "IngestResult", "Store", "Webhook"]


class Ingest(StrEnum):
    """What a webhook delivery did."""

    APPLIED = "applied"  # it moved the call forward and emitted an event
    DUPLICATE = "duplicate"  # the exact same delivery was received before
    STALE = "stale"  # out of order or after a terminal state: recorded, no event
    UNMATCHED = "unmatched"  # no call of ours
    CONFLICT = "conflict"  # the token's attempt has another provider call id
    # A deployed call.completed that may not be about the call it names: its record is another
    # call's number (the provider's agent took the wrong record), or only its numbers match a
    # placement whose answer is lost or not back yet. Applied to none; the calls are looked up.
    MISMATCH = "mismatch"


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


class Store(Checks, Campaigns, Outbox):
    """Durable call lifecycle operations over any :class:`~orchestrator.connectors.protocol.Connector`:
    ``Store(connector, router=..., clock=...)``.

    ``router`` names the routes an event goes to; it runs inside the transaction that writes
    the event, so the outbox rows are exactly as durable as the event.
    """

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
    ) -> tuple[Call, bool]:
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
                    return Call.from_row(_same_request(existing, request_hash)), False
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
                return Call.from_row(_same_request(existing, request_hash)), False
            # A call names a campaign of ours (it joins its queue, pace and pauses) or a label.
            campaign = await tx.fetchone("get_campaign", id=new.campaign) if new.campaign else None
            attempt = await self._new_attempt(
                tx,
                call,
                number=1,
                priority=new.priority,
                not_before=now,
                now=now,
                campaign=campaign["id"] if campaign else None,
            )
            await self._emit(tx, call, attempt, CallStatus.QUEUED, now=now)
        return Call.from_row(call), True

    async def get_call(self, call_id: str) -> tuple[Call, list[Attempt], list[Event]] | None:
        """The call, its attempts and its events, or None."""
        async with self.connector.transaction() as tx:
            call = await tx.fetchone("get_call", id=call_id)
            if call is None:
                return None
            attempts = await tx.fetch("list_attempts", call_id=call_id)
            events = await tx.fetch("list_events", call_id=call_id)
        return (
            Call.from_row(call),
            [Attempt.from_row(a) for a in attempts],
            [Event.from_json(json.loads(e["body"]), seq=e["seq"]) for e in events],
        )

    async def list_calls(
        self,
        *,
        status: str | None = None,
        campaign: str | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> list[Call]:
        """Calls in id (creation) order after the cursor ``after``."""
        async with self.connector.transaction() as tx:
            rows = await tx.fetch(
                "list_calls", status=status, campaign=campaign, after=after, limit=limit
            )
        return [Call.from_row(r) for r in rows]

    async def gauges(self) -> dict[str, Any]:
        """What the metrics report of the whole store: live calls, queue depth, pause."""
        async with self.connector.transaction() as tx:
            live = await tx.fetchone("count_live")
            queued = await tx.fetchone("count_queued")
        state = await self.dialing_state()
        return {
            "live": int(live["n"]) if live else 0,
            "queued": int(queued["n"]) if queued else 0,
            "paused": state["reason"],
            "factor": state["factor"],
            "budget": await self.request_budget(),
        }

    async def queue_holds(self) -> dict[str, int]:
        """The queued calls by what holds them: ``ready`` (due now), ``paused_campaign`` (their
        campaign is paused), ``later`` (not due yet: a calling window, a retry's wait), with
        ``dead_letters``: the deliveries dead right now (replayed ones are not)."""
        async with self.connector.transaction() as tx:
            rows = await tx.fetch("queued_by_hold", now=self.clock())
            dead = await tx.fetchone("count_dead_deliveries")
        holds = {"ready": 0, "paused_campaign": 0, "later": 0}
        holds.update({str(r["hold"]): int(r["n"]) for r in rows})
        holds["dead_letters"] = int(dead["n"]) if dead else 0
        return holds

    async def live_count(self) -> int:
        """How many attempts hold a concurrency slot right now."""
        async with self.connector.transaction() as tx:
            row = await tx.fetchone("count_live")
        return int(row["n"]) if row else 0

    # -- webhooks ----------------------------------------------------------------------------

    async def ingest(self, hook: Webhook, *, token: str | None = None) -> IngestResult:
        """Record one webhook delivery and apply its effect, in one transaction.

        A delivery is a duplicate when the same body came before *for the same attempt*: the
        receipt is keyed by both, and only matched deliveries are kept, so a refused delivery
        (unknown token or call) stays refused when repeated and cannot pre-empt a real one.
        """
        now = self.clock()
        async with self.connector.transaction() as tx:
            return await self._ingest(tx, hook, token, now=now)

    async def ingest_many(
        self, hooks: Sequence[tuple[Webhook, str | None]]
    ) -> list[IngestResult | exceptions.StoreError]:
        """Record several webhook deliveries (each with its URL token) in one transaction:
        group commit, one commit for webhooks that arrived together.

        Each gets the result :meth:`ingest` would have given it, in order. Should the shared
        transaction fail, it is rolled back and each webhook is taken again in a transaction
        of its own, so one bad delivery fails alone (its StoreError is in its place); if no
        transaction could even begin (StoreBusy), every one gets that error at once.
        """
        if len(hooks) > 1:
            now = self.clock()
            try:
                async with self.connector.transaction() as tx:
                    return [await self._ingest(tx, hook, token, now=now) for hook, token in hooks]
            except exceptions.StoreBusy as exc:
                return [exc] * len(hooks)
            except exceptions.StoreError:
                pass  # one by one below
        results: list[IngestResult | exceptions.StoreError] = []
        for hook, token in hooks:
            try:
                results.append(await self.ingest(hook, token=token))
            except exceptions.StoreError as exc:
                results.append(exc)
        return results

    async def _ingest(
        self, tx: Transaction, hook: Webhook, token: str | None, *, now: float
    ) -> IngestResult:
        matched, by_numbers = await self._match(tx, hook, token)
        if matched is None:
            return IngestResult(outcome=Ingest.UNMATCHED)
        # By token the attempt was read locked already (get_attempt_by_token).
        attempt = matched if token is not None else await self._attempt(tx, matched["id"])
        receipt = hashlib.sha256(attempt["id"].encode() + b"\0" + hook.raw).hexdigest()
        inserted = await tx.fetchone(
            "insert_receipt", id=receipt, now=now, body=hook.raw.decode("utf-8", "replace")
        )
        if inserted is None:
            return IngestResult(outcome=Ingest.DUPLICATE, call_id=attempt["call_id"])
        if by_numbers:
            # Only its numbers tie it to a placement whose answer is lost or not back yet, and
            # the deployed agent may name another call's record: the provider's records decide
            # (an ambiguous placement is searched for no sooner than its grace allows).
            check_at = now
            if attempt["ambiguous"] and self.checks is not None and attempt["placed_at"]:
                check_at = max(now, attempt["placed_at"] + self.checks.ambiguous_grace)
            await tx.execute("set_check_at", id=attempt["id"], check_at=check_at)
            result = IngestResult(outcome=Ingest.MISMATCH, call_id=attempt["call_id"])
        else:
            result = await self._apply(tx, attempt, hook, now=now)
        await tx.execute(
            "update_receipt", id=receipt, attempt_id=attempt["id"], outcome=result.outcome.value
        )
        return result

    async def _match(
        self, tx: Transaction, hook: Webhook, token: str | None
    ) -> tuple[Row | None, bool]:
        """The attempt a webhook is about, and whether only its numbers said so."""
        if token is not None:
            return await tx.fetchone("get_attempt_by_token", webhook_token=token), False
        if hook.correlation:
            found = await tx.fetchone("get_attempt", id=hook.correlation)
            if found is not None:
                return found, False
        if hook.provider_call_id:
            found = await tx.fetchone(
                "get_attempt_by_provider_id", provider_call_id=hook.provider_call_id
            )
            if found is not None:
                return found, False
        if hook.to and hook.from_:
            found = await tx.fetchone(
                "get_ambiguous_attempt", to_number=hook.to, from_number=hook.from_
            )
            return found, found is not None
        return None, False

    async def _apply(
        self, tx: Transaction, attempt: Row, hook: Webhook, *, now: float
    ) -> IngestResult:
        if hook.to is not None and hook.to != attempt["to_number"]:
            # The record it names is another person's call: settle both by looking them up.
            await tx.execute("set_check_at", id=attempt["id"], check_at=now)
            other = await tx.fetchone("get_live_attempt_by_number", to_number=hook.to)
            if other is not None:
                await tx.execute("set_check_at", id=other["id"], check_at=now)
            return IngestResult(outcome=Ingest.MISMATCH, call_id=attempt["call_id"])
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

        The watchdog ends a still-live attempt as ``call.timed_out``; with look-ups on
        (``checks``), it first makes the attempt's last look-up due at once and comes back
        ``final_grace`` later to end it, should that look-up not have (the look-up may find a
        terminal status, or hang the call up). Taking and running are one transaction, so a
        daemon killed in between strands nothing: the timer is simply still due.
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
            if self.checks is not None and await self.expire(
                attempt, self.checks.final_grace, tx, now
            ):
                return []
            last = f"; last look-up: {attempt['check_result']}" if attempt["check_result"] else ""
            if attempt["ambiguous"]:
                code, message = (
                    "AMBIGUOUS",
                    (
                        "the placement's outcome was never known and no webhook came "
                        f"({attempt['error_code']}: {attempt['error_message']}){last}"
                    ),
                )
            else:
                code, message = (
                    "NO_TERMINAL_WEBHOOK",
                    (
                        f"no terminal webhook within max_call_duration (last status: "
                        f"{attempt['status']}){last}"
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
                settled_by="watchdog",
                error={"code": code, "message": message},
            )


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
