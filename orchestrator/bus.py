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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from orchestrator import exceptions, plugin
from orchestrator.metrics import Metrics
from orchestrator.model import Event, matches
from orchestrator.store import Delivery, Store, actions

log = structlog.get_logger(__name__)


#: A worker claims up to this many times its handler's concurrency per turn at the store.
CLAIM_AHEAD = 4

#: Seconds before a disabled (410 Gone) handler's deliveries are due again (they wait, kept).
GONE_RETRY = 60.0

#: The default retry schedule, webhook style: seconds, then minutes, then hours.
SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)


@dataclass(frozen=True, kw_only=True)
class DeliveryPolicy:
    """How one handler instance's deliveries run: in parallel up to ``concurrency``, each
    within ``timeout``; a failed try waits ``schedule[n-1]`` (the last entry repeats), spread
    by ``jitter``, never less than the endpoint's Retry-After; dead after ``max_attempts``.
    ``breaker_threshold`` failures in a row open the circuit for ``breaker_cooldown`` (doubled
    each time it fails again, up to ``breaker_max_cooldown``)."""

    concurrency: int = 8
    timeout: float = 30.0
    max_attempts: int = len(SCHEDULE) + 1
    schedule: tuple[float, ...] = SCHEDULE
    jitter: float = 0.2
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    breaker_max_cooldown: float = 600.0

    def delay(self, tries: int, retry_after: float | None = None) -> float:
        """Seconds before try ``tries + 1``: the schedule's entry, jittered, never below
        Retry-After."""
        base = self.schedule[min(max(tries, 1), len(self.schedule)) - 1] if self.schedule else 0
        spread = base * self.jitter
        delay = base + random.uniform(-spread, spread)
        return float(max(delay, retry_after or 0.0, 0.0))


class Breaker:
    """A circuit breaker for one handler instance: it stops trying a failing endpoint and
    lets one trial delivery through after a cooldown; a success closes it again."""

    def __init__(self, policy: DeliveryPolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.clock = clock
        self.failures = 0
        self.opened_until = 0.0
        self.cooldown = policy.breaker_cooldown
        # While a trial runs, no other delivery is let through (until it ends or times out).
        self.trial_until = 0.0

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (one trial delivery allowed)."""
        if self.failures < self.policy.breaker_threshold:
            return "closed"
        return "open" if self.clock() < self.opened_until else "half_open"

    def wait(self) -> float:
        """Seconds until a delivery may be tried (0: now)."""
        state = self.state
        if state == "open":
            return self.opened_until - self.clock()
        if state == "half_open":
            return max(0.0, self.trial_until - self.clock())
        return 0.0

    def limit(self, free: int) -> int:
        """How many deliveries may be claimed now: all free slots when closed, one trial when
        half open (and none is running), none when open."""
        state = self.state
        if state == "closed":
            return free
        if state == "half_open" and self.clock() >= self.trial_until:
            return min(free, 1)
        return 0

    def claimed(self, count: int) -> None:
        """``count`` deliveries were claimed: in the half-open state, that is the trial."""
        if count and self.state == "half_open":
            self.trial_until = self.clock() + self.policy.timeout + 5.0

    def success(self) -> None:
        self.failures = 0
        self.trial_until = 0.0
        self.cooldown = self.policy.breaker_cooldown

    def failure(self) -> bool:
        """Count a failure; True if this one opened the circuit."""
        self.failures += 1
        if self.failures < self.policy.breaker_threshold:
            return False
        if self.trial_until:  # the trial failed: wait longer next time
            self.cooldown = min(self.cooldown * 2, self.policy.breaker_max_cooldown)
        self.trial_until = 0.0
        self.opened_until = self.clock() + self.cooldown
        return True


def _no_options(event: Event) -> plugin.Options:
    return plugin.Options()


@dataclass(frozen=True, kw_only=True)
class Subscription:
    """A route (one rule): events whose type matches ``patterns`` and for which ``condition``
    holds go to the handler instance ``instance``. ``name`` (the rule's) keys the outbox, so
    deliveries are in order per call per route. ``options`` renders the rule's ``with``
    against an event, merged over the instance's options (it may raise: a permanent failure).
    """

    name: str
    handler: plugin.Handler
    patterns: tuple[str, ...]
    policy: DeliveryPolicy = DeliveryPolicy()
    instance: str = ""
    condition: Callable[[Mapping[str, Any]], bool] | None = None
    options: Callable[[Event], plugin.Options] = _no_options

    @property
    def target(self) -> str:
        """The handler instance's name."""
        return self.instance or self.name


class EventBus:
    """Routes over the store's outbox, and the state each handler instance shares between
    its routes: a concurrency limit, a circuit breaker, and whether it is disabled."""

    def __init__(self, subscriptions: Iterable[Subscription] = ()) -> None:
        self._subs: dict[str, Subscription] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self.limits: dict[str, asyncio.Semaphore] = {}
        self.breakers: dict[str, Breaker] = {}
        #: Handler instances disabled (410 Gone, or a failed start), with the reason.
        self.disabled: dict[str, str] = {}
        for sub in subscriptions:
            self.subscribe(sub)

    def subscribe(self, sub: Subscription) -> None:
        """Add a route; it receives events written from now on."""
        self._subs[sub.name] = sub
        self._wake[sub.name] = asyncio.Event()
        self.limits.setdefault(sub.target, asyncio.Semaphore(sub.policy.concurrency))
        self.breakers.setdefault(sub.target, Breaker(sub.policy))

    @property
    def subscriptions(self) -> Sequence[Subscription]:
        return list(self._subs.values())

    def handlers(self) -> dict[str, plugin.Handler]:
        """Each handler instance once, by name."""
        return {sub.target: sub.handler for sub in self._subs.values()}

    def route(self, event: Event) -> list[str]:
        """The routes ``event`` goes to (used by the store inside its transaction). A
        condition that cannot be evaluated on this event is false, never an error."""
        names = []
        body: Mapping[str, Any] | None = None
        for sub in self._subs.values():
            if not any(matches(p, event.type) for p in sub.patterns):
                continue
            if sub.condition is not None:
                body = body if body is not None else event.to_json()
                try:
                    if not sub.condition(body):
                        continue
                except Exception as exc:  # a user's condition never breaks intake
                    log.warning("rule.condition_failed", rule=sub.name, error=repr(exc))
                    continue
            names.append(sub.name)
        return names

    def publish(self, events: Iterable[Event]) -> None:
        """Wake the workers of every route the (already durable) events went to."""
        for event in events:
            for name in self.route(event):
                self._wake[name].set()

    def wake_all(self) -> None:
        """Wake every worker (e.g. after another daemon's notification)."""
        for flag in self._wake.values():
            flag.set()

    async def start_handlers(self) -> None:
        """Run each instance's optional ``start()``; one that fails is disabled and reported,
        the others run."""
        for name, handler in self.handlers().items():
            start = getattr(handler, "start", None)
            if start is None:
                continue
            try:
                await start()
            except Exception as exc:
                self.disabled[name] = f"start failed: {type(exc).__name__}: {exc}"
                log.error("handler.start_failed", handler=name, error=repr(exc))

    async def stop_handlers(self) -> None:
        """Run each instance's optional ``stop()``, reporting failures."""
        for name, handler in self.handlers().items():
            stop = getattr(handler, "stop", None)
            if stop is None:
                continue
            try:
                await stop()
            except Exception as exc:
                log.error("handler.stop_failed", handler=name, error=repr(exc))

    def workers(
        self,
        store: Store,
        owner: str,
        http: httpx.AsyncClient,
        metrics: Metrics | None = None,
    ) -> list[DeliveryWorker]:
        """One worker per route."""
        return [
            DeliveryWorker(
                store,
                sub,
                owner=owner,
                http=http,
                wake=self._wake[sub.name],
                bus=self,
                metrics=metrics,
            )
            for sub in self._subs.values()
        ]


class DeliveryWorker:
    """Claims one route's deliveries and runs them, within its instance's policy."""

    poll = 1.0

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
        self.store = store
        self.metrics = metrics
        self.sub = sub
        self.owner = owner
        self.http = http
        self.wake = wake
        self.bus = bus or EventBus([sub])
        self.limit = self.bus.limits[sub.target]
        self.breaker = self.bus.breakers[sub.target]
        self._inflight: set[asyncio.Task[None]] = set()
        #: The deliveries running right now (their leases are kept alive by the heartbeat).
        self.delivering: set[str] = set()
        #: Deliveries handled and not yet recorded as done (at the worker's next turn).
        self._handled: list[Delivery] = []
        #: Deliveries claimed ahead and not tried (circuit open, handler disabled), with when
        #: they are due again: put back at the worker's next turn.
        self._returned: list[tuple[Delivery, float]] = []
        #: The delivery claimed as the half-open circuit's one trial.
        self._trial: str | None = None
        self._stopping = asyncio.Event()
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
                    await wait_any(self._stopping, within=self.poll)
                    continue
                if claimed and self.breaker.state == "half_open":
                    self._trial = claimed[0].id  # the one trial (limit() let one through)
                    self.breaker.claimed(1)
                for delivery in claimed:
                    self.delivering.add(delivery.id)
                    task = asyncio.create_task(
                        self._deliver(delivery), name=f"deliver:{self.sub.name}:{delivery.id}"
                    )
                    self._inflight.add(task)
                    task.add_done_callback(self._done)
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

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self.wake.set()  # a finished delivery may unblock the next one of the same call
        if not task.cancelled() and task.exception() is not None:
            self._log.error("delivery.crashed", error=repr(task.exception()))

    async def _idle(self) -> None:
        await wait_any(self.wake, self._stopping, within=self.poll)

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
        pending = set(self._inflight)
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        for task in self._inflight:
            task.cancel()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=1.0)
        handled, returned = self._take_handled(), self._take_returned()
        if handled or returned:
            try:
                await self._settle(handled, limit=0, lease=0.0, returned=returned)
            except exceptions.StoreError as exc:  # their leases lapse: they run again later
                self._log.error("delivery.store_failed", error=str(exc))


async def wait_any(*flags: asyncio.Event, within: float) -> None:
    """Return when any of ``flags`` is set or ``within`` seconds have passed."""
    waiters = [asyncio.ensure_future(flag.wait()) for flag in flags]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
