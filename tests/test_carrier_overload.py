"""The provider's carrier overrun, end to end: a share of placements answered 500 "Failed to
start PSTN leg" (and its kin), a certain failure (nobody was rung). Each call goes back to the
queue and is tried again later, the fleet's pace drops while it lasts, and in the end every
person is rung exactly once: nothing ends ``rejected``, ``timed_out`` or ambiguous for it."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from tests.daemons import (
    DaemonConfig,
    destinations,
    queue_calls,
    reap_fixture,
    start_daemon_async,
    start_simulator,
    wait_all_terminal,
)

pytestmark = pytest.mark.slow

_reap = reap_fixture()


async def test_carrier_errors_slow_the_pace_and_ring_everyone_once(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, seed=5, time_scale=0.002, faults={"carrier_error": 0.35})
    cfg = DaemonConfig(
        simulator_url=sim.url,
        store_path=tmp_path / "state.db",
        max_live_calls=6,
        calls_per_second=20.0,
        dialer={"max_placement_failures": 12, "placement_failure_backoff": "0.1s"},
    )
    daemon = await start_daemon_async(tmp_path, cfg)
    numbers = destinations(40)
    slowest = 1.0
    async with daemon.async_api() as api:
        queued = await queue_calls(api, numbers)
        waiting = asyncio.create_task(wait_all_terminal(api, queued, daemon, timeout=90))
        while not waiting.done():
            status = (await api.get("/v1/status")).json()
            slowest = min(slowest, status["dialing"]["factor"])
            await asyncio.sleep(0.1)
        calls = await waiting
    sim_calls = sim.calls()
    # A refused placement that left a record left it with nobody rung (rang false).
    rang = Counter(c["to"] for c in sim_calls if c["rang"])
    assert slowest < 1.0, "the pace never dropped"
    statuses = Counter(c["status"] for c in calls.values())
    assert not {"rejected", "timed_out"} & set(statuses), statuses
    for call in calls.values():
        assert call["reason"] != "PLACEMENT_FAILED", call
        assert not any(a["ambiguous"] for a in call["attempts"]), call
        # One attempt: a refused placement is the same attempt tried again, not a retry.
        assert len(call["attempts"]) == 1, call["attempts"]
    # Every person rung exactly once.
    assert set(rang) == set(numbers) and set(rang.values()) == {1}, rang
    retried = [c for c in calls.values() if c["attempts"][0]["placement_failures"] > 0]
    assert retried, "no placement was refused: the fault did not strike"
    for call in calls.values():  # a refusal before the placement is history once placed
        assert call["attempts"][0]["error"] is None or call["status"] != "completed", call
