"""Due-time work: fires the watchdog timers and rescues placements abandoned by dead daemons."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

import structlog

from orchestrator.model import Event
from orchestrator.store import Store

log = structlog.get_logger(__name__)


class Timekeeper:
    """Fires due timers from the store, one transaction each; sweeps expired placement leases."""

    def __init__(
        self,
        store: Store,
        *,
        publish: Callable[[Iterable[Event]], None],
        poll: float = 1.0,
        sweep_every: float = 5.0,
    ) -> None:
        self.store = store
        self.publish = publish
        self.poll = poll
        self.sweep_every = sweep_every
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Fire due timers until :meth:`stop`."""
        since_sweep = self.sweep_every
        while not self._stopping.is_set():
            if since_sweep >= self.sweep_every:
                rescued = await self.store.rescue()
                if rescued:
                    log.warning("timers.rescued_abandoned_placements", count=rescued)
                since_sweep = 0.0
            fired = 0
            # One timer per transaction until none is due (bounded so the sweep still runs).
            while fired < 100 and not self._stopping.is_set():
                events = await self.store.fire_next()
                if events is None:
                    break
                fired += 1
                for event in events:
                    log.warning(
                        "timers.timed_out",
                        call_id=event.call.id,
                        code=(event.error or {}).get("code"),
                    )
                self.publish(events)
            if fired:
                continue
            wait = self.poll
            upcoming = await self.store.next_timer()
            if upcoming is not None:
                wait = max(0.01, min(self.poll, upcoming - self.store.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=wait)
            since_sweep += wait

    def stop(self) -> None:
        """Stop after the timer being fired, if any."""
        self._stopping.set()
