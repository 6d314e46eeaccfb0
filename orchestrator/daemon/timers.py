"""Due-time work: fires the watchdog timers, rescues placements abandoned by dead daemons and
marks finished campaigns completed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

import structlog

from orchestrator import exceptions
from orchestrator.model import Event
from orchestrator.store import Store

log = structlog.get_logger(__name__)


class Timekeeper:
    """Fires due timers from the store, one transaction each; sweeps expired placement leases
    and finished campaigns."""

    def __init__(
        self,
        store: Store,
        *,
        publish: Callable[[Iterable[Event]], None],
        poll: float = 1.0,
        sweep_every: float = 5.0,
        fired: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.publish = publish
        # Told when a watchdog fired without ending its call (its last look-up is due now).
        self.fired = fired
        self.poll = poll
        self.sweep_every = sweep_every
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Fire due timers until :meth:`stop`."""
        since_sweep = self.sweep_every
        while not self._stopping.is_set():
            try:
                fired = await self._round(since_sweep >= self.sweep_every)
            except exceptions.StoreError as exc:
                # A database hiccup (failover, a dropped connection) is not a crash: try again.
                log.error("timers.store_failed", error=str(exc))
                fired = 0
            if since_sweep >= self.sweep_every:
                since_sweep = 0.0
            if fired:
                continue
            wait = self.poll
            try:
                upcoming = await self.store.next_timer()
            except exceptions.StoreError:
                upcoming = None
            if upcoming is not None:
                wait = max(0.01, min(self.poll, upcoming - self.store.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=wait)
            since_sweep += wait

    async def _round(self, sweep: bool) -> int:
        """Sweep if it is time, then fire due timers; how many were fired."""
        if sweep:
            rescued = await self.store.rescue()
            if rescued:
                log.warning("timers.rescued_abandoned_placements", count=rescued)
            finished = await self.store.finish_campaigns()
            for event in finished:
                log.info("timers.campaign_completed", campaign=event.data.get("campaign"))
            self.publish(finished)
        fired = 0
        # One timer per transaction until none is due (bounded so the sweep still runs).
        while fired < 100 and not self._stopping.is_set():
            events = await self.store.fire_next()
            if events is None:
                break
            fired += 1
            if not events and self.fired is not None:
                self.fired()
            for event in events:
                log.warning(
                    "timers.timed_out",
                    call_id=event.call.id,
                    code=(event.error or {}).get("code"),
                )
            self.publish(events)
        return fired

    def stop(self) -> None:
        """Stop after the timer being fired, if any."""
        self._stopping.set()


class Heartbeat:
    """Keeps the leases of this daemon's work in flight alive, so leases can be short: a
    daemon that dies stops beating, and the fleet takes its work over within one lease."""

    def __init__(
        self,
        store: Store,
        *,
        owner: str,
        lease: float,
        inflight: Callable[[], tuple[Iterable[str], Iterable[str]]],
        every: float | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease
        self.inflight = inflight  # -> (attempt ids being placed, delivery ids being run)
        self.every = every if every is not None else lease / 3
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Beat every ``every`` seconds until :meth:`stop`; a failed beat is logged and retried
        (a lease outlives two missed beats)."""
        while not self._stopping.is_set():
            attempts, deliveries = self.inflight()
            try:
                await self.store.heartbeat(
                    self.owner, lease=self.lease, attempts=list(attempts),
                    deliveries=list(deliveries),
                )  # fmt: skip
            except exceptions.StoreError as exc:
                log.error("timers.heartbeat_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.every)

    def stop(self) -> None:
        """Stop beating (after the work it kept alive has finished or been released)."""
        self._stopping.set()
