"""The dialer: claims queued attempts from the store and places them through the client.

Pacing is ``max_live_calls`` and ``calls_per_second`` (a token bucket), both checked by the
claim in the store, so they hold for every daemon on the database together. What a failed placement allows is decided by its error's ``retry``:
SAFE goes back to the queue, POINTLESS ends the call as ``call.rejected``, UNSAFE (ambiguous)
is never resent and waits for a webhook or the watchdog.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from orchestrator import dnc, exceptions, windows
from orchestrator.connectors.protocol import Row
from orchestrator.daemon.loop import ClaimLoop, wait_any
from orchestrator.metrics import Metrics
from orchestrator.model import CORRELATION_KEY, Event
from orchestrator.provider import client
from orchestrator.store import Claim, Pacing, Store, campaigns
from orchestrator.store.claims import Admit, ClaimRules, Defer, Refuse, Screening
from orchestrator.store.rows import Attempt, Call

log = structlog.get_logger(__name__)

Publish = Callable[[Iterable[Event]], None]


@dataclass(frozen=True, kw_only=True)
class DialerParams:
    """What the dialer is handed (built from the config by :mod:`orchestrator.daemon.settings`)."""

    max_live_calls: int
    calls_per_second: float
    max_call_duration: float
    webhook_base: str
    agent_id: str | None = None
    unavailable_backoff: float = 5.0
    burst: float | None = None  # default: a tenth of a second's worth, at least 1
    lease: float = 30.0
    max_live_per_caller_id: int | None = None
    max_attempts_per_person_per_day: int | None = None
    window: windows.CallingWindow | None = None  # for calls whose campaign sets none
    default_time_zone: str | None = None  # for numbers whose zone phonenumbers cannot tell
    do_not_call: dnc.DoNotCall | None = None
    # Placements in flight at once: more would only queue on the HTTP client's connection
    # pool (and stall the event loop scanning it); the rest wait in the store, unclaimed.
    max_placing: int = 20
    balance_probe: float = 60.0  # first wait after INSUFFICIENT_BALANCE (doubles, to 10 min)
    unauthorized_probe: float = 300.0  # wait after UNAUTHORIZED before trying once more
    # Certain placement failures (carrier overrun) of one call before it ends as failed.
    max_placement_failures: int = 5
    placement_failure_backoff: float = 5.0  # doubles with each failure in a row


class Dialer(ClaimLoop):
    """Claims attempts and places them, one task per placement."""

    crash_event = "dialer.placement_crashed"

    def __init__(
        self,
        store: Store,
        magpipe: client.MagpipeClient,
        settings: DialerParams,
        *,
        owner: str,
        publish: Publish,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.metrics = metrics
        self.magpipe = magpipe
        self.settings = settings
        self.owner = owner
        self.publish = publish
        burst = settings.burst or max(1.0, settings.calls_per_second / 10)
        self.pacing = Pacing(rate=settings.calls_per_second, burst=burst)
        self.rules = ClaimRules(
            max_live=settings.max_live_calls,
            # The heartbeat extends this while the placement runs.
            lease=settings.lease,
            watchdog_after=settings.max_call_duration,
            pacing=self.pacing,
            per_from=settings.max_live_per_caller_id,
            daily_cap=settings.max_attempts_per_person_per_day,
            screen=self.screen,
        )
        self._balance_wait = settings.balance_probe
        self.last_error: exceptions.MagpipeError | None = None
        self._stopped = asyncio.Event()
        #: The attempts being placed right now (their leases are kept alive by the heartbeat).
        self.placing: set[str] = set()

    @property
    def usable(self) -> bool:
        """False after the provider refused our token (readiness fails until it accepts)."""
        return not isinstance(self.last_error, exceptions.Unauthorized)

    async def run(self) -> None:
        """Claim and place until :meth:`stop`."""
        try:
            while not self._stopping.is_set():
                self.wake.clear()
                room = self.settings.max_placing - len(self._inflight)
                if room <= 0:
                    await self._idle()  # a finished placement wakes us
                    continue
                try:
                    batch = await self.store.claim_batch(
                        self.owner, self.rules, limit=max(1, min(int(self.pacing.burst), room))
                    )
                except exceptions.StoreError as exc:
                    # A database hiccup is not a crash: the claim rolled back; try again.
                    log.error("dialer.store_failed", error=str(exc))
                    await self._pause(self.poll)
                    continue
                self.publish(batch.events)  # refusals (do-not-call...) decided at the claim
                if not batch.claims:
                    if batch.wait is not None:
                        await self._pause(batch.wait)
                    else:
                        await self._idle()
                    continue
                if self._stopping.is_set():
                    # Shutdown began while the claim was under way: nothing was sent, so the
                    # attempts go back to the queue instead of starting after SIGTERM.
                    for claim in batch.claims:
                        await self.store.requeue(
                            claim.attempt_id, None, retry_at=self.store.clock()
                        )
                    break
                for claim in batch.claims:
                    self.placing.add(claim.attempt_id)
                    self._spawn(self._place(claim), name=f"place:{claim.attempt_id}")
        finally:
            self._stopped.set()

    def screen(self, call: Call, attempt: Attempt, campaign: Row | None, now: float) -> Screening:
        """Right before a claim: the do-not-call list, then the calling window in the
        recipient's local time (the campaign's, else the configured one)."""
        to = attempt.to_number
        if self.settings.do_not_call is not None and to in self.settings.do_not_call:
            return Refuse(code="DO_NOT_CALL", message=f"{to} is on the do-not-call list")
        window = self.settings.window
        if campaign is not None:
            window = campaigns.settings_of(campaign["settings"]).window or window
        if window is None:
            return Admit()
        try:
            zones = (
                window.zones_for(to)
                if window.time_zone
                else windows.zones_for(
                    to, default=window.fallback_time_zone or self.settings.default_time_zone
                )
            )
        except exceptions.InputError as exc:
            return Refuse(code=exc.code, message=exc.message)
        at = datetime.fromtimestamp(now, UTC)
        if windows.is_open(window, zones, at):
            return Admit()
        opens = windows.next_open(window, zones, at)
        if opens is None:  # not within the next week: look again in a day
            return Defer(until=now + 86400.0, reason="calling window closed for a week")
        return Defer(until=opens.timestamp(), reason="calling window closed")

    def request(self, claim: Claim) -> client.CallRequest:
        """The provider request for a claimed attempt."""
        call, attempt = claim.call, claim.attempt
        metadata = {**call.metadata, CORRELATION_KEY: attempt.id}
        return client.CallRequest(
            to=call.to_number,
            from_=call.from_number,
            agent_id=call.agent_id or self.settings.agent_id,
            metadata=metadata,
            webhook_url=f"{self.settings.webhook_base}/{attempt.webhook_token}",
            purpose=call.purpose,
            goal=call.goal,
            template_id=call.template_id,
        )

    async def _place(self, claim: Claim) -> None:
        try:
            await self._place_once(claim)
        finally:
            self.placing.discard(claim.attempt_id)

    async def _place_once(self, claim: Claim) -> None:
        attempt_id = claim.attempt_id
        bound = log.bind(call_id=claim.call.id, attempt=claim.attempt.number)
        events: list[Event] = []
        started = time.perf_counter()
        try:
            placed = await self.magpipe.place_call(self.request(claim))
        except exceptions.InputError as exc:
            self._observe(exc.code, started)
            events = await self.store.refused(attempt_id, exc)
            bound.warning("dialer.invalid", code=exc.code, error=exc.message)
        except exceptions.MagpipeError as exc:
            self._observe(exc.code, started)
            self.last_error = exc
            events = await self._refused(claim, exc, bound)
        else:
            self._observe("placed", started)
            self.last_error = None
            self._balance_wait = self.settings.balance_probe
            events = await self.store.placed(
                attempt_id,
                provider_call_id=placed.call_id,
                provider_status=placed.status,
                agent_call_sid=placed.agent_call_sid,
            )
            bound.info(
                "dialer.placed", provider_call_id=placed.call_id, provider_status=placed.status
            )
        self.publish(events)
        until = self.magpipe.exhausted_until
        if until is not None and until > self.store.clock():
            # The provider says the key's budget is spent: every daemon waits until it frees.
            await self.store.pause_dialing(until, reason="rate_limit_exhausted")
            bound.warning("dialer.budget_exhausted", until=until)

    def _observe(self, outcome: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.placements.labels(outcome).inc()
            self.metrics.provider_latency.labels(outcome).observe(time.perf_counter() - started)

    async def _refused(
        self,
        claim: Claim,
        exc: exceptions.MagpipeError,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> list[Event]:
        """What a provider refusal does: back-pressure for the whole fleet (429, balance,
        credentials), a paused campaign (its agent or caller id), or one rejected call. Only a
        refusal of this call alone ends it; the others put it back in the queue."""
        attempt_id = claim.attempt_id
        now = self.store.clock()
        campaign = claim.attempt.campaign
        if isinstance(exc, exceptions.InsufficientBalance | exceptions.Unauthorized):
            balance = isinstance(exc, exceptions.InsufficientBalance)
            wait = self._balance_wait if balance else self.settings.unauthorized_probe
            if balance:
                self._balance_wait = min(self._balance_wait * 2, 600.0)
            kind = "account.balance_low" if balance else "account.unauthorized"
            await self.store.requeue(attempt_id, exc, retry_at=now)
            await self.store.pause_dialing(now + wait, reason=exc.code.lower())
            bound.error("dialer.paused", code=exc.code, probe_in=wait)
            event = await self.store.emit_for(
                claim.call.id, int(claim.attempt.number), kind,
                key=f"{attempt_id}:{kind}", error={"code": exc.code, "message": exc.message},
                data={"probe_in": wait},
            )  # fmt: skip
            return [event] if event else []
        if isinstance(exc, exceptions.AgentNotFound | exceptions.NumberNotOwned) and campaign:
            await self.store.requeue(attempt_id, exc, retry_at=now)
            await self.store.pause_campaign(str(campaign), reason=f"{exc.code}: {exc.message}")
            bound.error("dialer.campaign_paused", campaign=campaign, code=exc.code)
            event = await self.store.emit_for(
                claim.call.id, int(claim.attempt.number), "campaign.paused",
                key=f"{attempt_id}:campaign.paused",
                error={"code": exc.code, "message": exc.message}, data={"campaign": campaign},
            )  # fmt: skip
            return [event] if event else []
        if exc.retry is exceptions.Retry.POINTLESS:
            bound.warning("dialer.rejected", code=exc.code, error=exc.message)
            return await self.store.refused(attempt_id, exc)
        if exc.retry is exceptions.Retry.SAFE:
            wait = (
                exc.retry_after
                if exc.retry_after is not None
                else self.settings.unavailable_backoff
            )
            if isinstance(exc, exceptions.PlacementFailed):
                # The provider's carrier is overrun (nobody was rung): slow the fleet down, and
                # try this call again later, a bounded number of times.
                await self.store.pause_dialing(now, reason="placement_failed", slow_down=True)
                retry_in, events = await self.store.placement_failed(
                    attempt_id, exc, backoff=self.settings.placement_failure_backoff,
                    max_failures=self.settings.max_placement_failures,
                )  # fmt: skip
                if retry_in is not None:
                    bound.info("dialer.requeued", code=exc.code, retry_in=retry_in)
                elif events:
                    bound.warning("dialer.placement_failed", code=exc.code, error=exc.message)
                return events
            if isinstance(exc, exceptions.RateLimited):
                await self.store.pause_dialing(now + wait, slow_down=True)
            if await self.store.requeue(attempt_id, exc, retry_at=now + wait):
                bound.info("dialer.requeued", code=exc.code, retry_in=wait)
                self.wake.set()
            else:  # the sweeper took it for abandoned meanwhile: never resent
                bound.warning("dialer.not_requeued", code=exc.code)
            return []
        await self.store.ambiguous(attempt_id, exc)
        bound.warning("dialer.ambiguous", code=exc.code, error=exc.message)
        return []

    async def stop(self, deadline: float) -> None:
        """Stop claiming; let placements in flight finish until ``deadline`` (monotonic).

        The claim loop is waited for first, so no placement can start after this returns. A
        placement cut off here is left ``dialing``; ``release`` marks it ambiguous, so it is
        never sent twice.
        """
        self._stopping.set()
        await wait_any(self._stopped, within=max(0.0, deadline - time.monotonic()))
        await self._drain(deadline)
