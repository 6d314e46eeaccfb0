"""Acceptance against the provider as it is deployed, with real processes: the daemon and the
simulator as subprocesses, a recorder as the event handler. Busy, unanswered and failed calls
send no webhook, answered calls' webhooks may name another call, and a misleading
``call.completed`` comes late for every unanswered call; the daemon still ends every call in the
provider's true outcome within seconds (with a 30 minute watchdog), redials busy numbers exactly
as the retry rule says, and rings nobody twice, even when placements are lost half-way."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import (
    DaemonConfig,
    DaemonProcess,
    Recorder,
    SimulatorProcess,
    check_events,
    destinations,
    provider_status,
    queue_calls,
    reap_fixture,
    recorder_fixture,
    start_daemon_async,
    start_simulator,
    wait_all_terminal,
)

pytestmark = pytest.mark.slow

_reap = reap_fixture()
recorder = recorder_fixture()
SECRET = "whsec_provider_records"
RETRY = {
    "name": "redial busy and unanswered",
    "on": ["call.busy", "call.no_answer"],
    "do": "retry",
    "with": {"delay": "0.5s", "min_gap": "0.2s", "max_attempts": 3},
}


async def _deployed(
    tmp_path: Path, recorder: Recorder, *, daemon: dict[str, Any] | None = None, **simulator: Any
) -> tuple[SimulatorProcess, DaemonProcess]:
    cfg = DaemonConfig(
        simulator_url="",
        store_path=tmp_path / "state.db",
        recorder_url=recorder.url,
        webhook_secret=SECRET,
        max_call_duration="30m",
        **{"rules": [RETRY], **(daemon or {})},
    )
    sim = start_simulator(
        tmp_path,
        dialect="deployed",
        webhook_url=f"http://127.0.0.1:{cfg.webhook_port}/webhooks/magpipe",
        webhook_secret=SECRET,
        **simulator,
    )
    cfg.simulator_url = sim.url
    return sim, await start_daemon_async(tmp_path, cfg)


def _rang(sim: SimulatorProcess) -> Counter[str]:
    """How often each number's phone rang (records of certain failures rang nobody)."""
    return Counter(c["to"] for c in sim.calls() if c["rang"])


async def test_the_deployed_provider_settled_by_its_records(
    tmp_path: Path, recorder: Recorder
) -> None:
    busy, later, failed, answered = destinations(4, start=900)
    sim, daemon = await _deployed(
        tmp_path,
        recorder,
        time_scale=0.002,
        conference_limit=1500,  # the late misleading call.completed, 3 s after each miss
        faults={"misattribute": 1.0},
        scripts={
            busy: ["busy"],
            later: ["no-answer", "completed"],
            failed: ["failed"],
            answered: ["completed"],
        },
    )
    started = time.monotonic()
    async with daemon.async_api() as api:
        queued = await queue_calls(api, [busy, later, failed, answered])
        by_to = {to: call_id for call_id, to in queued.items()}
        calls = await wait_all_terminal(api, queued, daemon, timeout=60, recorder=recorder)
        # A retry is scheduled after busy/no_answer: wait for the calls' last attempts.
        deadline = time.monotonic() + 30
        while True:
            calls = await wait_all_terminal(api, queued, daemon, timeout=60, recorder=recorder)
            done = (
                len(calls[by_to[busy]]["attempts"]) == 3
                and calls[by_to[later]]["status"] == "completed"
            )
            if done or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        # The late misleading webhooks of the unanswered calls come, and change nothing.
        deadline = time.monotonic() + 15
        while sum(1 for c in sim.calls() if c["overwritten"]) < 4:
            assert time.monotonic() < deadline, sim.calls()
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        final = await wait_all_terminal(api, queued, daemon, timeout=30, recorder=recorder)
        status = (await api.get("/v1/status")).json()
        metrics = (await api.get("/metrics")).text
    assert elapsed < 30, f"took {elapsed:.1f} s"
    rang = _rang(sim)
    assert rang == {busy: 3, later: 2, failed: 1, answered: 1}, rang
    expected = {busy: "busy", later: "completed", failed: "failed", answered: "completed"}
    got = {calls[i]["to"]: final[i]["status"] for i in queued}
    assert got == expected
    assert [a["status"] for a in final[by_to[busy]]["attempts"]] == ["busy"] * 3
    assert [a["status"] for a in final[by_to[later]]["attempts"]] == ["no_answer", "completed"]
    problems = [p for c in final.values() if len(c["attempts"]) == 1 for p in check_events(c)]
    assert not problems, "\n".join(problems)
    for call in final.values():  # one terminal event per attempt, from its look-up or webhook
        terminal = [
            e for e in call["events"] if e["status"] in ("busy", "no_answer", "completed", "failed")
        ]
        assert len(terminal) == len(call["attempts"]), call["events"]
    sim_ids = {c["id"] for c in sim.calls()}
    for call in final.values():
        for attempt in call["attempts"]:
            assert attempt["provider_call_id"] in sim_ids
            assert attempt["last_lookup"] is not None, attempt
    # Misattributed webhooks were not applied to the call they name, and were counted.
    assert any(
        w["payload"]["data"]["call_record_id"] != c["id"]
        for c in sim.calls()
        for w in c["webhooks"]
        if not c["overwritten"]
    )
    assert "orchestrator_webhook_mismatches_total" in metrics
    assert 'orchestrator_calls_settled_total{source="lookup"}' in metrics
    # No slot is held once the outcomes are known.
    assert status["live"] == 0
    assert sim.stats()["live"] == 0


async def test_ambiguous_placements_half_never_created_ring_each_person_once(
    tmp_path: Path, recorder: Recorder
) -> None:
    """Every placement's answer is lost: half because the call was created and its answer
    dropped, half because the request hung and no call was ever created. The created ones are
    found and followed; the others are dialed again. Every person rings exactly once."""
    numbers = destinations(16, start=950)
    sim, daemon = await _deployed(
        tmp_path,
        recorder,
        daemon={"magpipe_timeout": "0.5s", "rules": []},
        seed=17,
        time_scale=0.002,
        faults={"drop_answer": 1.0, "hang_placement": 0.5, "hang_seconds": 20},
    )
    async with daemon.async_api() as api:
        queued = await queue_calls(api, numbers)
        calls = await wait_all_terminal(api, queued, daemon, timeout=90, recorder=recorder)
    rang = _rang(sim)
    assert rang == dict.fromkeys(numbers, 1), rang
    by_to = {c["to"]: c for c in sim.calls()}
    wrong = [
        (c["to"], by_to[c["to"]]["outcome"], c["status"])
        for c in calls.values()
        if c["status"] != provider_status(by_to[c["to"]]["outcome"])
    ]
    assert not wrong, wrong
    requeued = [c for c in calls.values() if "call.requeued" in [e["type"] for e in c["events"]]]
    hung = sim.stats()["requests_by_endpoint"]["initiate-bridged-call"] - len(numbers)
    assert requeued and hung >= len(requeued), (len(requeued), hung)
    for call in calls.values():
        (attempt,) = call["attempts"]
        assert attempt["provider_call_id"] == by_to[call["to"]]["id"]
    problems = [p for c in calls.values() for p in check_events(c)]
    assert not problems, "\n".join(problems)
