"""The event bus: routes durable events to subscribed handlers and runs their deliveries.

Routing happens inside the transaction that writes an event (the store calls :meth:`route`),
so each (event, handler) pair is an outbox row before anyone is told about it. Publishing only
wakes the workers; they claim deliveries from the store with leases. Each handler has its own
worker, concurrency limit and timeout, so a raising or hanging handler delays nobody else.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httpx
import structlog

from orchestrator import plugin
from orchestrator.model import Event, matches
from orchestrator.store import Delivery, Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class DeliveryPolicy:
    """How one handler's deliveries run: in parallel up to ``concurrency``, each within
    ``timeout``, retried with exponential backoff and jitter, dead after ``max_attempts``."""

    concurrency: int = 8
    timeout: float = 30.0
    max_attempts: int = 10
    backoff: float = 1.0
    max_backoff: float = 3600.0
    jitter: float = 0.5

    def delay(self, tries: int, retry_after: float | None = None) -> float:
        """Seconds before try ``tries + 1``: exponential, jittered, never below Retry-After."""
        base = min(self.max_backoff, self.backoff * 2 ** max(0, tries - 1))
        spread = base * self.jitter
        delay = base + random.uniform(-spread, spread)
        return float(max(delay, retry_after or 0.0))


@dataclass(frozen=True, kw_only=True)
class Subscription:
    """A named handler and the event type patterns it receives."""

    name: str
    handler: plugin.Handler
    patterns: tuple[str, ...]
    policy: DeliveryPolicy = DeliveryPolicy()


class EventBus:
    """Pattern subscriptions over the store's outbox."""

    def __init__(self, subscriptions: Iterable[Subscription] = ()) -> None:
        self._subs: dict[str, Subscription] = {}
        self._wake: dict[str, asyncio.Event] = {}
        for sub in subscriptions:
            self.subscribe(sub)

    def subscribe(self, sub: Subscription) -> None:
        """Add a handler; it receives events of matching types written from now on."""
        self._subs[sub.name] = sub
        self._wake[sub.name] = asyncio.Event()

    @property
    def subscriptions(self) -> Sequence[Subscription]:
        return list(self._subs.values())

    def route(self, event: Event) -> list[str]:
        """The handlers subscribed to ``event`` (used by the store inside its transaction)."""
        return [
            s.name for s in self._subs.values() if any(matches(p, event.type) for p in s.patterns)
        ]

    def publish(self, events: Iterable[Event]) -> None:
        """Wake the workers of every handler the (already durable) events were routed to."""
        for event in events:
            for name in self.route(event):
                self._wake[name].set()

    def wake_all(self) -> None:
        """Wake every worker (e.g. after another daemon's notification)."""
        for flag in self._wake.values():
            flag.set()

    def workers(self, store: Store, owner: str, http: httpx.AsyncClient) -> list[DeliveryWorker]:
        """One worker per subscription."""
        return [
            DeliveryWorker(store, sub, owner=owner, http=http, wake=self._wake[sub.name])
            for sub in self._subs.values()
        ]


class DeliveryWorker:
    """Claims one handler's deliveries and runs them, within its policy."""

    poll = 1.0

    def __init__(
        self,
        store: Store,
        sub: Subscription,
        *,
        owner: str,
        http: httpx.AsyncClient,
        wake: asyncio.Event,
    ) -> None:
        self.store = store
        self.sub = sub
        self.owner = owner
        self.http = http
        self.wake = wake
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._log = log.bind(handler=sub.name)

    async def run(self) -> None:
        """Claim and run deliveries until :meth:`stop`."""
        policy = self.sub.policy
        # The lease outlives the handler's timeout, so a hung handler is cut off before
        # another daemon could take the same delivery over.
        lease = policy.timeout + 30.0
        while not self._stopping.is_set():
            self.wake.clear()
            free = policy.concurrency - len(self._inflight)
            claimed: list[Delivery] = []
            if free > 0:
                claimed = await self.store.claim_deliveries(
                    self.sub.name, self.owner, limit=free, lease=lease
                )
                for delivery in claimed:
                    task = asyncio.create_task(
                        self._deliver(delivery), name=f"deliver:{self.sub.name}:{delivery.id}"
                    )
                    self._inflight.add(task)
                    task.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                continue
            await self._idle()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self.wake.set()  # a finished delivery may unblock the next one of the same call
        if not task.cancelled() and task.exception() is not None:
            self._log.error("delivery.crashed", error=repr(task.exception()))

    async def _idle(self) -> None:
        await wait_any(self.wake, self._stopping, within=self.poll)

    async def _deliver(self, delivery: Delivery) -> None:
        event = delivery.event
        bound = self._log.bind(call_id=event.call.id, event_id=event.id, event_type=event.type)
        ctx = plugin.Context(
            handler=self.sub.name,
            delivery_id=delivery.id,
            attempt=delivery.tries,
            log=bound,
            http=self.http,
        )
        policy = self.sub.policy
        started = time.perf_counter()
        try:
            async with asyncio.timeout(policy.timeout):
                await self.sub.handler.handle(event, ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the handler's failure is the delivery's, never the daemon's
            error = (
                f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, TimeoutError)
                else (f"timed out after {policy.timeout:g}s")
            )
            retry_after = getattr(exc, "retry_after", None)
            if delivery.tries >= policy.max_attempts:
                bound.error("delivery.dead", tries=delivery.tries, error=error)
                await self.store.finish_delivery(delivery, self.owner, error=error)
            else:
                delay = policy.delay(delivery.tries, retry_after)
                bound.warning(
                    "delivery.failed", tries=delivery.tries, error=error, retry_in=round(delay, 3)
                )
                await self.store.finish_delivery(
                    delivery, self.owner, error=error, retry_at=self.store.clock() + delay
                )
            return
        if not await self.store.finish_delivery(delivery, self.owner):
            bound.warning("delivery.lease_lost")
        bound.debug("delivery.done", seconds=round(time.perf_counter() - started, 4))

    async def stop(self, deadline: float) -> None:
        """Stop claiming; give in-flight deliveries until ``deadline`` (monotonic), then cancel
        them (their leases are released and they run again later)."""
        self._stopping.set()
        pending = set(self._inflight)
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        for task in self._inflight:
            task.cancel()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=1.0)


async def wait_any(*flags: asyncio.Event, within: float) -> None:
    """Return when any of ``flags`` is set or ``within`` seconds have passed."""
    waiters = [asyncio.ensure_future(flag.wait()) for flag in flags]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
