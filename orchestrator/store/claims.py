"""Dialing in the store: claiming due attempts within the fleet's limits, and recording what
became of each placement.

A claim is one transaction, serialised across every daemon on the database (``lock_dialing``),
so ``max_live_calls``, the pace, each caller id's concurrency and the daily cap per person hold
for the whole fleet. Campaigns share the dialer by weight (``share``), highest priority first.
Each candidate is screened right before it is claimed (calling window, do-not-call list): it is
admitted, deferred to a later time, or refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator import exceptions
from orchestrator.connectors.protocol import Row, Transaction
from orchestrator.model import CallStatus, Event, new_id
from orchestrator.store.campaigns import BUDGET_REACHED, budget_allows, call_cost, settings_of
from orchestrator.store.ledger import WATCHDOG, Ledger, Window
from orchestrator.store.rows import Attempt, Call

DIAL_BUCKET = "dial"  # the pacing row of the fleet's dialer
DAY = 86400.0


@dataclass(frozen=True, kw_only=True)
class Claim:
    """An attempt claimed for dialing, with the call it belongs to."""

    attempt: Attempt
    call: Call

    @property
    def attempt_id(self) -> str:
        return self.attempt.id


#: The longest a call waits after a certain placement failure before it is tried again.
MAX_FAILURE_BACKOFF = 300.0


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
class Admit:
    """The screen's answer: dial it now."""


@dataclass(frozen=True, kw_only=True)
class Defer:
    """The screen's answer: not now, look again at epoch ``until`` (e.g. a closed window)."""

    until: float
    reason: str


@dataclass(frozen=True, kw_only=True)
class Refuse:
    """The screen's answer: never dial it (e.g. do-not-call); the call ends ``rejected``."""

    code: str
    message: str


Screening = Admit | Defer | Refuse
#: ``screen(call, attempt, campaign, now)``: decided right before a claim, in its transaction.
Screen = Callable[[Call, Attempt, Row | None, float], Screening]


@dataclass(frozen=True, kw_only=True)
class ClaimRules:
    """What a claim must respect. ``per_from`` caps live calls per caller id, ``daily_cap``
    attempts per person over 24 hours (across campaigns)."""

    max_live: int
    lease: float
    watchdog_after: float
    pacing: Pacing | None = None
    per_from: int | None = None
    daily_cap: int | None = None
    screen: Screen | None = None


@dataclass(frozen=True, kw_only=True)
class ClaimBatch:
    """What one claim transaction did: the claims to place, the events it wrote (refusals),
    and, when the pace or a pause held it back, how long until the next may go."""

    claims: list[Claim] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    wait: float | None = None


class Dialing(Ledger):
    """Claims and placement outcomes; :class:`~orchestrator.store.Store` builds on it."""

    async def claim_attempt(
        self,
        owner: str,
        *,
        max_live: int,
        lease: float,
        watchdog_after: float,
        pacing: Pacing | None = None,
    ) -> Claim | Throttled | None:
        """Claim the next due attempt (see :meth:`claim_batch`): the claim, Throttled if the
        pace holds it back, or None when there is nothing to claim or no free slot."""
        rules = ClaimRules(
            max_live=max_live, lease=lease, watchdog_after=watchdog_after, pacing=pacing
        )
        batch = await self.claim_batch(owner, rules, limit=1)
        if batch.claims:
            return batch.claims[0]
        return Throttled(wait=batch.wait) if batch.wait is not None else None

    async def claim_batch(self, owner: str, rules: ClaimRules, *, limit: int) -> ClaimBatch:
        """Claim up to ``limit`` due attempts in one transaction; each becomes live and
        ``dialing``, leased to ``owner``, with its watchdog timer written alongside, so even a
        daemon killed mid-request leaves a call that ends by itself."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            await tx.fetchone("lock_dialing")
            live = await tx.fetchone("count_live")
            free = rules.max_live - (int(live["n"]) if live else 0)
            if free <= 0:
                return ClaimBatch()
            bucket = None
            room = min(limit, free)
            if rules.pacing is not None:
                bucket = await self._bucket(tx, rules.pacing, now)
                if bucket["paused_until"] > now:
                    return ClaimBatch(wait=bucket["paused_until"] - now)
                if bucket["tokens"] < 1.0:
                    rate = rules.pacing.rate * bucket["factor"]
                    return ClaimBatch(wait=(1.0 - bucket["tokens"]) / rate)
                room = min(room, int(bucket["tokens"]))
            spent = await self._budget_room(tx, "dial", now)
            if isinstance(spent, float):
                return ClaimBatch(wait=spent)
            room = min([room, *(int(b["tokens"]) for _, b in spent)])
            batch = await self._claim(tx, owner, rules, room, now)
            for window, budget_bucket in spent:
                if batch.claims:
                    await self._put_bucket(
                        tx, budget_bucket, now, window.name,
                        tokens=budget_bucket["tokens"] - len(batch.claims),
                    )  # fmt: skip
            if bucket is not None and batch.claims:
                # Each claim spends a token; a calm pace creeps back to full speed after a 429.
                factor = min(1.0, bucket["factor"] * 1.02 ** len(batch.claims))
                await self._put_bucket(
                    tx, bucket, now, tokens=bucket["tokens"] - len(batch.claims), factor=factor
                )
        return batch

    async def _claim(
        self, tx: Transaction, owner: str, rules: ClaimRules, room: int, now: float
    ) -> ClaimBatch:
        if await tx.fetchone("any_due_attempt", now=now) is None:
            return ClaimBatch()  # nothing is due: no queue need be read
        # Live calls are read before the campaigns' spend: a call that ends in between is then
        # counted twice (live, and spent), never in neither.
        live_of = {r["campaign"]: int(r["live"]) for r in await tx.fetch("campaign_live")}
        campaigns = {row["id"]: row for row in await tx.fetch("active_campaigns")}
        heads: dict[str | None, list[Row]] = {
            None: await tx.fetch("due_attempts_without_campaign", now=now, limit=room + 4)
        }
        for campaign_id in campaigns:
            heads[campaign_id] = await tx.fetch(
                "due_attempts_of_campaign", campaign=campaign_id, now=now, limit=room + 4
            )
        live_from = {
            row["from_number"]: int(row["n"]) for row in await tx.fetch("count_live_by_from")
        }
        dialed = {cid: int(row["dialed"]) for cid, row in campaigns.items()}
        batch = ClaimBatch()
        numbers: set[str] = set()
        while len(batch.claims) < room:
            open_heads = [cid for cid, rows in heads.items() if rows]
            if not open_heads:
                break
            # Highest priority first; among campaigns, the one furthest behind its share.
            cid = min(
                open_heads,
                key=lambda c: (
                    -int(heads[c][0]["priority"]),
                    0.0 if c is None else dialed[c] / max(campaigns[c]["share"], 1e-9),
                ),
            )
            attempt = heads[cid].pop(0)
            campaign = campaigns.get(cid) if cid is not None else None
            if attempt["to_number"] in numbers:
                continue
            claim = await self._admit(
                tx, owner, rules, attempt, campaign, live_from, live_of, now, batch
            )
            if claim is None:
                continue
            numbers.add(attempt["to_number"])
            batch.claims.append(claim)
            from_number = claim.attempt.from_number
            live_from[from_number] = live_from.get(from_number, 0) + 1
            if cid is not None:
                dialed[cid] += 1
                live_of[cid] = live_of.get(cid, 0) + 1
                await tx.execute("campaign_dialed", id=cid)
        return batch

    async def _admit(
        self,
        tx: Transaction,
        owner: str,
        rules: ClaimRules,
        attempt: Row,
        campaign: Row | None,
        live_from: Mapping[str, int],
        live_of: Mapping[str, int],
        now: float,
        batch: ClaimBatch,
    ) -> Claim | None:
        """Screen one candidate and claim it, or defer or refuse it (then None)."""
        call = await tx.fetchone("get_call", id=attempt["call_id"])
        assert call is not None
        if campaign is not None and campaign["budget"] is not None:
            live = live_of.get(campaign["id"], 0)
            if not budget_allows(campaign, live):
                if live == 0:  # nothing left to pay for: the budget is reached
                    await self._budget_reached(tx, campaign, call, attempt, now, batch)
                return None  # else wait: live calls may end cheaper than expected
        refusal = await tx.fetchone("is_do_not_call", number=attempt["to_number"])
        screening: Screening = Admit()
        if refusal is not None:
            message = f"{attempt['to_number']} is on the do-not-call list"
            screening = Refuse(code="DO_NOT_CALL", message=message)
        elif rules.screen is not None:
            screening = rules.screen(Call.from_row(call), Attempt.from_row(attempt), campaign, now)
        if isinstance(screening, Admit) and rules.daily_cap is not None:
            recent = await tx.fetchone(
                "count_recent_attempts", to_number=attempt["to_number"], since=now - DAY
            )
            if recent is not None and int(recent["n"]) >= rules.daily_cap:
                screening = Defer(until=now + 3600.0, reason="daily attempt cap for this person")
        if isinstance(screening, Defer):
            await tx.execute("defer_attempt", id=attempt["id"], not_before=screening.until)
            return None
        if isinstance(screening, Refuse):
            locked = await self._attempt(tx, attempt["id"])
            error = {"code": screening.code, "message": screening.message}
            events = await self._advance(
                tx,
                locked,
                CallStatus.REJECTED,
                now=now,
                error_code=screening.code,
                error_message=screening.message,
                error=error,
            )
            batch.events.extend(events)
            return None
        from_number = self._caller_id(attempt, campaign, rules, live_from)
        if from_number is None:
            return None  # every caller id of the pool is busy: it waits its turn
        claimed = await tx.fetchone(
            "claim_attempt_by_id", id=attempt["id"], owner=owner, from_number=from_number,
            lease_until=now + rules.lease, now=now,
            check_at=now + self.checks.after if self.checks is not None else None,
        )  # fmt: skip
        if claimed is None:
            return None
        if from_number != call["from_number"]:
            await tx.execute("set_call_from", id=call["id"], from_number=from_number)
        await tx.execute(
            "insert_timer",
            id=new_id(),
            kind=WATCHDOG,
            ref=claimed["id"],
            due_at=now + rules.watchdog_after,
        )
        synced = await self._sync_call(tx, claimed, now=now)
        return Claim(attempt=Attempt.from_row(claimed), call=Call.from_row(synced))

    async def _budget_reached(
        self,
        tx: Transaction,
        campaign: Row,
        call: Row,
        attempt: Row,
        now: float,
        batch: ClaimBatch,
    ) -> None:
        """Pause a campaign whose budget cannot pay for one more call, and say so."""
        budget, spent = float(campaign["budget"]), float(campaign["spent"])
        paused = await tx.fetchone(
            "set_campaign_status", id=campaign["id"], status="paused",
            reason=f"{BUDGET_REACHED}: {spent:.2f} of {budget:g} spent", from_a="active",
            from_b="active", now=now,
        )  # fmt: skip
        if paused is None:
            return
        event = await self._emit(
            tx, call, attempt, None, now=now, type_="campaign.budget_reached",
            dedupe_key=f"{campaign['id']}:campaign.budget_reached:{budget:g}",
            data={"campaign": campaign["id"], "name": campaign["name"], "budget": budget,
                  "spent": round(spent, 4), "expected_call_cost": round(call_cost(campaign), 4)},
        )  # fmt: skip
        if event is not None:
            batch.events.append(event)

    @staticmethod
    def _caller_id(
        attempt: Row, campaign: Row | None, rules: ClaimRules, live_from: Mapping[str, int]
    ) -> str | None:
        """The caller id for this attempt: its own, or the least busy of the campaign's pool
        that is under ``per_from``; None if all are at the limit."""
        pool = [attempt["from_number"]]
        if campaign is not None:
            pool = list(settings_of(campaign["settings"]).from_numbers or pool)
        allowed = [
            n for n in pool if rules.per_from is None or live_from.get(n, 0) < rules.per_from
        ]
        if not allowed:
            return None
        return str(min(allowed, key=lambda n: (live_from.get(n, 0), pool.index(n))))

    async def _budget_buckets(
        self, tx: Transaction, kind: str, now: float
    ) -> list[tuple[Window, Row]]:
        """The request budget's buckets for ``kind``, refilled to ``now`` (none: no budget)."""
        if self.budget is None:
            return []
        return [
            (w, await self._bucket(tx, Pacing(rate=w.rate, burst=w.burst), now, w.name))
            for w in self.budget.windows(kind)
        ]

    async def _budget_room(
        self, tx: Transaction, kind: str, now: float
    ) -> list[tuple[Window, Row]] | float:
        """The request budget's buckets for ``kind``, each with a token at least; or the
        seconds until the first one found empty has one."""
        buckets = await self._budget_buckets(tx, kind, now)
        for window, bucket in buckets:
            if bucket["tokens"] < 1.0:
                return float((1.0 - bucket["tokens"]) / window.rate)
        return buckets

    async def request_budget(self) -> dict[str, dict[str, float]]:
        """What is left of the request budget now, by kind and window (empty: no budget)."""
        now = self.clock()
        out: dict[str, dict[str, float]] = {}
        async with self.connector.transaction() as tx:
            for kind, label in (("dial", "placements"), ("lookup", "lookups")):
                for window, bucket in await self._budget_buckets(tx, kind, now):
                    period = window.name.rsplit(":", 1)[-1]
                    out.setdefault(label, {})[period] = round(float(bucket["tokens"]), 2)
        return out

    async def _bucket(
        self, tx: Transaction, pacing: Pacing, now: float, name: str = DIAL_BUCKET
    ) -> Row:
        row = await tx.fetchone("get_pacing", bucket=name)
        if row is None:
            return {"tokens": pacing.burst, "paused_until": 0.0, "reason": None, "factor": 1.0}
        factor = float(row["factor"])
        elapsed = max(0.0, now - row["updated_at"])
        tokens = min(pacing.burst, row["tokens"] + elapsed * pacing.rate * factor)
        return {
            "tokens": tokens,
            "paused_until": row["paused_until"],
            "reason": row["reason"] if row["paused_until"] > now else None,
            "factor": factor,
        }

    async def _put_bucket(
        self, tx: Transaction, bucket: Row, now: float, name: str = DIAL_BUCKET, **changes: Any
    ) -> None:
        row = {**bucket, **changes}
        await tx.execute(
            "put_pacing", bucket=name, tokens=row["tokens"],
            paused_until=row["paused_until"], reason=row["reason"], factor=row["factor"],
            now=now,
        )  # fmt: skip

    async def pause_dialing(
        self, until: float, *, reason: str = "rate_limited", slow_down: bool = False
    ) -> None:
        """Hold every daemon's placements until ``until`` (the provider said Retry-After, or
        the account cannot dial); ``slow_down`` also halves the pace (it recovers by itself)."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            await tx.fetchone("lock_dialing")
            row = await tx.fetchone("get_pacing", bucket=DIAL_BUCKET)
            bucket: dict[str, Any] = {
                "tokens": row["tokens"] if row else 1.0,
                "paused_until": max(until, row["paused_until"] if row else 0.0),
                "reason": reason,
                "factor": float(row["factor"]) if row else 1.0,
            }
            if slow_down:
                bucket["factor"] = max(0.1, float(bucket["factor"] or 1.0) / 2)
            await self._put_bucket(tx, bucket, now)

    async def dialing_state(self) -> Row:
        """The fleet's pace: ``paused_until``, ``reason`` (while paused) and ``factor``."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            row = await tx.fetchone("get_pacing", bucket=DIAL_BUCKET)
        if row is None:
            return {"paused_until": 0.0, "reason": None, "factor": 1.0}
        paused = row["paused_until"] > now
        return {
            "paused_until": row["paused_until"] if paused else 0.0,
            "reason": row["reason"] if paused else None,
            "factor": float(row["factor"]),
        }

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
        self,
        attempt_id: str,
        *,
        provider_call_id: str,
        provider_status: str,
        agent_call_sid: str | None = None,
    ) -> list[Event]:
        """The provider accepted the placement; ``call.initiated`` unless it only queued it.
        ``agent_call_sid`` (deployed) is the agent's leg, which a hang-up may need to end."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            attempt = await self._attempt(tx, attempt_id)
            status = CallStatus(attempt["status"])
            changes: dict[str, Any] = {
                # A call that must end (its campaign was canceled with hangup while this request
                # was under way) is looked up, and hung up, at once.
                "check_at": (
                    now if attempt["ending"] and not status.terminal else attempt["check_at"]
                ),
                "agent_call_sid": attempt["agent_call_sid"] or agent_call_sid,
                "provider_call_id": attempt["provider_call_id"] or provider_call_id,
                "provider_status": provider_status,
                "ambiguous": 0,
                "lease_owner": None,
                "lease_until": None,
            }
            if not status.terminal:
                # A refusal before this placement (429, carrier overrun) is history now; the
                # count of certain failures stays.
                changes.update(error_code=None, error_message=None)
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
            await self._back_to_queue(tx, attempt, error, retry_at=retry_at, now=now)
        return True

    async def _back_to_queue(
        self,
        tx: Transaction,
        attempt: Row,
        error: exceptions.OrchestratorError | None,
        *,
        retry_at: float,
        now: float,
        **changes: Any,
    ) -> None:
        """Put a ``dialing`` attempt that was certainly not placed back in the queue: its slot
        and lease freed, its watchdog gone, due again at ``retry_at``."""
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
            **changes,
        )
        await tx.execute("delete_timer", kind=WATCHDOG, ref=attempt["id"])
        await self._sync_call(tx, {**attempt, "status": CallStatus.QUEUED.value}, now=now)
        await self._notify(tx, "dial")

    async def placement_failed(
        self,
        attempt_id: str,
        error: exceptions.OrchestratorError,
        *,
        backoff: float,
        max_failures: int,
    ) -> tuple[float | None, list[Event]]:
        """The provider certainly failed to place it (its carrier overrun: nobody was rung):
        back to the queue after ``backoff`` doubled for each failure in a row (at most five
        minutes), or, at the ``max_failures``-th, ended as ``call.failed`` with
        ``PLACEMENT_FAILED``. Returns the wait (None when it ended, or was not ``dialing``
        any more) and the events."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            attempt = await self._attempt(tx, attempt_id)
            if attempt["status"] != CallStatus.DIALING or attempt["ambiguous"]:
                return None, []
            failures = int(attempt["failures"]) + 1
            if failures >= max_failures:
                message = f"the provider failed to place it {failures} times: {error.message}"
                events = await self._advance(
                    tx, attempt, CallStatus.FAILED, now=now, error_code="PLACEMENT_FAILED",
                    error_message=message, failures=failures, lease_owner=None,
                    lease_until=None,
                    error={"code": "PLACEMENT_FAILED", "message": message},
                )  # fmt: skip
                return None, events
            wait = min(backoff * 2 ** (failures - 1), MAX_FAILURE_BACKOFF)
            await self._back_to_queue(
                tx, attempt, error, retry_at=now + wait, now=now, failures=failures
            )
        return wait, []

    async def ambiguous(self, attempt_id: str, error: exceptions.OrchestratorError) -> None:
        """The placement may have happened: never resend it blindly. A webhook, or the search
        of the provider's records ``ambiguous_grace`` after it was sent, tells what became of
        it; failing both, the watchdog ends it."""
        async with self.connector.transaction() as tx:
            attempt = await self._attempt(tx, attempt_id)
            if CallStatus(attempt["status"]).terminal:
                return
            unknown = not attempt["provider_call_id"]
            check_at = attempt["check_at"]
            if unknown and self.checks is not None and attempt["placed_at"] is not None:
                check_at = attempt["placed_at"] + self.checks.ambiguous_grace
            await self._update_attempt(
                tx,
                attempt,
                check_at=check_at,
                ambiguous=1 if unknown else 0,
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
            return len(await tx.fetch("rescue_attempts", now=now, grace=self._grace()))

    def _grace(self) -> float | None:
        return self.checks.ambiguous_grace if self.checks is not None else None

    async def release(self, owner: str) -> None:
        """On shutdown: hand back this daemon's leases so another daemon can go on at once."""
        async with self.connector.transaction() as tx:
            await tx.fetch("release_attempts", owner=owner, grace=self._grace())
            await tx.execute("release_deliveries", owner=owner)
