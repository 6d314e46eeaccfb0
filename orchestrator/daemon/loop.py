"""What the daemon's claim loops share: the dialer and every delivery worker.

Each claims work from the store with a lease, runs each piece as its own named task, sleeps
until woken (or for :attr:`ClaimLoop.poll` seconds, for work another daemon committed), and on
stop drains what is in flight until a deadline, then cancels the rest. The work itself (what is
claimed, what a piece does, what happens to a piece cut off) is each loop's own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


async def wait_any(*flags: asyncio.Event, within: float) -> None:
    """Return when any of ``flags`` is set or ``within`` seconds have passed."""
    waiters = [asyncio.ensure_future(flag.wait()) for flag in flags]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class ClaimLoop:
    """The base of a loop that claims work and runs each piece as a task."""

    #: Seconds between looks at the store when nobody wakes the loop.
    poll = 1.0
    #: The event name a piece that raised is logged under.
    crash_event = "claim_loop.task_crashed"

    def __init__(self, *, wake: asyncio.Event | None = None) -> None:
        #: Set by whoever committed work for this loop (or freed room for it).
        self.wake = wake if wake is not None else asyncio.Event()
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` began: nothing new is claimed."""
        return self._stopping.is_set()

    def _spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run one claimed piece as its own task (a crash is logged, never lost)."""
        task = asyncio.create_task(coro, name=name)
        self._inflight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self.wake.set()  # room for the next piece, which may have waited on this one
        if not task.cancelled() and task.exception() is not None:
            log.error(self.crash_event, task=task.get_name(), error=repr(task.exception()))

    async def _idle(self) -> None:
        """Sleep until woken, stopped or the poll interval passed."""
        await wait_any(self.wake, self._stopping, within=self.poll)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless stopped first (a wake does not cut it short)."""
        await wait_any(self._stopping, within=seconds)

    async def _drain(self, deadline: float) -> None:
        """Let the pieces in flight finish until ``deadline`` (monotonic), then cancel them."""
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=max(0.0, deadline - time.monotonic()))
        for task in self._inflight:
            task.cancel()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=1.0)
