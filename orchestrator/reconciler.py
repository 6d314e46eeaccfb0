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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from orchestrator import bus, exceptions
from orchestrator.checks import ENDING_CANCELED, ENDING_WATCHDOG, Finding
from orchestrator.client import MagpipeClient, ProviderCall
from orchestrator.connector import Row
from orchestrator.dialing import Pacing
from orchestrator.metrics import Metrics
from orchestrator.model import CORRELATION_KEY, LEGACY_CORRELATION_KEY, CallStatus, Event
from orchestrator.store import Store

log = structlog.get_logger(__name__)

Publish = Callable[[Iterable[Event]], None]


@dataclass(frozen=True, kw_only=True)
class ReconcileSettings:
    """How the reconciler spends its budget (``magpipe.reconcile``, ``dialer``)."""

    max_per_minute: int = 60
    hangup_on_timeout: bool = True
    every: float = 60.0
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
        settings: ReconcileSettings,
        *,
        publish: Publish,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.magpipe = magpipe
        self.settings = settings
        self.publish = publish
        self.metrics = metrics
        self.pacing = settings.pacing()
        self.wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._deadline = 0.0
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
                await bus.wait_any(self.wake, self._stopping, within=self.poll)

    def stop(self) -> None:
        """Stop after the look-up in hand."""
        self._stopping.set()

    async def round(self) -> int:
        """Claim the due look-ups and make them; how many were claimed."""
        checks = await self.store.claim_checks(limit=self.batch, lease=self.settings.lease)
        if not checks:
            return 0
        self._deadline = time.monotonic() + self.settings.lease / 2
        now = self.store.clock()
        pending = {c["id"]: c for c in checks}
        try:
            for check in checks:
                if not check["provider_call_id"] and not check["ambiguous"]:
                    # Still being placed: nothing to ask yet (its fate is the dialer's).
                    del pending[check["id"]]
                    if check["ending"]:
                        await self._end_in_flight(check)
                    else:
                        await self.store.schedule_check(check["id"], at=now + self._every())
            for check in [c for c in checks if c["id"] in pending and c["ending"]]:
                await self._final(check)
                del pending[check["id"]]
            for check in [c for c in checks if c["id"] in pending and not c["provider_call_id"]]:
                finding = await self._search(check)
                if finding is None:
                    break
                await self._apply(check, finding)
                del pending[check["id"]]
            follow = [c for c in checks if c["id"] in pending]
            await self._follow(follow, pending)
        finally:
            # Whatever the budget could not pay for this round is due again at once.
            for check_id in pending:
                await self.store.schedule_check(check_id, at=self.store.clock())
        return len(checks)

    def _every(self) -> float:
        return self.store.checks.every if self.store.checks is not None else self.settings.every

    # -- the budget ----------------------------------------------------------------------

    async def _spend(self) -> bool:
        """One request of the fleet's budget; False if none comes before this round's
        deadline (the rest of the round is given back)."""
        while not self._stopping.is_set():
            wait = await self.store.take_lookup(self.pacing)
            if wait is None:
                return True
            if time.monotonic() + wait > self._deadline:
                return False
            await bus.wait_any(self._stopping, within=wait)
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

    async def _apply(self, check: Row, finding: Finding) -> None:
        applied = await self.store.apply_finding(check["id"], finding)
        bound = log.bind(call_id=check["call_id"], attempt=check["number"])
        if applied.redialed and self.metrics is not None:
            self.metrics.redials.inc()
        if applied.redialed:
            bound.warning("reconciler.redial", reason="the provider has no record of it")
        elif applied.events:
            bound.info("reconciler.settled", events=[e.type for e in applied.events])
        self.publish(applied.events)
        if applied.hang_up is not None:
            await self._hang_up(applied.hang_up)

    async def _final(self, check: Row) -> None:
        """The watchdog fired (or the campaign was canceled): look up once more, then hang
        up or end it."""
        if check["provider_call_id"]:
            finding = await self._ask("get-call", str(check["provider_call_id"]))
        else:
            finding = await self._search(check)
        if finding is None:  # no budget in time: the watchdog's second firing ends it
            return
        await self._apply(check, finding)

    async def _hang_up(self, attempt: Row) -> None:
        """End at the provider a call that must end here, then here."""
        status = CallStatus.CANCELED if attempt["ending"] == ENDING_CANCELED else None
        live = attempt["provider_status"]
        if status is None and not self.settings.hangup_on_timeout:
            events = await self.store.end_attempt(
                attempt["id"], CallStatus.TIMED_OUT, "STILL_LIVE",
                f"still live at the provider ({live}) after max_call_duration; left live "
                "there (dialer.hangup_on_timeout is off)",
            )  # fmt: skip
            self.publish(events)
            return
        legs = [str(attempt["provider_call_id"])]
        if attempt["agent_call_sid"] and CallStatus.from_record(str(live)) is not (
            CallStatus.IN_PROGRESS
        ):
            legs.append(str(attempt["agent_call_sid"]))  # an unanswered call's agent leg stays up
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
        done = f"the hang-up failed ({failure})" if failure else "hung up at the provider"
        if status is CallStatus.CANCELED:
            code, message = "CAMPAIGN_CANCELED", f"its campaign was canceled: {done}"
        else:
            code = "STILL_LIVE" if failure else "HUNG_UP"
            message = f"still live at the provider ({live}) after max_call_duration: {done}"
        log.warning(
            "reconciler.hung_up", call_id=attempt["call_id"], ok=failure is None, reason=code
        )
        self.publish(
            await self.store.end_attempt(
                attempt["id"], status or CallStatus.TIMED_OUT, code, message
            )
        )

    async def _end_in_flight(self, check: Row) -> None:
        code = "NO_TERMINAL_WEBHOOK"
        message = "the placement was still under way when the call had to end"
        status = CallStatus.CANCELED if check["ending"] == ENDING_CANCELED else None
        if status is not None:
            code = "CAMPAIGN_CANCELED"
        assert check["ending"] in (ENDING_WATCHDOG, ENDING_CANCELED)
        self.publish(
            await self.store.end_attempt(check["id"], status or CallStatus.TIMED_OUT, code, message)
        )

    async def _search(self, check: Row) -> Finding | None:
        """Look for an ambiguous placement among the provider's records: by its number and
        caller id around when it was sent, then by the correlation key in each candidate's
        metadata (get-call). None when the budget ran out."""
        endpoint = "list-calls"
        sent = datetime.fromtimestamp(float(check["placed_at"] or check["created_at"]), UTC)
        skew = timedelta(seconds=self.settings.skew)
        until = datetime.fromtimestamp(self.store.clock(), UTC) + skew
        candidates: list[ProviderCall] = []
        try:
            pages = self.magpipe.list_window(sent - skew, until, phone_number=check["to_number"])
            for _ in range(10):
                if not await self._spend():
                    return None
                try:
                    page = await anext(pages)
                except StopAsyncIteration:
                    break
                candidates += [r for r in page.calls if _could_be(r, check)]
        except exceptions.MagpipeError as exc:
            await self._failed(endpoint, exc)
            return Finding(endpoint=endpoint, error=f"{exc.code}: {exc.message}"[:160])
        self._count(endpoint, "found" if candidates else "not_found")
        taken = await self.store.known_provider_ids([c.id for c in candidates])
        candidates = [c for c in candidates if c.id not in taken]
        possible: list[ProviderCall] = []
        for candidate in candidates[: self.settings.max_candidates]:
            read = await self._ask("get-call", candidate.id)
            if read is None:
                return None
            if read.error is not None:
                return Finding(endpoint=endpoint, error=read.error)
            record = read.record or candidate
            key = (record.metadata or {}).get(CORRELATION_KEY) or (record.metadata or {}).get(
                LEGACY_CORRELATION_KEY
            )
            if key == check["id"]:
                return Finding(endpoint=endpoint, record=record)
            if key is None:
                possible.append(record)  # no key to tell by: it could be ours
        if len(candidates) > self.settings.max_candidates:
            return Finding(endpoint=endpoint, candidates=len(candidates))
        if len(possible) == 1:
            return Finding(endpoint=endpoint, record=possible[0])
        if not possible:
            return Finding(endpoint=endpoint, missing=True)
        return Finding(endpoint=endpoint, candidates=len(possible))

    async def _follow(self, checks: Sequence[Row], pending: dict[str, Row]) -> None:
        """Look up live calls we know the provider's id of: one list-calls for many when it
        can, get-call for the rest (and for answered calls, whose transcript only get-call
        has)."""
        records: dict[str, ProviderCall] = {}
        if len(checks) >= self.settings.list_from:
            records = await self._list(checks)
        for check in checks:
            record = records.get(str(check["provider_call_id"]))
            if record is not None and not (record.terminal and record.answered):
                self._count("list-calls", "found")
                finding: Finding | None = Finding(endpoint="list-calls", record=record)
            else:
                finding = await self._ask("get-call", str(check["provider_call_id"]))
            if finding is None:
                return
            await self._apply(check, finding)
            del pending[check["id"]]

    async def _list(self, checks: Sequence[Row]) -> dict[str, ProviderCall]:
        """The records of these calls from list-calls pages over the window they were placed
        in (a few pages at most; whatever is not found is asked for one by one)."""
        wanted = {str(c["provider_call_id"]) for c in checks}
        first = min(float(c["placed_at"] or c["created_at"]) for c in checks)
        skew = timedelta(seconds=self.settings.skew)
        start = datetime.fromtimestamp(first, UTC) - skew
        until = datetime.fromtimestamp(self.store.clock(), UTC) + skew
        found: dict[str, ProviderCall] = {}
        pages = self.magpipe.list_window(start, until)
        try:
            for _ in range(max(2, len(wanted) // 50 + 2)):
                if not wanted - found.keys() or not await self._spend():
                    break
                try:
                    page = await anext(pages)
                except StopAsyncIteration:
                    break
                found.update({r.id: r for r in page.calls if r.id in wanted})
        except exceptions.MagpipeError as exc:
            await self._failed("list-calls", exc)
        return found


def _could_be(record: ProviderCall, check: Row) -> bool:
    """Whether a record of list-calls could be this attempt's placement."""
    return (
        record.to_number == check["to_number"]
        and record.from_number in (None, check["from_number"])
        and record.direction in (None, "outbound")
    )
