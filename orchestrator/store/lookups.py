"""Look-ups in the store: which live attempts are due a look-up at the provider, and what a
look-up's finding does to them.

The provider's records are the second source of truth beside webhooks. A finding is applied
exactly as a webhook would be (the same event types, once per attempt and status), so rules,
retries, budgets and slots behave the same whichever source spoke first; the first terminal
status seen wins. The look-ups themselves are made by :mod:`orchestrator.daemon.reconciler`; every
method here is one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.connectors.protocol import Row, Transaction
from orchestrator.model import CallStatus, Event, new_id
from orchestrator.provider.client import ProviderCall
from orchestrator.store.claims import Dialing, Pacing
from orchestrator.store.ledger import WATCHDOG
from orchestrator.store.rows import Attempt

LOOKUP_BUCKET = "lookup"  # the pacing row of the fleet's look-up budget

#: Why an attempt must end now (its ``ending``): the watchdog fired, or its campaign was
#: canceled with ``hangup``.
ENDING_WATCHDOG = "watchdog"
ENDING_CANCELED = "canceled"


@dataclass(frozen=True, kw_only=True)
class Finding:
    """What one look-up found about one attempt: the provider's ``record`` of it; or that the
    provider has none (``missing``; for an ambiguous placement, that no record could be it);
    or ``candidates`` records that could each be it; or the ``error`` that kept us from
    knowing. ``endpoint`` is what was asked (``get-call``, ``list-calls``)."""

    endpoint: str
    record: ProviderCall | None = None
    missing: bool = False
    candidates: int = 0
    error: str | None = None
    # When the placement looked up was sent: a finding about an earlier placement of the same
    # attempt (it has been dialed again since) is stale and changes nothing.
    placed_at: float | None = None

    @property
    def summary(self) -> str:
        """One line for the attempt's ``check_result`` (shown by the API)."""
        if self.record is not None:
            return f"{self.record.status} ({self.endpoint})"[:200]
        if self.error is not None:
            return f"error ({self.endpoint}): {self.error}"[:200]
        if self.candidates > 1:
            return f"{self.candidates} records could be this placement ({self.endpoint})"
        return f"no record ({self.endpoint})"


@dataclass(frozen=True, kw_only=True)
class Applied:
    """What a finding did: the events it wrote; ``hang_up`` when the attempt must now be hung
    up at the provider (its ``ending`` is set and the provider still has it live), then ended
    with :meth:`Checks.end_attempt`; ``redialed`` when a placement that was never created went
    back to the queue."""

    events: list[Event] = field(default_factory=list)
    hang_up: Attempt | None = None
    redialed: bool = False


class Checks(Dialing):
    """Look-up scheduling and findings; :class:`~orchestrator.store.Store` builds on it."""

    async def claim_checks(self, *, limit: int, lease: float) -> list[Attempt]:
        """Take up to ``limit`` due look-ups: each is due again ``lease`` seconds from now
        unless its finding is recorded first, so a daemon that dies mid-look-up loses nothing
        and no other daemon asks about the same attempt meanwhile."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            rows = await tx.fetch("due_checks", now=now, limit=limit)
            for row in rows:
                await tx.execute("set_check_at", id=row["id"], check_at=now + lease)
        return [Attempt.from_row(r) for r in rows]

    async def schedule_check(self, attempt_id: str, *, at: float) -> None:
        """Move a live attempt's next look-up to ``at`` (a look-up given back, or postponed
        because there is nothing to ask yet)."""
        async with self.connector.transaction() as tx:
            await tx.execute("set_check_at", id=attempt_id, check_at=at)

    async def take_lookup(self, pacing: Pacing) -> float | None:
        """Spend one request of the fleet's look-up budget: None when spent, else the seconds
        until one is available (the provider's Retry-After included)."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            await tx.fetchone("lock_lookups")
            bucket = await self._bucket(tx, pacing, now, LOOKUP_BUCKET)
            if bucket["paused_until"] > now:
                return float(bucket["paused_until"] - now)
            if bucket["tokens"] < 1.0:
                return float((1.0 - bucket["tokens"]) / pacing.rate)
            spent = await self._budget_room(tx, "lookup", now)
            if isinstance(spent, float):
                return spent  # the key's budget: look-ups have spent their share for now
            await self._put_bucket(tx, bucket, now, LOOKUP_BUCKET, tokens=bucket["tokens"] - 1)
            for window, budget_bucket in spent:
                await self._put_bucket(
                    tx, budget_bucket, now, window.name, tokens=budget_bucket["tokens"] - 1
                )
        return None

    async def pause_lookups(self, until: float, pacing: Pacing) -> None:
        """The provider said 429 to a look-up: no look-ups by any daemon until ``until`` (what
        the budget held is kept, and it goes on filling)."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            await tx.fetchone("lock_lookups")
            bucket = await self._bucket(tx, pacing, now, LOOKUP_BUCKET)
            paused = max(until, float(bucket["paused_until"]))
            await self._put_bucket(
                tx, bucket, now, LOOKUP_BUCKET, paused_until=paused, reason="rate_limited"
            )

    async def known_provider_ids(self, ids: list[str]) -> set[str]:
        """Which of these provider call ids an attempt of ours already has."""
        async with self.connector.transaction() as tx:
            found = [
                await tx.fetchone("get_attempt_by_provider_id", provider_call_id=i) for i in ids
            ]
        return {str(row["provider_call_id"]) for row in found if row is not None}

    async def apply_finding(self, attempt_id: str, finding: Finding) -> Applied:
        """Apply one look-up's finding to a live attempt (nothing if it ended meanwhile).

        A terminal record ends the attempt as the webhook would have; a live one moves it
        forward (or, when it must end now, asks for a hang-up); an ambiguous placement with
        exactly one record adopts it, and one with none was never created and goes back to the
        queue. Anything else is noted, and looked up again ``every`` seconds.
        """
        now = self.clock()
        async with self.connector.transaction() as tx:
            attempt = await self._attempt(tx, attempt_id)
            current = CallStatus(attempt["status"])
            if current.terminal or not attempt["live"]:
                return Applied()
            if finding.placed_at is not None and finding.placed_at != attempt["placed_at"]:
                return Applied()  # about an earlier placement of this attempt
            every = self.checks.every if self.checks is not None else 60.0
            noted: dict[str, Any] = {
                "checked_at": now,
                "checks": int(attempt["checks"] or 0) + 1,
                "check_result": finding.summary,
                "check_at": now + every,
            }
            record = finding.record
            if record is not None and not attempt["provider_call_id"]:
                owner = await tx.fetchone("get_attempt_by_provider_id", provider_call_id=record.id)
                if owner is not None and owner["id"] != attempt["id"]:
                    # The record is another attempt's: it tells nothing about this one.
                    noted["check_result"] = f"record {record.id} is another call's"
                    record = None
                else:
                    noted.update(provider_call_id=record.id, ambiguous=0)
            if record is not None and record.terminal and record.state is not None:
                events = await self._advance(
                    tx, attempt, record.state, now=now, **{**noted, "check_at": None},
                    provider_status=record.status, settled_by="lookup", lease_owner=None,
                    lease_until=None, error_code=None, error_message=None,
                    duration=record.duration, recording_url=record.recording_url,
                    transcript=record.transcript, data=_source(finding),
                )  # fmt: skip
                return Applied(events=events)
            if record is not None:
                if attempt["ending"]:
                    row = await self._update_attempt(
                        tx, attempt, **noted, provider_status=record.status
                    )
                    return Applied(hang_up=Attempt.from_row(row))
                state = record.state
                if state is not None and state.rank > current.rank:
                    events = await self._advance(
                        tx, attempt, state, now=now, **noted, provider_status=record.status,
                        data=_source(finding),
                    )  # fmt: skip
                    return Applied(events=events)
                await self._update_attempt(tx, attempt, **noted, provider_status=record.status)
                return Applied()
            unknown = attempt["ambiguous"] and not attempt["provider_call_id"]
            ending = attempt["ending"]
            redial = unknown and finding.missing and ending != ENDING_CANCELED
            if redial and not self._searched_in_time(attempt, now):
                noted["check_result"] += ": too early to be sure"
                await self._update_attempt(tx, attempt, **noted)
                return Applied()
            if redial:
                return await self._redial(tx, attempt, noted, finding, now)
            if ending and finding.error is not None and attempt["provider_call_id"]:
                # It must end, and nobody can say whether it still rings: hang it up blind (a
                # call already over is simply not found).
                return Applied(
                    hang_up=Attempt.from_row(await self._update_attempt(tx, attempt, **noted))
                )
            if ending == ENDING_CANCELED:
                message = (
                    "the provider has no record of this placement: nobody was rung"
                    if unknown and finding.missing
                    else "canceled with its campaign; " + _why_unresolved(attempt, finding)[1]
                )
                events = await self._end(
                    tx, attempt, CallStatus.CANCELED, "CAMPAIGN_CANCELED", message, noted, now
                )
                return Applied(events=events)
            if ending:
                code, message = _why_unresolved(attempt, finding)
                events = await self._end(
                    tx, attempt, CallStatus.TIMED_OUT, code, message, noted, now
                )
                return Applied(events=events)
            if finding.candidates > 1:
                noted["check_at"] = None  # asking again will not tell them apart; the watchdog
            await self._update_attempt(tx, attempt, **noted)
            return Applied()

    def _searched_in_time(self, attempt: Row, now: float) -> bool:
        """Whether a search now is late enough to take "no record" as "never created": the
        placement was sent ``ambiguous_grace`` ago (its request cannot still create it)."""
        if self.checks is None or attempt["placed_at"] is None:
            return True
        return bool(now >= attempt["placed_at"] + self.checks.ambiguous_grace)

    async def end_attempt(
        self, attempt_id: str, status: CallStatus, code: str, message: str
    ) -> list[Event]:
        """End a live attempt that had to end now (after its hang-up, or instead of one)."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            attempt = await self._attempt(tx, attempt_id)
            if CallStatus(attempt["status"]).terminal or not attempt["live"]:
                return []
            return await self._end(tx, attempt, status, code, message, {}, now)

    async def _end(
        self,
        tx: Transaction,
        attempt: Row,
        status: CallStatus,
        code: str,
        message: str,
        noted: dict[str, Any],
        now: float,
    ) -> list[Event]:
        settled_by = "cancel" if attempt["ending"] == ENDING_CANCELED else "watchdog"
        return await self._advance(
            tx, attempt, status, now=now, **{**noted, "check_at": None},
            error_code=code, error_message=message, lease_owner=None, lease_until=None,
            settled_by=settled_by, error={"code": code, "message": message},
        )  # fmt: skip

    async def _redial(
        self, tx: Transaction, attempt: Row, noted: dict[str, Any], finding: Finding, now: float
    ) -> Applied:
        """The placement was never created (its search found no record): nobody was rung, so
        it goes back to the queue, as it is, and is dialed again (unless its campaign was
        canceled meanwhile: then it ends canceled)."""
        campaign = (
            await tx.fetchone("get_campaign", id=attempt["campaign"])
            if attempt["campaign"]
            else None
        )
        if campaign is not None and campaign["status"] == "canceled":
            message = "the provider has no record of this placement (nobody was rung); its campaign is canceled"
            events = await self._end(
                tx, attempt, CallStatus.CANCELED, "CAMPAIGN_CANCELED", message, noted, now
            )
            return Applied(events=events)
        code = "NOT_PLACED"
        message = (
            f"the provider has no record of this placement ({attempt['error_code']}): "
            "nobody was rung; it is dialed again"
        )
        row = await self._update_attempt(
            tx, attempt, **{**noted, "check_at": None}, status=CallStatus.QUEUED.value, live=0,
            ambiguous=0, not_before=now, lease_owner=None, lease_until=None, ending=None,
            error_code=code, error_message=message,
        )  # fmt: skip
        await tx.execute("delete_timer", kind=WATCHDOG, ref=attempt["id"])
        call = await self._sync_call(tx, row, now=now)
        event = await self._emit(
            tx, call, row, None, now=now, type_="call.requeued",
            dedupe_key=f"{attempt['id']}:call.requeued:{row['checks']}",
            error={"code": code, "message": message}, data=_source(finding),
        )  # fmt: skip
        await self._notify(tx, "dial")
        return Applied(events=[event] if event is not None else [], redialed=True)

    async def expire(self, attempt: Row, final_grace: float, tx: Transaction, now: float) -> bool:
        """The watchdog fired on a live attempt: with look-ups on, its last look-up is due at
        once and the watchdog comes back ``final_grace`` later to end it regardless (True);
        False when it must be ended now (look-ups off, or this is that second firing)."""
        if self.checks is None or attempt["ending"]:
            return False
        await self._update_attempt(tx, attempt, ending=ENDING_WATCHDOG, check_at=0.0)
        await tx.execute(
            "insert_timer", id=new_id(), kind=WATCHDOG, ref=attempt["id"], due_at=now + final_grace
        )
        return True


def _source(finding: Finding) -> dict[str, Any]:
    """What an event settled by a look-up says of its source."""
    return {"source": "lookup", "endpoint": finding.endpoint}


def _why_unresolved(attempt: Row, finding: Finding) -> tuple[str, str]:
    """The code and message of an attempt the watchdog ends with no terminal status known."""
    if attempt["ambiguous"] and not attempt["provider_call_id"]:
        if finding.error is not None:
            why = f"the provider could not be asked ({finding.error})"
        elif finding.candidates > 1:
            why = f"{finding.candidates} of the provider's records could be it"
        else:
            why = "no record was found for it"
        return "AMBIGUOUS", (
            f"the placement's outcome is unknown ({attempt['error_code']}) and {why}; "
            "it was not dialed again"
        )
    if finding.error is not None:
        return "PROVIDER_UNREACHABLE", (
            "no terminal status within max_call_duration, and the provider could not be asked: "
            f"{finding.error}"
        )
    return "NO_TERMINAL_WEBHOOK", (
        f"no terminal status within max_call_duration; the provider has no record of call "
        f"{attempt['provider_call_id']}"
    )
