"""Delivery workers: one per route, each claims its route's deliveries from the store's outbox
with a lease and runs the handler, within its instance's concurrency, timeout and breaker.

A raising or hanging handler delays nobody else; a delivery that fails is retried on its
policy's schedule and dead-lettered after the last try; a handler that answers 410 Gone is
disabled and its deliveries wait, kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import httpx
import structlog

from orchestrator import exceptions, plugin
from orchestrator.bus import EventBus, Subscription
from orchestrator.daemon.loop import ClaimLoop, wait_any
from orchestrator.metrics import Metrics
from orchestrator.store import Delivery, Store, actions

log = structlog.get_logger(__name__)

#: A worker claims up to this many times its handler's concurrency per turn at the store.
CLAIM_AHEAD = 4

#: Seconds before a disabled (410 Gone) handler's deliveries are due again (they wait, kept).
GONE_RETRY = 60.0


def workers(
    bus: EventBus,
    store: Store,
    owner: str,
    http: httpx.AsyncClient,
    metrics: Metrics | None = None,
) -> list[DeliveryWorker]:
    """One worker per route of ``bus``."""
    return [
        DeliveryWorker(
            store,
            sub,
            owner=owner,
            http=http,
            wake=bus.wake_flag(sub.name),
            bus=bus,
            metrics=metrics,
        )
        for sub in bus.subscriptions
    ]


class DeliveryWorker(ClaimLoop):
    """Claims one route's deliveries and runs them, within its instance's policy."""

    crash_event = "delivery.crashed"

    def __init__(
        self,
        store: Store,
        sub: Subscription,
        *,
        owner: str,
        http: httpx.AsyncClient,
        wake: asyncio.Event,
        bus: EventBus | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(wake=wake)
        self.store = store
        self.metrics = metrics
        self.sub = sub
        self.owner = owner
        self.http = http
        self.bus = bus or EventBus([sub])
        self.limit = self.bus.limits[sub.target]
        self.breaker = self.bus.breakers[sub.target]
        #: The deliveries running right now (their leases are kept alive by the heartbeat).
        self.delivering: set[str] = set()
        #: Deliveries handled and not yet recorded as done (at the worker's next turn).
        self._handled: list[Delivery] = []
        #: Deliveries claimed ahead and not tried (circuit open, handler disabled), with when
        #: they are due again: put back at the worker's next turn.
        self._returned: list[tuple[Delivery, float]] = []
        #: The delivery claimed as the half-open circuit's one trial.
        self._trial: str | None = None
        self._log = log.bind(handler=sub.target, rule=sub.name)

    async def run(self) -> None:
        """Claim and run deliveries until :meth:`stop`."""
        policy = self.sub.policy
        # The lease outlives the handler's timeout, so a hung handler is cut off before
        # another daemon could take the same delivery over (the heartbeat extends it too).
        lease = policy.timeout + 30.0
        while not self._stopping.is_set():
            self.wake.clear()
            disabled = self.sub.target in self.bus.disabled
            # Claimed ahead of the handler's concurrency (which the instance's semaphore
            # keeps): under load a turn at the store fetches several rounds of work. A disabled
            # handler claims nothing, but what was handled or put back is still recorded.
            free = (
                0
                if disabled
                else self.breaker.limit(policy.concurrency * CLAIM_AHEAD - len(self._inflight))
            )
            claimed: list[Delivery] = []
            # One turn at the store records every delivery handled since the last and claims
            # the next ones: under load a worker needs far fewer turns than deliveries.
            handled, returned = self._take_handled(), self._take_returned()
            if free > 0 or handled or returned:
                try:
                    claimed = await self._settle(
                        handled, limit=max(free, 0), lease=lease, returned=returned
                    )
                except exceptions.StoreError as exc:
                    # A database hiccup is not a crash: the turn rolled back; try again.
                    self._handled[:0] = handled
                    self._returned[:0] = returned
                    self._log.error("delivery.store_failed", error=str(exc))
                    await self._pause(self.poll)
                    continue
                if claimed and self.breaker.state == "half_open":
                    self._trial = claimed[0].id  # the one trial (limit() let one through)
                    self.breaker.claimed(1)
                for delivery in claimed:
                    self.delivering.add(delivery.id)
                    self._spawn(
                        self._deliver(delivery), name=f"deliver:{self.sub.name}:{delivery.id}"
                    )
            if disabled:
                await self._idle()
                continue
            if claimed and len(claimed) == free:
                continue
            if free == 0 and self.breaker.state != "closed":
                # Open: wait out the cooldown. Half open: wait for the trial to end (it wakes us).
                await wait_any(self.wake, self._stopping, within=max(0.05, self.breaker.wait()))
                continue
            await self._idle()

    async def run_due(self, *, limit: int = 100) -> int:
        """One turn, start to end: claim up to ``limit`` deliveries due now, run them one after
        another and record every outcome; how many ran. For tests and one-shot tools (the
        daemon uses :meth:`run`)."""
        lease = self.sub.policy.timeout + 30.0
        claimed = await self._settle(self._take_handled(), limit=limit, lease=lease)
        for delivery in claimed:
            self.delivering.add(delivery.id)
            await self._deliver(delivery)
        await self._settle(
            self._take_handled(), limit=0, lease=lease, returned=self._take_returned()
        )
        return len(claimed)

    def _take_handled(self) -> list[Delivery]:
        handled, self._handled = self._handled, []
        return handled

    def _take_returned(self) -> list[tuple[Delivery, float]]:
        returned, self._returned = self._returned, []
        return returned

    async def _settle(
        self,
        handled: list[Delivery],
        *,
        limit: int,
        lease: float,
        returned: Sequence[tuple[Delivery, float]] = (),
    ) -> list[Delivery]:
        claimed, lost = await self.store.settle_and_claim(
            self.sub.name, self.owner, done=handled, limit=limit, lease=lease, returned=returned
        )
        for delivery in handled + [d for d, _ in returned]:
            self.delivering.discard(delivery.id)
        for delivery_id in lost:
            self._log.warning("delivery.lease_lost", delivery_id=delivery_id)
        return claimed

    def _context(self, delivery: Delivery, options: plugin.Options) -> plugin.Context:
        event = delivery.event
        target = self.sub.target
        return plugin.Context(
            handler=target,
            rule=self.sub.name,
            delivery_id=delivery.id,
            attempt=delivery.tries,
            options=options,
            log=self._log.bind(call_id=event.call.id, event_id=event.id, event_type=event.type),
            http=self.http,
            calls=actions.StoreCallActions(
                self.store, event, delivery_id=delivery.id, handler=target
            ),
            kv=actions.StoreKeyValue(self.store, target),
            emit=actions.StoreEmitter(self.store, event, delivery_id=delivery.id, handler=target),
        )

    async def _deliver(self, delivery: Delivery) -> None:
        pending = False
        try:
            pending = await self._deliver_once(delivery)
        finally:
            if not pending:  # else recorded at the worker's next turn, its lease kept till then
                self.delivering.discard(delivery.id)

    def _blocked(self, delivery: Delivery) -> float | None:
        """When a delivery claimed ahead may go out instead of now (its handler was disabled
        or its circuit opened since the claim), or None: it goes now. In the half-open state
        only the trial claimed for it goes."""
        now = self.store.clock()
        if self.sub.target in self.bus.disabled:
            return now + GONE_RETRY
        state = self.breaker.state
        if state == "closed" or (state == "half_open" and delivery.id == self._trial):
            return None
        return now + max(self.breaker.wait(), 0.05)

    async def _deliver_once(self, delivery: Delivery) -> bool:
        """Run the handler; True when the outcome is left for the worker's next turn (handled,
        or returned untried), False when it was recorded here (a failure)."""
        event = delivery.event
        bound = self._log.bind(call_id=event.call.id, event_id=event.id, event_type=event.type)
        policy = self.sub.policy
        started = time.perf_counter()
        try:
            options = self.sub.options(event)
        except Exception as exc:  # a rule's `with` that cannot render: retrying won't help
            await self._fail(delivery, bound, f"options: {exc}", permanent=True)
            return False
        async with self.limit:
            due = self._blocked(delivery)
            if due is not None:
                self._returned.append((delivery, due))
                self.wake.set()
                return True
            try:
                async with asyncio.timeout(policy.timeout):
                    await self.sub.handler.handle(event, self._context(delivery, options))
            except asyncio.CancelledError:
                raise
            except plugin.HandlerGone as exc:
                await self._gone(delivery, bound, exc)
                return False
            except Exception as exc:  # the handler's failure is the delivery's, not the daemon's
                error = (
                    f"{type(exc).__name__}: {exc}"
                    if not isinstance(exc, TimeoutError)
                    else f"timed out after {policy.timeout:g}s"
                )
                await self._fail(
                    delivery,
                    bound,
                    error,
                    retry_after=getattr(exc, "retry_after", None),
                    permanent=bool(getattr(exc, "permanent", False)),
                )
                return False
        self.breaker.success()
        if self.metrics is not None:
            self.metrics.handler_latency.labels(self.sub.target).observe(
                time.perf_counter() - started
            )
        self._handled.append(delivery)
        self.wake.set()  # the worker's next turn records it
        bound.debug("delivery.done", seconds=round(time.perf_counter() - started, 4))
        return True

    async def _fail(
        self,
        delivery: Delivery,
        bound: structlog.typing.FilteringBoundLogger,
        error: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        policy = self.sub.policy
        if self.metrics is not None:
            dead = permanent or delivery.tries >= policy.max_attempts
            self.metrics.handler_failures.labels(self.sub.target, "dead" if dead else "retry").inc()
        if self.breaker.failure():
            bound.warning("handler.circuit_open", cooldown=self.breaker.cooldown)
        if permanent or delivery.tries >= policy.max_attempts:
            bound.error("delivery.dead", tries=delivery.tries, error=error, permanent=permanent)
            await self.store.finish_delivery(
                delivery, self.owner, error=error, exhausted={"handler": self.sub.target}
            )
            return
        delay = policy.delay(delivery.tries, retry_after)
        bound.warning(
            "delivery.failed", tries=delivery.tries, error=error, retry_in=round(delay, 3)
        )
        await self.store.finish_delivery(
            delivery, self.owner, error=error, retry_at=self.store.clock() + delay
        )

    async def _gone(
        self,
        delivery: Delivery,
        bound: structlog.typing.FilteringBoundLogger,
        exc: plugin.HandlerGone,
    ) -> None:
        """410 Gone: disable the instance (its deliveries wait, nothing is lost) and say so."""
        target = self.sub.target
        reason = f"{exc.message}"
        if self.metrics is not None:
            self.metrics.handler_failures.labels(target, "gone").inc()
        first = target not in self.bus.disabled
        self.bus.disabled[target] = reason
        bound.error("handler.disabled", reason=reason)
        await self.store.finish_delivery(
            delivery, self.owner, error=reason, retry_at=self.store.clock() + GONE_RETRY
        )
        if first:
            await self.store.emit(
                delivery.event,
                "handler.disabled",
                key=f"{delivery.id}:handler.disabled",
                data={"handler": target, "rule": self.sub.name, "reason": reason},
            )

    async def stop(self, deadline: float) -> None:
        """Stop claiming; give in-flight deliveries until ``deadline`` (monotonic), then cancel
        them (their leases are released and they run again later)."""
        self._stopping.set()
        await self._drain(deadline)
        handled, returned = self._take_handled(), self._take_returned()
        if handled or returned:
            try:
                await self._settle(handled, limit=0, lease=0.0, returned=returned)
            except exceptions.StoreError as exc:  # their leases lapse: they run again later
                self._log.error("delivery.store_failed", error=str(exc))
