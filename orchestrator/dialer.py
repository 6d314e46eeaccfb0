"""The dialer: claims queued attempts from the store and places them through the client.

Pacing is ``max_live_calls`` and ``calls_per_second`` (a token bucket), both checked by the
claim in the store, so they hold for every daemon on the database together. What a failed placement allows is decided by its error's ``retry``:
SAFE goes back to the queue, POINTLESS ends the call as ``call.rejected``, UNSAFE (ambiguous)
is never resent and waits for a webhook or the watchdog.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from orchestrator import bus, client, exceptions
from orchestrator.model import CORRELATION_KEY, Event
from orchestrator.store import Claim, Pacing, Store, Throttled

log = structlog.get_logger(__name__)

Publish = Callable[[Iterable[Event]], None]


@dataclass(frozen=True, kw_only=True)
class DialerSettings:
    """What the dialer needs from the config."""

    max_live_calls: int
    calls_per_second: float
    max_call_duration: float
    webhook_base: str
    agent_id: str | None = None
    unavailable_backoff: float = 5.0
    burst: float = 1.0
    lease: float = 30.0


class Dialer:
    """Claims attempts and places them, one task per placement."""

    poll = 1.0

    def __init__(
        self,
        store: Store,
        magpipe: client.MagpipeClient,
        settings: DialerSettings,
        *,
        owner: str,
        publish: Publish,
    ) -> None:
        self.store = store
        self.magpipe = magpipe
        self.settings = settings
        self.owner = owner
        self.publish = publish
        self.wake = asyncio.Event()
        self.pacing = Pacing(rate=settings.calls_per_second, burst=settings.burst)
        self.last_error: exceptions.MagpipeError | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
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
                try:
                    claim = await self.store.claim_attempt(
                        self.owner,
                        max_live=self.settings.max_live_calls,
                        # The heartbeat extends this while the placement runs.
                        lease=self.settings.lease,
                        watchdog_after=self.settings.max_call_duration,
                        pacing=self.pacing,
                    )
                except exceptions.StoreError as exc:
                    # A database hiccup is not a crash: the claim rolled back; try again.
                    log.error("dialer.store_failed", error=str(exc))
                    await bus.wait_any(self._stopping, within=self.poll)
                    continue
                if claim is None:
                    await self._idle()
                    continue
                if isinstance(claim, Throttled):
                    await bus.wait_any(self._stopping, within=claim.wait)
                    continue
                if self._stopping.is_set():
                    # Shutdown began while the claim was under way: nothing was sent, so the
                    # attempt goes back to the queue instead of starting after SIGTERM.
                    await self.store.requeue(claim.attempt_id, None, retry_at=self.store.clock())
                    break
                self.placing.add(claim.attempt_id)
                task = asyncio.create_task(self._place(claim), name=f"place:{claim.attempt_id}")
                self._inflight.add(task)
                task.add_done_callback(self._done)
        finally:
            self._stopped.set()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("dialer.placement_crashed", error=repr(task.exception()))

    async def _idle(self) -> None:
        await bus.wait_any(self.wake, self._stopping, within=self.poll)

    def request(self, claim: Claim) -> client.CallRequest:
        """The provider request for a claimed attempt."""
        call, attempt = claim.call, claim.attempt
        metadata = {**json.loads(call["metadata"]), CORRELATION_KEY: attempt["id"]}
        return client.CallRequest(
            to=call["to_number"],
            from_=call["from_number"],
            agent_id=call["agent_id"] or self.settings.agent_id,
            metadata=metadata,
            webhook_url=f"{self.settings.webhook_base}/{attempt['webhook_token']}",
            purpose=call["purpose"],
            goal=call["goal"],
            template_id=call["template_id"],
        )

    async def _place(self, claim: Claim) -> None:
        try:
            await self._place_once(claim)
        finally:
            self.placing.discard(claim.attempt_id)

    async def _place_once(self, claim: Claim) -> None:
        attempt_id = claim.attempt_id
        bound = log.bind(call_id=claim.call["id"], attempt=claim.attempt["number"])
        events: list[Event] = []
        try:
            placed = await self.magpipe.place_call(self.request(claim))
        except exceptions.InputError as exc:
            events = await self.store.refused(attempt_id, exc)
            bound.warning("dialer.invalid", code=exc.code, error=exc.message)
        except exceptions.MagpipeError as exc:
            self.last_error = exc
            if exc.retry is exceptions.Retry.POINTLESS:
                events = await self.store.refused(attempt_id, exc)
                bound.warning("dialer.rejected", code=exc.code, error=exc.message)
            elif exc.retry is exceptions.Retry.SAFE:
                wait = (
                    exc.retry_after
                    if exc.retry_after is not None
                    else self.settings.unavailable_backoff
                )
                if isinstance(exc, exceptions.RateLimited):
                    await self.store.pause_dialing(self.store.clock() + wait)
                if await self.store.requeue(attempt_id, exc, retry_at=self.store.clock() + wait):
                    bound.info("dialer.requeued", code=exc.code, retry_in=wait)
                    self.wake.set()
                else:  # the sweeper took it for abandoned meanwhile: never resent
                    bound.warning("dialer.not_requeued", code=exc.code)
            else:
                await self.store.ambiguous(attempt_id, exc)
                bound.warning("dialer.ambiguous", code=exc.code, error=exc.message)
        else:
            self.last_error = None
            events = await self.store.placed(
                attempt_id, provider_call_id=placed.call_id, provider_status=placed.status
            )
            bound.info(
                "dialer.placed", provider_call_id=placed.call_id, provider_status=placed.status
            )
        self.publish(events)

    async def stop(self, deadline: float) -> None:
        """Stop claiming; let placements in flight finish until ``deadline`` (monotonic).

        The claim loop is waited for first, so no placement can start after this returns. A
        placement cut off here is left ``dialing``; ``release`` marks it ambiguous, so it is
        never sent twice.
        """
        self._stopping.set()
        await bus.wait_any(self._stopped, within=max(0.0, deadline - time.monotonic()))
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=max(0.0, deadline - time.monotonic()))
        for task in self._inflight:
            task.cancel()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=1.0)
