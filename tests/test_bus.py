"""The event bus over a real SQLite store: order per call per handler, retries with backoff,
dead letters, timeouts, and isolation between handlers."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator import bus, model, plugin
from orchestrator.connectors.sqlite import SQLiteConnector
from orchestrator.daemon import delivery
from orchestrator.model import CallStatus, Event, NewCall
from orchestrator.store import Store, Webhook


class Recorder:
    def __init__(self, *, fail_first: int = 0, hang: bool = False, jitter: float = 0.0) -> None:
        self.seen: list[Event] = []
        self.calls = 0
        self.fail_first = fail_first
        self.hang = hang
        self.jitter = jitter
        self.active = 0
        self.max_active = 0

    async def handle(self, event: Event, ctx: plugin.Context) -> None:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.hang:
                await asyncio.sleep(3600)
            if self.jitter:
                await asyncio.sleep(random.uniform(0, self.jitter))
            if self.calls <= self.fail_first:
                raise RuntimeError(f"failure {self.calls}")
            self.seen.append(event)
        finally:
            self.active -= 1


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(SQLiteConnector(f"sqlite://{tmp_path}/bus.db"))
    await s.open()
    yield s
    await s.close()


async def run_bus(
    store: Store, subs: list[bus.Subscription]
) -> tuple[
    bus.EventBus, list[asyncio.Task[None]], list[delivery.DeliveryWorker], httpx.AsyncClient
]:
    event_bus = bus.EventBus(subs)
    store.router = event_bus.route
    http = httpx.AsyncClient()
    workers = delivery.workers(event_bus, store, "test-owner", http)
    for w in workers:
        w.poll = 0.05
    tasks = [asyncio.create_task(w.run()) for w in workers]
    return event_bus, tasks, workers, http


async def stop(
    tasks: list[asyncio.Task[None]], workers: list[delivery.DeliveryWorker], http: httpx.AsyncClient
) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(w.stop(loop.time() + 1) for w in workers))
    await asyncio.wait(tasks, timeout=2)
    for t in tasks:
        t.cancel()
    await http.aclose()


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def lifecycle(store: Store, n: int) -> list[str]:
    """n calls, each through initiated, ringing, in_progress, completed."""
    ids = []
    for i in range(n):
        call, _ = await store.create_call(NewCall(to=f"+1415555{1000 + i}", from_="+16045551234"))
        ids.append(call.id)
    for i in range(n):
        claim = await store.claim_attempt("d", max_live=1000, lease=60, watchdog_after=60)
        assert claim is not None
        await store.placed(claim.attempt_id, provider_call_id=f"p{i}", provider_status="initiated")
        for j, status in enumerate(
            [CallStatus.RINGING, CallStatus.IN_PROGRESS, CallStatus.COMPLETED]
        ):
            await store.ingest(
                Webhook(raw=f"{i}-{j}".encode(), status=status, provider_call_id=f"p{i}")
            )
    return ids


async def test_deliveries_stay_in_order_per_call(store: Store) -> None:
    rec = Recorder(jitter=0.01)
    sub = bus.Subscription(
        name="rec", handler=rec, patterns=("call.*",), policy=bus.DeliveryPolicy(concurrency=8)
    )
    _, tasks, workers, http = await run_bus(store, [sub])
    ids = await lifecycle(store, 12)
    await wait_for(lambda: len(rec.seen) == 12 * 5)
    await stop(tasks, workers, http)
    for call_id in ids:
        types = [e.type for e in rec.seen if e.call.id == call_id]
        assert types == [
            "call.queued",
            "call.initiated",
            "call.ringing",
            "call.in_progress",
            "call.completed",
        ]
    assert rec.max_active > 1  # calls ran in parallel
    assert rec.max_active <= 8
    assert len({e.id for e in rec.seen}) == len(rec.seen)


async def test_a_failing_handler_is_retried_then_succeeds(store: Store) -> None:
    rec = Recorder(fail_first=3)
    policy = bus.DeliveryPolicy(schedule=(0.01, 0.02, 0.05), max_attempts=10)
    _, tasks, workers, http = await run_bus(
        store, [bus.Subscription(name="rec", handler=rec, patterns=("call.queued",), policy=policy)]
    )
    await store.create_call(NewCall(to="+14155551234", from_="+16045551234"))
    await wait_for(lambda: len(rec.seen) == 1)
    await stop(tasks, workers, http)
    assert rec.calls == 4
    [row] = await store.list_deliveries()
    assert row.state == "done" and row.tries == 4


async def test_dead_letter_after_max_attempts_and_others_unaffected(store: Store) -> None:
    bad = Recorder(fail_first=1000)
    good = Recorder()
    policy = bus.DeliveryPolicy(schedule=(0.01, 0.02), max_attempts=3)
    subs = [
        bus.Subscription(name="bad", handler=bad, patterns=("call.*",), policy=policy),
        bus.Subscription(name="good", handler=good, patterns=("call.*",)),
    ]
    _, tasks, workers, http = await run_bus(store, subs)
    await store.create_call(NewCall(to="+14155551234", from_="+16045551234"))
    await wait_for(lambda: len(good.seen) == 1)
    await wait_for(lambda: bad.calls == 3)
    await asyncio.sleep(0.2)
    await stop(tasks, workers, http)
    assert bad.calls == 3  # no fourth try
    [dead] = await store.list_deliveries(state="dead")
    assert dead.handler == "bad" and "failure 3" in dead.last_error


async def test_a_hanging_handler_times_out_and_delays_nobody(store: Store) -> None:
    hung = Recorder(hang=True)
    good = Recorder()
    subs = [
        bus.Subscription(
            name="hung",
            handler=hung,
            patterns=("call.*",),
            policy=bus.DeliveryPolicy(timeout=0.2, schedule=(10,), concurrency=2),
        ),
        bus.Subscription(name="good", handler=good, patterns=("call.*",)),
    ]
    _, tasks, workers, http = await run_bus(store, subs)
    await lifecycle(store, 5)
    await wait_for(lambda: len(good.seen) == 25, timeout=5)
    await wait_for(lambda: hung.calls >= 2)
    await asyncio.sleep(0.3)
    await stop(tasks, workers, http)
    rows = await store.list_deliveries(handler="hung")
    timed_out = [r for r in rows if r.last_error and "timed out" in r.last_error]
    assert timed_out, rows
    assert all(r.state == "pending" for r in rows)  # retried later, not lost


async def test_routing_by_pattern(store: Store) -> None:
    ended = Recorder()
    _, tasks, workers, http = await run_bus(
        store,
        [bus.Subscription(name="ended", handler=ended, patterns=("call.completed", "call.busy"))],
    )
    await lifecycle(store, 2)
    await wait_for(lambda: len(ended.seen) == 2)
    await stop(tasks, workers, http)
    assert {e.type for e in ended.seen} == {"call.completed"}


def test_schedule_goes_from_seconds_to_hours_with_jitter_and_honours_retry_after() -> None:
    policy = bus.DeliveryPolicy(jitter=0.2)
    for tries, base in [(1, 5.0), (2, 30.0), (4, 600.0), (9, 28800.0), (30, 28800.0)]:
        for _ in range(50):
            assert base * 0.8 <= policy.delay(tries) <= base * 1.2
    assert policy.delay(1, retry_after=300.0) >= 300.0
    assert policy.max_attempts == len(bus.SCHEDULE) + 1
    assert model.matches("call.*", "call.no_answer") and not model.matches("call.*", "plugin.x.y")


# -- delivery policy: permanent failures, exhaustion, 410, the circuit breaker ----------------


class Scripted:
    """A handler that raises what it is told, in turn (None: success), and records events."""

    def __init__(self, *outcomes: BaseException | None) -> None:
        self.outcomes = list(outcomes)
        self.seen: list[Event] = []

    async def handle(self, event: Event, ctx: plugin.Context) -> None:
        self.seen.append(event)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome


FAST = bus.DeliveryPolicy(schedule=(0.01,), max_attempts=3, breaker_threshold=100)


async def test_permanent_failure_is_dead_at_once_and_exhaustion_is_routable(
    store: Store,
) -> None:
    failing = Scripted(plugin.DeliveryError("HTTP 400: bad payload", permanent=True))
    watcher = Recorder()
    subs = [
        bus.Subscription(name="crm", handler=failing, patterns=("call.queued",), policy=FAST),
        bus.Subscription(name="ops", handler=watcher, patterns=("delivery.exhausted",)),
    ]
    _, tasks, workers, http = await run_bus(store, subs)
    await store.create_call(NewCall(to="+14155551234", from_="+16045551234"))
    await wait_for(lambda: len(watcher.seen) == 1)
    await stop(tasks, workers, http)
    assert len(failing.seen) == 1  # no retry: it could not help
    [exhausted] = watcher.seen
    assert exhausted.type == "delivery.exhausted"
    assert exhausted.data["route"] == "crm" and exhausted.data["event_type"] == "call.queued"
    assert exhausted.error is not None and "bad payload" in exhausted.error["message"]
    [dead] = await store.list_deliveries(state="dead")
    assert dead.handler == "crm"


async def test_exhaustion_of_an_exhaustion_event_does_not_loop(store: Store) -> None:
    always = Scripted(*[RuntimeError("down")] * 20)
    subs = [
        bus.Subscription(
            name="ops", handler=always, patterns=("call.queued", "delivery.exhausted"), policy=FAST
        )
    ]
    _, tasks, workers, http = await run_bus(store, subs)
    await store.create_call(NewCall(to="+14155551234", from_="+16045551234"))
    await wait_for(lambda: len(always.seen) == 6)  # 3 tries of the event, 3 of its exhaustion
    await asyncio.sleep(0.3)
    await stop(tasks, workers, http)
    assert len(always.seen) == 6
    assert [e.type for e in always.seen] == ["call.queued"] * 3 + ["delivery.exhausted"] * 3


async def test_gone_disables_the_handler_and_says_so(store: Store) -> None:
    gone = Scripted(plugin.HandlerGone("HTTP 410 from the endpoint"))
    watcher = Recorder()
    subs = [
        bus.Subscription(name="hook", handler=gone, patterns=("call.queued",), policy=FAST),
        bus.Subscription(name="ops", handler=watcher, patterns=("handler.disabled",)),
    ]
    event_bus, tasks, workers, http = await run_bus(store, subs)
    await store.create_call(NewCall(to="+14155551234", from_="+16045551234"))
    await wait_for(lambda: len(watcher.seen) == 1)
    # Queued after the 410: it must wait, not go out.
    await store.create_call(NewCall(to="+14155551235", from_="+16045551234"))
    await asyncio.sleep(0.3)
    await stop(tasks, workers, http)
    assert "hook" in event_bus.disabled
    assert len(gone.seen) == 1  # nothing more is sent to a gone endpoint
    [disabled] = watcher.seen
    assert disabled.data["handler"] == "hook" and "410" in disabled.data["reason"]
    pending = await store.list_deliveries(state="pending", handler="hook")
    assert len(pending) == 2  # kept, not lost: they go out once the handler is enabled again


async def test_circuit_opens_after_failures_and_recovers_by_itself(store: Store) -> None:
    flaky = Scripted(*[RuntimeError("503")] * 3)
    policy = bus.DeliveryPolicy(
        schedule=(0.01,),
        max_attempts=50,
        breaker_threshold=3,
        breaker_cooldown=0.5,
        concurrency=1,  # one at a time, so the third failure is the one that opens it
    )
    subs = [bus.Subscription(name="crm", handler=flaky, patterns=("call.queued",), policy=policy)]
    event_bus, tasks, workers, http = await run_bus(store, subs)
    for n in range(5):
        await store.create_call(NewCall(to=f"+141555512{n:02}", from_="+16045551234"))
    await wait_for(lambda: len(flaky.seen) == 3)
    assert event_bus.breakers["crm"].state == "open"
    await asyncio.sleep(0.3)
    assert len(flaky.seen) == 3  # open: nothing tried during the cooldown
    await wait_for(lambda: len(flaky.seen) >= 8, timeout=5)  # the trial passed: closed again
    await stop(tasks, workers, http)
    assert event_bus.breakers["crm"].state == "closed"
    assert {e.call.to for e in flaky.seen[3:]} == {f"+141555512{n:02}" for n in range(5)}
    # Those claimed ahead and put back while the circuit was open were not counted as tries.
    rows = await store.list_deliveries(handler="crm")
    assert sorted(int(r.tries) for r in rows) == [1, 1, 2, 2, 2]
    assert {r.state for r in rows} == {"done"}


def test_breaker_trial_failure_doubles_the_cooldown() -> None:
    now = [0.0]
    breaker = bus.Breaker(
        bus.DeliveryPolicy(breaker_threshold=2, breaker_cooldown=10, breaker_max_cooldown=25),
        clock=lambda: now[0],
    )
    assert breaker.limit(8) == 8
    breaker.failure()
    assert breaker.failure() is True  # the second failure opens it
    assert breaker.state == "open" and breaker.limit(8) == 0
    now[0] = 10.0
    assert breaker.state == "half_open" and breaker.limit(8) == 1
    breaker.claimed(1)
    assert breaker.limit(8) == 0  # one trial at a time
    breaker.failure()
    assert breaker.cooldown == 20 and breaker.wait() == pytest.approx(20)
    now[0] = 30.0
    breaker.claimed(1)
    breaker.failure()
    assert breaker.cooldown == 25  # capped
    now[0] = 55.0
    breaker.claimed(1)
    breaker.success()
    assert breaker.state == "closed" and breaker.limit(8) == 8


# -- what a handler's context can do ---------------------------------------------------------


class Actor:
    """Uses every action of the context once per event, and records what it saw."""

    def __init__(self) -> None:
        self.counts: list[Any] = []
        self.queued: list[str] = []

    async def handle(self, event: Event, ctx: plugin.Context) -> None:
        count = (await ctx.kv.get("count") or 0) + 1
        await ctx.kv.set("count", count)
        self.counts.append(count)
        await ctx.emit("noted", {"count": count})
        if event.call.metadata.get("follow_up"):
            new = NewCall(to="+14155559999", from_="+16045551234", metadata={"parent": "x"})
            self.queued.append(await ctx.calls.queue(new))
            assert await ctx.calls.cancel("not needed after all")


async def test_context_actions_are_durable_and_routable(store: Store) -> None:
    actor = Actor()
    noted = Recorder()
    subs = [
        bus.Subscription(name="act", handler=actor, patterns=("call.queued",)),
        bus.Subscription(name="log", handler=noted, patterns=("plugin.act.*", "call.canceled")),
    ]
    _, tasks, workers, http = await run_bus(store, subs)
    await store.create_call(
        NewCall(to="+14155551234", from_="+16045551234", metadata={"follow_up": True})
    )
    await wait_for(lambda: len(noted.seen) >= 3)
    await asyncio.sleep(0.2)
    await stop(tasks, workers, http)
    types = sorted(e.type for e in noted.seen)
    # The follow-up call's own call.queued went to `act` too (count 2), then the cancel.
    assert types == ["call.canceled", "plugin.act.noted", "plugin.act.noted"], types
    assert actor.counts == [1, 2]
    assert await store.kv_get("act", "count") == 2
    [follow_up] = actor.queued
    found = await store.get_call(follow_up)
    assert found is not None and found[0].status == "queued"


async def test_a_disabled_handlers_worker_still_records_what_was_handled_and_put_back(
    store: Store,
) -> None:
    gone = Scripted(None, plugin.HandlerGone("HTTP 410 from the endpoint"))
    one_at_a_time = dataclasses.replace(FAST, concurrency=1)
    subs = [
        bus.Subscription(name="hook", handler=gone, patterns=("call.queued",), policy=one_at_a_time)
    ]
    _, tasks, workers, http = await run_bus(store, subs)
    for n in range(4):  # claimed together (ahead of the concurrency), run one at a time
        await store.create_call(NewCall(to=f"+141555530{n:02}", from_="+16045551234"))

    async def settled() -> bool:
        rows = await store.list_deliveries(handler="hook")
        leased = [r for r in rows if r.lease_owner is not None]
        return len(gone.seen) == 2 and not leased and any(r.state == "done" for r in rows)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not await settled():  # recorded while the handler stays disabled, not at stop
        assert loop.time() < deadline, "the disabled handler's deliveries were never settled"
        await asyncio.sleep(0.02)
    rows = await store.list_deliveries(handler="hook")
    await stop(tasks, workers, http)
    assert len(gone.seen) == 2
    assert [(r.state, int(r.tries)) for r in rows] == [
        ("done", 1),  # handled before the 410
        ("pending", 1),  # the 410 itself, due again later
        ("pending", 0),  # claimed ahead, put back untried
        ("pending", 0),
    ]
