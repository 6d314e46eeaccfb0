"""The ``retry`` plugin: through the store and bus (fast), and through the daemon against the
simulator (an always-busy number is dialled exactly ``max_attempts`` times; one that answers on
the second try ends ``completed``)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from orchestrator import bus, plugin, rules
from orchestrator.connectors.memory import MemoryConnector
from orchestrator.daemon import delivery
from orchestrator.model import CallStatus, Event, NewCall
from orchestrator.store import Claim, Store, Webhook
from tests.daemons import (
    DaemonConfig,
    destinations,
    queue_calls,
    reap_fixture,
    start_daemon_async,
    start_simulator,
    wait_all_terminal,
)

_reap = reap_fixture()

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def _routes(with_: dict[str, object]) -> list[bus.Subscription]:
    subs, problems = rules.subscriptions(
        {},
        [{"name": "retry", "on": ["call.busy", "call.no_answer"], "do": "retry", "with": with_}],
        plugin.installed(),
    )
    assert not problems
    return subs


@pytest.fixture
async def store() -> AsyncIterator[tuple[Store, Clock]]:
    clock = Clock()
    s = Store(MemoryConnector(), clock=clock)
    await s.open()
    yield s, clock
    await s.close()


async def _dial_and_end(store: Store, status: CallStatus) -> Event:
    got = await store.claim_attempt("w", max_live=10, lease=30, watchdog_after=600)
    assert isinstance(got, Claim)
    result = await store.ingest(
        Webhook(raw=f"{got.attempt_id}:{status}".encode(), status=status),
        token=got.attempt.webhook_token,
    )
    [event] = result.events
    return event


async def _deliver_all(store: Store, subs: list[bus.Subscription]) -> None:
    """Run the retry route's due deliveries once, through a real worker."""
    event_bus = bus.EventBus(subs)
    store.router = event_bus.route
    async with httpx.AsyncClient() as http:
        [worker] = delivery.workers(event_bus, store, "t", http)
        await worker.run_due()


async def test_schedule_backs_off_and_gives_up(store: tuple[Store, Clock]) -> None:
    s, clock = store
    subs = await _routes({"delay": "10m", "backoff": 2, "max_attempts": 3, "min_gap": "1m"})
    s.router = bus.EventBus(subs).route
    call, _ = await s.create_call(NewCall(to="+14155550100", from_="+16045551234"))
    waits = []
    for _ in range(3):
        ended = await _dial_and_end(s, CallStatus.BUSY)
        await _deliver_all(s, subs)
        found = await s.get_call(call.id)
        assert found is not None
        row, attempts, events = found
        if attempts[-1].status == "queued":
            waits.append(attempts[-1].not_before - ended.occurred_at)
            clock.now = attempts[-1].not_before
    assert waits == [600.0, 1200.0]
    types = Counter(e.type for e in events)
    assert types["call.retry_scheduled"] == 2 and types["call.retries_exhausted"] == 1
    assert (row.status, row.attempts) == ("busy", 3)


async def test_a_redelivered_outcome_schedules_one_attempt(store: tuple[Store, Clock]) -> None:
    s, _ = store
    subs = await _routes({"delay": "1m", "max_attempts": 5})
    s.router = bus.EventBus(subs).route
    call, _ = await s.create_call(NewCall(to="+14155550101", from_="+16045551234"))
    busy = await _dial_and_end(s, CallStatus.BUSY)
    first = await s.schedule_retry(busy, at=busy.occurred_at + 60)
    again = await s.schedule_retry(busy, at=busy.occurred_at + 60)
    assert first is not None and first.type == "call.retry_scheduled" and again is None
    attempts = await s.attempts_of(call.id)
    assert [a.number for a in attempts] == [1, 2]


@pytest.mark.slow
async def test_retry_through_the_daemon(tmp_path: Path) -> None:
    always_busy, busy_then_answers, unanswered = destinations(3, start=3100)
    sim = start_simulator(
        tmp_path,
        seed=5,
        time_scale=0.002,
        scripts={
            always_busy: ["busy"],
            busy_then_answers: ["busy", "completed"],
            unanswered: ["no-answer"],
        },
    )
    cfg = DaemonConfig(
        simulator_url=sim.url,
        store_path=tmp_path / "state.db",
        rules=[
            {
                "name": "retry busy or unanswered",
                "on": ["call.busy", "call.no_answer"],
                "do": "retry",
                "with": {"delay": "0.3s", "backoff": 2, "max_attempts": 3, "min_gap": "0s"},
            }
        ],
    )
    daemon = await start_daemon_async(tmp_path, cfg)
    async with daemon.async_api() as api:
        queued = await queue_calls(api, [always_busy, busy_then_answers, unanswered])
        for _ in range(100):  # the first outcome is terminal; wait for the retries to settle
            calls = await wait_all_terminal(api, queued, daemon, timeout=30)
            by_to = {c["to"]: c for c in calls.values()}
            settled = by_to[busy_then_answers]["status"] == "completed" and all(
                "call.retries_exhausted" in [e["type"] for e in by_to[n]["events"]]
                for n in (always_busy, unanswered)
            )
            if settled:
                break
            await asyncio.sleep(0.2)
    dials = Counter(c["to"] for c in sim.calls())
    assert dials == {always_busy: 3, busy_then_answers: 2, unanswered: 3}
    busy = by_to[always_busy]
    assert busy["status"] == "busy" and [a["status"] for a in busy["attempts"]] == ["busy"] * 3
    types = [e["type"] for e in busy["events"]]
    assert types.count("call.retry_scheduled") == 2 and types[-1] == "call.retries_exhausted"
    answered = by_to[busy_then_answers]
    assert [a["status"] for a in answered["attempts"]] == ["busy", "completed"]
    assert answered["next_attempt_at"] is None
