"""The reconciler: asks the provider about calls it has not reported on, and hangs up calls
that must end.

On the real service most calls send no webhook at all (busy, unanswered, failed, canceled), a
webhook may name another call, and one sent while no daemon listened is gone. So the provider's
records (``get-call``, ``list-calls``) are the second source of truth: each live attempt is
looked up ``after`` placement and ``every`` so often, and once more when the watchdog fires,
then hung up (``terminate-call``) if the provider still has it live. An ambiguous placement is
searched for ``ambiguous_grace`` after it was sent: found once, it is followed; found nowhere,
it was never created and is dialed again; anything else leaves it ambiguous (never redialed).

Look-ups are claimed from the store like any other work (no two daemons ask about one call at
once) and spend one fleet-wide budget, ``max_per_minute``, in the store too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from orchestrator import exceptions
from orchestrator.daemon.loop import wait_any
from orchestrator.metrics import Metrics
from orchestrator.model import CORRELATION_KEY, LEGACY_CORRELATION_KEY, CallStatus, Event
from orchestrator.provider.client import MagpipeClient, ProviderCall
from orchestrator.store import Store
from orchestrator.store.claims import Pacing
from orchestrator.store.lookups import ENDING_CANCELED, Finding
from orchestrator.store.rows import Attempt

log = structlog.get_logger(__name__)

Publish = Callable[[Iterable[Event]], None]


@dataclass(frozen=True, kw_only=True)
class ReconcilerParams:
    """How the reconciler spends its budget (built by :mod:`orchestrator.daemon.settings` from
    ``magpipe.reconcile`` and ``dialer``)."""

    max_per_minute: int = 60
    hangup_on_timeout: bool = True
    # A look-up taken is due again this long after, unless its finding is recorded first.
    lease: float = 60.0
    # With this many live calls due at once, one list-calls answers for all of them.
    list_from: int = 3
    # Seconds of clock difference allowed between us and the provider in time windows.
    skew: float = 120.0
    # Records read (get-call) to tell which of several candidates an ambiguous placement is.
    max_candidates: int = 5

    def pacing(self) -> Pacing:
        """The budget as a bucket: never more than ``max_per_minute`` in any 60 s."""
        burst = max(1.0, self.max_per_minute / 10)
        return Pacing(rate=max(self.max_per_minute - burst, 0.5) / 60.0, burst=burst)


class Reconciler:
    """A named daemon task: claims due look-ups, asks the provider, applies the findings."""

    poll = 1.0

    def __init__(
        self,
        store: Store,
        magpipe: MagpipeClient,
        settings: ReconcilerParams,
        *,
        publish: Publish,
        metrics: Metrics | None = None,
    ) -> None:
        if store.checks is None:
            raise ValueError("the reconciler needs a store that schedules look-ups (checks)")
        self.store = store
        self.magpipe = magpipe
        self.settings = settings
        # How often a live call is looked up: the store schedules by the same timing.
        self.every = store.checks.every
        self.publish = publish
        self.metrics = metrics
        self.pacing = settings.pacing()
        self.wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._deadline = 0.0
        self._starved = 0.0  # how long until the budget pays for the next request
        # Claims per round: what the budget can pay within half a lease (no lease runs out
        # while we hold it), at least a few (list-calls answers for many at once).
        self.batch = max(4, int(self.pacing.burst + self.pacing.rate * settings.lease / 2))

    async def run(self) -> None:
        """Look calls up until :meth:`stop`."""
        while not self._stopping.is_set():
            self.wake.clear()
            try:
                done = await self.round()
            except exceptions.StoreError as exc:
                log.error("reconciler.store_failed", error=str(exc))
                done = 0
            if not done:
                await wait_any(self.wake, self._stopping, within=self.poll)

    def stop(self) -> None:
        """Stop after the look-up in hand."""
        self._stopping.set()

    async def round(self) -> int:
        """Claim the due look-ups and make them; how many were made (0 when the budget ran
        out: the rest are due again when it allows, and the caller waits)."""
        checks = await self.store.claim_checks(limit=self.batch, lease=self.settings.lease)
        if not checks:
            return 0
        # Every request starts before half the lease has gone, so no claim runs out while held
        # (a request that starts then lasts at most the client's timeout).
        self._deadline = time.monotonic() + self.settings.lease / 2
        self._starved = 0.0
        now = self.store.clock()
        pending = {c.id: c for c in checks}
        try:
            for check in checks:
                if not check.provider_call_id and not check.ambiguous:
                    # Still being placed: nothing to ask yet. If it must end, its answer brings
                    # the look-up (and the hang-up) due at once.
                    del pending[check.id]
                    await self.store.schedule_check(check.id, at=now + self.every)
            for check in [c for c in checks if c.id in pending and c.ending]:
                if not await self._final(check):
                    return 0
                del pending[check.id]
            for check in [c for c in checks if c.id in pending and not c.provider_call_id]:
                finding = await self._search(check)
                if finding is None:
                    return 0
                await self._apply(check, finding)
                del pending[check.id]
            follow = [c for c in checks if c.id in pending]
            if not await self._follow(follow, pending):
                return 0
        finally:
            # Whatever the budget could not pay for is due again when it can.
            again = self.store.clock() + self._starved
            for check_id in pending:
                await self.store.schedule_check(check_id, at=again)
        return len(checks)

    # -- the budget ----------------------------------------------------------------------

    async def _spend(self) -> bool:
        """One request of the fleet's budget; False if none comes before this round's
        deadline (the rest of the round is given back, due when the budget allows)."""
        while not self._stopping.is_set():
            if time.monotonic() > self._deadline:
                self._starved = 0.0
                return False
            until = self.magpipe.exhausted_until
            if until is not None and until > self.store.clock():
                # The provider says the key's budget is spent: look-ups wait until it frees.
                await self.store.pause_lookups(until, self.pacing)
                self.magpipe.exhausted_until = None
            wait = await self.store.take_lookup(self.pacing)
            if wait is None:
                return True
            if time.monotonic() + wait > self._deadline:
                self._starved = wait
                return False
            await wait_any(self._stopping, within=wait)
        return False

    def _count(self, endpoint: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.lookups.labels(endpoint, outcome).inc()

    async def _ask(self, endpoint: str, call_id: str) -> Finding | None:
        """get-call, as a Finding; None when the budget ran out."""
        if not await self._spend():
            return None
        try:
            record = await self.magpipe.get_call(call_id)
        except exceptions.CallNotFound:
            self._count(endpoint, "not_found")
            return Finding(endpoint=endpoint, missing=True)
        except exceptions.MagpipeError as exc:
            await self._failed(endpoint, exc)
            return Finding(endpoint=endpoint, error=f"{exc.code}: {exc.message}"[:160])
        self._count(endpoint, "found")
        return Finding(endpoint=endpoint, record=record)

    async def _failed(self, endpoint: str, exc: exceptions.MagpipeError) -> None:
        self._count(
            endpoint, "rate_limited" if isinstance(exc, exceptions.RateLimited) else "error"
        )
        log.warning("reconciler.lookup_failed", endpoint=endpoint, code=exc.code, error=exc.message)
        if isinstance(exc, exceptions.RateLimited):
            wait = exc.retry_after if exc.retry_after is not None else 60.0
            await self.store.pause_lookups(self.store.clock() + wait, self.pacing)

    # -- what each kind of look-up does --------------------------------------------------

    async def _apply(self, check: Attempt, finding: Finding) -> None:
        # About the placement claimed: if the attempt is dialed again meanwhile, it is stale.
        finding = dataclasses.replace(finding, placed_at=check.placed_at)
        applied = await self.store.apply_finding(check.id, finding)
        bound = log.bind(call_id=check.call_id, attempt=check.number)
        if applied.redialed and self.metrics is not None:
            self.metrics.redials.inc()
        if applied.redialed:
            bound.warning("reconciler.redial", reason="the provider has no record of it")
        elif applied.events:
            bound.info("reconciler.settled", events=[e.type for e in applied.events])
        self.publish(applied.events)
        if applied.hang_up is not None:
            await self._hang_up(applied.hang_up)

    async def _final(self, check: Attempt) -> bool:
        """The watchdog fired (or the campaign was canceled): look up once more, then hang
        up or end it. False when the budget ran out (the watchdog's second firing ends it
        should the budget not come back in time)."""
        if check.provider_call_id:
            finding = await self._ask("get-call", str(check.provider_call_id))
        else:
            finding = await self._search(check)
        if finding is None:
            return False
        await self._apply(check, finding)
        return True

    async def _hang_up(self, attempt: Attempt) -> None:
        """End at the provider a call that must end here, then here."""
        status = CallStatus.CANCELED if attempt.ending == ENDING_CANCELED else None
        live = attempt.provider_status
        # The last look-up failed: whether it still rings is unknown.
        unknown = str(attempt.check_result or "").startswith("error")
        state = (
            f"no terminal status within max_call_duration, and the provider could not be "
            f"asked ({attempt.check_result})"
            if unknown
            else f"still live at the provider ({live}) after max_call_duration"
        )
        if status is None and not self.settings.hangup_on_timeout:
            code = "PROVIDER_UNREACHABLE" if unknown else "STILL_LIVE"
            events = await self.store.end_attempt(
                attempt.id, CallStatus.TIMED_OUT, code,
                f"{state}; left as it is there (dialer.hangup_on_timeout is off)",
            )  # fmt: skip
            self.publish(events)
            return
        legs = [str(attempt.provider_call_id)]
        if attempt.agent_call_sid and CallStatus.from_record(str(live)) is not (
            CallStatus.IN_PROGRESS
        ):
            legs.append(str(attempt.agent_call_sid))  # an unanswered call's agent leg stays up
        failure = None
        for leg in legs:
            if not await self._spend():
                failure = "no look-up budget left in time"
                break
            try:
                ended = await self.magpipe.terminate_call(leg)
            except exceptions.MagpipeError as exc:
                await self._failed("terminate-call", exc)
                failure = f"{exc.code}: {exc.message}"[:160]
                continue
            self._count("terminate-call", "ended" if ended else "not_live")
        if self.metrics is not None:
            self.metrics.hangups.labels("failed" if failure else "ok").inc()
        if failure is not None:
            # Not forgotten: looked up and hung up again shortly (the watchdog's second firing
            # ends it here should the provider never let us).
            retry = max(self._starved, min(self.every, 5.0))
            log.warning(
                "reconciler.hangup_failed",
                call_id=attempt.call_id,
                error=failure,
                retry_in=retry,
            )
            await self.store.schedule_check(attempt.id, at=self.store.clock() + retry)
            return
        done = "hung up at the provider"
        if status is CallStatus.CANCELED:
            code, message = "CAMPAIGN_CANCELED", f"its campaign was canceled: {done}"
        else:
            code, message = "HUNG_UP", f"{state}: {done}"
        log.warning("reconciler.hung_up", call_id=attempt.call_id, reason=code)
        self.publish(
            await self.store.end_attempt(attempt.id, status or CallStatus.TIMED_OUT, code, message)
        )

    async def _search(self, check: Attempt) -> Finding | None:
        """Look for an ambiguous placement among the provider's records: by its number and
        caller id around when it was sent, then by the correlation key in each candidate's
        metadata (get-call). None when the budget ran out."""
        endpoint = "list-calls"
        sent = datetime.fromtimestamp(float(check.placed_at or check.created_at), UTC)
        skew = timedelta(seconds=self.settings.skew)
        until = datetime.fromtimestamp(self.store.clock(), UTC) + skew
        candidates: list[ProviderCall] = []
        try:
            pages = self.magpipe.list_window(sent - skew, until, phone_number=check.to_number)
            for _ in range(10):
                if not await self._spend():
                    return None
                page = await anext(pages, None)
                if page is None:
                    break
                candidates += [r for r in page.calls if _could_be(r, check)]
                if not page.has_more:
                    break
            else:
                return Finding(endpoint=endpoint, error="too many records to search")
        except exceptions.MagpipeError as exc:
            await self._failed(endpoint, exc)
            return Finding(endpoint=endpoint, error=f"{exc.code}: {exc.message}"[:160])
        self._count(endpoint, "found" if candidates else "not_found")
        if len(candidates) > self.settings.max_candidates:
            return Finding(endpoint=endpoint, candidates=len(candidates))
        # Another attempt of ours already has it: not this one's, unless its key says so (the
        # key is read for every candidate, so a record wrongly tied elsewhere is still found).
        taken = await self.store.known_provider_ids([c.id for c in candidates])
        possible: list[ProviderCall] = []
        for candidate in candidates:
            read = await self._ask("get-call", candidate.id)
            if read is None:
                return None
            if read.error is not None:
                return Finding(endpoint=endpoint, error=read.error)
            record = read.record or candidate
            metadata = record.metadata or {}
            key = metadata.get(CORRELATION_KEY) or metadata.get(LEGACY_CORRELATION_KEY)
            if key == check.id:
                return Finding(endpoint=endpoint, record=record)
            if key is None and candidate.id not in taken:
                possible.append(record)  # no key to tell by: it could be ours
        if len(possible) == 1:
            return Finding(endpoint=endpoint, record=possible[0])
        if not possible:
            return Finding(endpoint=endpoint, missing=True)
        return Finding(endpoint=endpoint, candidates=len(possible))

    async def _follow(self, checks: Sequence[Attempt], pending: dict[str, Attempt]) -> bool:
        """Look up live calls we know the provider's id of: one list-calls for many when it
        can, get-call for the rest (and for answered calls, whose transcript only get-call
        has). False when the budget ran out."""
        records: dict[str, ProviderCall] = {}
        if len(checks) >= self.settings.list_from:
            records = await self._list(checks)
        for check in checks:
            record = records.get(str(check.provider_call_id))
            if record is not None and not (record.terminal and record.answered):
                self._count("list-calls", "found")
                finding: Finding | None = Finding(endpoint="list-calls", record=record)
            else:
                finding = await self._ask("get-call", str(check.provider_call_id))
            if finding is None:
                return False
            await self._apply(check, finding)
            del pending[check.id]
        return True

    async def _list(self, checks: Sequence[Attempt]) -> dict[str, ProviderCall]:
        """The records of these calls from list-calls pages over the window they were placed
        in (a few pages at most; whatever is not found is asked for one by one)."""
        wanted = {str(c.provider_call_id) for c in checks}
        first = min(float(c.placed_at or c.created_at) for c in checks)
        skew = timedelta(seconds=self.settings.skew)
        start = datetime.fromtimestamp(first, UTC) - skew
        until = datetime.fromtimestamp(self.store.clock(), UTC) + skew
        found: dict[str, ProviderCall] = {}
        pages = self.magpipe.list_window(start, until)
        try:
            for _ in range(max(2, len(wanted) // 50 + 2)):
                if not await self._spend():
                    break
                page = await anext(pages, None)
                if page is None:
                    break
                found.update({r.id: r for r in page.calls if r.id in wanted})
                if not page.has_more or not wanted - found.keys():
                    break
        except exceptions.MagpipeError as exc:
            await self._failed("list-calls", exc)
        return found


def _could_be(record: ProviderCall, check: Attempt) -> bool:
    """Whether a record of list-calls could be this attempt's placement."""
    return (
        record.to_number == check.to_number
        and record.from_number in (None, check.from_number)
        and record.direction in (None, "outbound")
    )
