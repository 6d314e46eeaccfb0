"""Crash safety with real processes: SIGKILL the daemon at several points and restart it on the
same SQLite store; SIGTERM it and restart it. Nothing is lost, nobody is dialed twice, every
event reaches the handler (at least once, with a stable id)."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import (
    TERMINAL,
    DaemonConfig,
    Recorder,
    check_deliveries,
    check_events,
    destinations,
    dialed_once,
    list_all_calls,
    provider_status,
    queue_calls,
    reap_fixture,
    recorder_fixture,
    start_daemon_async,
    start_simulator,
    wait_all_terminal,
    wait_until,
)

pytestmark = pytest.mark.slow

_reap = reap_fixture()
# Each answer is held back a little, so deliveries are in flight when the daemon dies.
recorder = recorder_fixture(fail_first=3, delay=0.03)


def _check_deliveries(recorder: Recorder, calls: dict[str, dict[str, Any]]) -> None:
    """Every event reached the recorder (at least once); redeliveries carry the same id and the
    same body; one terminal event per call."""
    problems = check_deliveries(recorder, calls)
    assert not problems, "\n".join(problems)
    listed = {e["id"]: e for c in calls.values() for e in c["events"]}
    terminal = {e["id"] for e in listed.values() if e["status"] in TERMINAL}
    assert len(terminal) == len(calls)


def _check_against_simulator(
    sim_calls: list[dict[str, Any]], calls: dict[str, dict[str, Any]], numbers: list[str]
) -> dict[str, dict[str, Any]]:
    """Nobody dialed twice; a terminal webhook the daemon acknowledged (200) decided the call.
    Returns the simulator's calls by destination."""
    by_to = dialed_once(sim_calls)
    assert set(by_to) <= set(numbers)
    wrong = []
    for call in calls.values():
        sim_call = by_to.get(call["to"])
        if sim_call is None:
            # Claimed but never sent (killed in between): it can only have timed out.
            if call["status"] != "timed_out":
                wrong.append((call["to"], "never dialed", call["status"]))
            continue
        acknowledged = [
            w
            for w in sim_call["webhooks"]
            if w["status"] == sim_call["outcome"] and w["http_status"] == 200
        ]
        if acknowledged and call["status"] != provider_status(sim_call["outcome"]):
            wrong.append((call["to"], sim_call["outcome"], call["status"]))
    assert not wrong, f"(to, simulator outcome, our status): {wrong}"
    return by_to


async def test_sigkill_rounds_on_one_store(tmp_path: Path, recorder: Recorder) -> None:
    seed = int(os.environ.get("CRASH_SEED", "20260301"))
    rng = random.Random(seed)
    # Some answers are slow, so placements are in flight when the daemon is killed.
    sim = start_simulator(
        tmp_path,
        seed=31,
        time_scale=0.005,
        max_concurrent=50,
        faults={"slow": 0.25, "slow_seconds": 0.4},
    )
    cfg = DaemonConfig(
        simulator_url=sim.url,
        store_path=tmp_path / "state.db",
        recorder_url=recorder.url,
        # Calls orphaned by a kill (their webhooks went to a dead port) hold their slot until
        # the watchdog: a high limit keeps them from stalling the dialer, and a watchdog longer
        # than the kill rounds keeps its timers from firing while the daemon is being killed
        # (see test_watchdog_timers_of_a_killed_daemon_are_not_stranded).
        max_live_calls=80,
        calls_per_second=15,
        max_call_duration="12s",
        delivery={
            "timeout": "1s",
            "max_attempts": 50,
            "schedule": ["0.1s", "0.5s", "1s"],
            "breaker_cooldown": "0.3s",
        },
    )
    daemon = await start_daemon_async(tmp_path, cfg)
    numbers = destinations(80, start=600)
    kills: list[str] = []

    async def kill_and_restart(point: str) -> None:
        daemon.kill()
        kills.append(
            f"{point}: simulator placed {sim.stats()['placed']}, "
            f"recorder got {len(recorder.received)}"
        )
        daemon.start()
        await daemon.await_ready()

    async with daemon.async_api() as api:
        queued = await queue_calls(api, numbers)
        # 1. Right after queueing.
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        await kill_and_restart("after queueing")
        # 2. While placements are in flight: just after the simulator saw a new request.
        for point in ("placing",):
            seen = sim.stats()["requests"]
            await wait_until(
                lambda seen=seen: sim.stats()["requests"] > seen, 15, "a placement", daemon
            )
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            await kill_and_restart(point)
        # 3. While deliveries are in flight: just after the recorder got a new request.
        for point in ("delivering", "delivering again"):
            seen_events = len(recorder.received)
            await wait_until(
                lambda seen_events=seen_events: len(recorder.received) > seen_events,
                15,
                "a delivery",
                daemon,
            )
            await asyncio.sleep(rng.uniform(0.0, 0.03))
            await kill_and_restart(point)
        # Now let it finish. Deliveries leased by a killed daemon wait for their lease
        # (delivery timeout + 30 s) to expire before they run again.
        calls = await wait_all_terminal(api, queued, daemon, timeout=100, recorder=recorder)
        listed = await list_all_calls(api, page=30)

    context = f"seed {seed}; kills: {kills}"
    assert {c["id"] for c in listed} == set(queued), f"calls lost or invented ({context})"
    assert len(listed) == len(numbers)
    problems = [p for call in calls.values() for p in check_events(call)]
    assert not problems, "\n".join(problems) + f"\n({context})"
    assert all(len(c["attempts"]) == 1 for c in calls.values())
    dialed = _check_against_simulator(sim.calls(), calls, numbers)
    assert len(dialed) >= len(numbers) // 2, f"too few placements to mean much ({context})"
    _check_deliveries(recorder, calls)
    statuses = Counter(c["status"] for c in calls.values())
    assert statuses["timed_out"] < len(numbers), statuses


def _statuses(store: Path) -> Counter[str]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return Counter(row[0] for row in db.execute("SELECT status FROM calls"))


async def test_sigterm_is_graceful_and_a_restart_resumes(
    tmp_path: Path, recorder: Recorder
) -> None:
    sim = start_simulator(tmp_path, seed=41, time_scale=0.005, max_concurrent=50)
    cfg = DaemonConfig(
        simulator_url=sim.url,
        store_path=tmp_path / "state.db",
        recorder_url=recorder.url,
        max_live_calls=3,
        calls_per_second=20,
        max_call_duration="4s",
    )
    daemon = await start_daemon_async(tmp_path, cfg)
    numbers = destinations(30, start=700)
    async with daemon.async_api() as api:
        queued = await queue_calls(api, numbers)
        await wait_until(lambda: sim.stats()["placed"] >= 4, 15, "placements", daemon)
        started = time.monotonic()
        status = daemon.terminate(timeout=20)
        stopped_in = time.monotonic() - started
        assert status == 0, f"exit status {status}\n{daemon.log_tail()}"
        assert stopped_in < 12, stopped_in
        assert "daemon.stopped" in daemon.log_path.read_text()
        remaining = _statuses(cfg.store_path)
        assert remaining["queued"] > 0, f"nothing left to resume: {remaining}"
        assert "dialing" not in remaining, remaining
        placed_before = {c["to"] for c in sim.calls()}

        daemon.start()
        await daemon.await_ready()
        calls = await wait_all_terminal(api, queued, daemon, timeout=60, recorder=recorder)
    sim_calls = sim.calls()
    dialed = _check_against_simulator(sim_calls, calls, numbers)
    # Every call still queued at the stop was placed after the restart, exactly once.
    assert set(numbers) - placed_before <= set(dialed)
    assert set(dialed) == set(numbers), f"never dialed: {set(numbers) - set(dialed)}"
    problems = [p for call in calls.values() for p in check_events(call)]
    assert not problems, "\n".join(problems)
    _check_deliveries(recorder, calls)
    assert "AMBIGUOUS" not in {c["reason"] for c in calls.values()}


async def test_watchdog_timers_of_a_killed_daemon_are_not_stranded(tmp_path: Path) -> None:
    """A daemon dies with watchdog timers pending; they fall due while it is down. The
    restarted daemon ends those calls soon after (timers are taken and fired in one
    transaction, so a kill at any instant leaves them due, never held)."""
    # A slow simulator: the calls stay live, no terminal webhook comes during the test.
    sim = start_simulator(tmp_path, seed=51, time_scale=100.0)
    cfg = DaemonConfig(
        simulator_url=sim.url, store_path=tmp_path / "state.db", max_call_duration="2s"
    )
    daemon = await start_daemon_async(tmp_path, cfg)
    numbers = destinations(3, start=800)
    async with daemon.async_api() as api:
        queued = await queue_calls(api, numbers)
        await wait_until(lambda: sim.stats()["placed"] == 3, 15, "placements", daemon)
        daemon.kill()
        with sqlite3.connect(cfg.store_path) as db:
            pending = db.execute("SELECT COUNT(*) FROM timers WHERE kind = 'watchdog'")
            assert pending.fetchone()[0] == 3
        await asyncio.sleep(2.5)  # every watchdog is due while no daemon runs
        daemon.start()
        await daemon.await_ready()
        # Already due: the restarted daemon fires them at once (allow a slow machine).
        calls = await wait_all_terminal(api, queued, daemon, timeout=12)
    assert {c["status"] for c in calls.values()} == {"timed_out"}


async def test_what_happened_while_the_daemon_was_down_is_read_from_the_records(
    tmp_path: Path, recorder: Recorder
) -> None:
    """The deployed provider sends each answered call's one webhook once, and none for the
    rest. The daemon is killed with calls live and a placement in mid-request (it hangs at the
    provider and is never created); it stays down while webhooks are sent into the void. After
    the restart every call still ends in the provider's true outcome, the lost placement is
    dialed exactly once more, and nobody is rung twice."""
    secret = "whsec_crash_records"
    numbers = destinations(24, start=850)
    hung = numbers[0]  # queued first, so its placement is in flight when the daemon dies
    cfg = DaemonConfig(
        simulator_url="",
        store_path=tmp_path / "state.db",
        recorder_url=recorder.url,
        webhook_secret=secret,
        max_live_calls=30,
        max_call_duration="30m",
        magpipe_timeout="20s",
    )
    sim = start_simulator(
        tmp_path,
        seed=61,
        time_scale=0.01,
        dialect="deployed",
        webhook_url=f"http://127.0.0.1:{cfg.webhook_port}/webhooks/magpipe",
        webhook_secret=secret,
        script_faults={hung: "hang_placement:1"},
        faults={"hang_seconds": 15},
    )
    cfg.simulator_url = sim.url
    daemon = await start_daemon_async(tmp_path, cfg)
    async with daemon.async_api() as api:
        queued = await queue_calls(api, numbers)
        await wait_until(lambda: sim.stats()["placed"] >= len(numbers) - 1, 15, "dials", daemon)
        daemon.kill()
        # Down while calls end: the answered ones' webhooks go nowhere and are never resent.
        await asyncio.sleep(3.0)
        unheard = [c for c in sim.calls() for w in c["webhooks"] if w["http_status"] != 200]
        daemon.start()
        await daemon.await_ready()
        # The hung placement's lease must run out (30 s) before it is searched for.
        calls = await wait_all_terminal(api, queued, daemon, timeout=90, recorder=recorder)
    assert unheard, "no webhook was sent while the daemon was down: nothing was tested"
    sim_calls = sim.calls()
    rang = Counter(c["to"] for c in sim_calls if c["rang"])
    assert rang == dict.fromkeys(numbers, 1), rang
    by_to = {c["to"]: c for c in sim_calls}
    wrong = [
        (c["to"], by_to[c["to"]]["outcome"], c["status"])
        for c in calls.values()
        if c["status"] != provider_status(by_to[c["to"]]["outcome"])
    ]
    assert not wrong, f"(to, provider outcome, ours): {wrong}"
    problems = [p for call in calls.values() for p in check_events(call)]
    assert not problems, "\n".join(problems)
    hung_call = next(c for c in calls.values() if c["to"] == hung)
    assert [e["type"] for e in hung_call["events"]].count("call.requeued") == 1
    assert hung_call["attempts"][0]["provider_call_id"] == by_to[hung]["id"]
    for call in calls.values():
        if call["to"] in {c["to"] for c in unheard}:
            assert call["events"][-1]["data"].get("source") == "lookup", call["events"][-1]
