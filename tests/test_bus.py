"""The event bus over a real SQLite store: order per call per handler, retries with backoff,
dead letters, timeouts, and isolation between handlers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from orchestrator import bus, model, plugin
from orchestrator.model import CallStatus, Event, NewCall
from orchestrator.sqlite import SQLiteConnector
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
) -> tuple[bus.EventBus, list[asyncio.Task[None]], list[bus.DeliveryWorker], httpx.AsyncClient]:
    event_bus = bus.EventBus(subs)
    store.router = event_bus.route
    http = httpx.AsyncClient()
    workers = event_bus.workers(store, "test-owner", http)
    for w in workers:
        w.poll = 0.05
    tasks = [asyncio.create_task(w.run()) for w in workers]
    return event_bus, tasks, workers, http


async def stop(
    tasks: list[asyncio.Task[None]], workers: list[bus.DeliveryWorker], http: httpx.AsyncClient
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
        ids.append(call["id"])
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
    assert row["state"] == "done" and row["tries"] == 4


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
    assert dead["handler"] == "bad" and "failure 3" in dead["last_error"]


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
    timed_out = [r for r in rows if r["last_error"] and "timed out" in r["last_error"]]
    assert timed_out, rows
    assert all(r["state"] == "pending" for r in rows)  # retried later, not lost


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
