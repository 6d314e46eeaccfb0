"""The event bus: routes durable events to subscribed handlers.

Routing happens inside the transaction that writes an event (the store calls :meth:`route`),
so each (event, handler) pair is an outbox row before anyone is told about it. Publishing only
wakes the workers (:mod:`orchestrator.daemon.delivery`); they claim deliveries from the store
with leases. Each handler instance has its own concurrency limit, breaker and timeout here, so a
raising or hanging handler delays nobody else.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator import plugin
from orchestrator.model import Event, matches

log = structlog.get_logger(__name__)


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

    def wake_flag(self, name: str) -> asyncio.Event:
        """The flag that wakes route ``name``'s worker."""
        return self._wake[name]
