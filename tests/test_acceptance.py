"""End to end: the daemon and the simulator as real processes, a recorder as the event handler.

Each test starts a simulator (with faults), a daemon pointed at it and a recorder, queues calls
through the control API and then checks what every party saw: the simulator's record of what
it dialed and which webhooks it delivered, the daemon's API, and the events the recorder got.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import (
    DaemonConfig,
    DaemonProcess,
    Recorder,
    SimulatorProcess,
    check_deliveries,
    check_events,
    destinations,
    dialed_once,
    provider_status,
    queue_calls,
    reap_fixture,
    recorder_fixture,
    start_daemon,
    start_daemon_async,
    start_simulator,
    wait_all_terminal,
)

pytestmark = pytest.mark.slow

_reap = reap_fixture()
recorder = recorder_fixture(fail_first=5)
DEPLOYED_SECRET = "whsec_acceptance_test"


async def _start_deployed(
    tmp_path: Path, recorder: Recorder, *, max_call_duration: str, **simulator: Any
) -> tuple[SimulatorProcess, DaemonProcess]:
    """A deployed-dialect simulator sending signed account-level webhooks to a daemon."""
    cfg = DaemonConfig(
        simulator_url="",
        store_path=tmp_path / "state.db",
        recorder_url=recorder.url,
        webhook_secret=DEPLOYED_SECRET,
        max_call_duration=max_call_duration,
    )
    sim = start_simulator(
        tmp_path,
        dialect="deployed",
        webhook_url=f"http://127.0.0.1:{cfg.webhook_port}/webhooks/magpipe",
        webhook_secret=DEPLOYED_SECRET,
        **simulator,
    )
    cfg.simulator_url = sim.url
    return sim, await start_daemon_async(tmp_path, cfg)


def _expected(sim_call: dict[str, Any]) -> str:
    """What our status must be: the simulator's outcome, whether its terminal webhook came or
    was lost (then the provider's record says it)."""
    return provider_status(sim_call["outcome"])


def _lost(sim_call: dict[str, Any]) -> bool:
    """Whether every terminal webhook of the call was lost (or none was sent)."""
    outcome = sim_call["outcome"]
    return not [w for w in sim_call["webhooks"] if w["status"] == outcome and not w["lost"]]


def _check_recorder(recorder: Recorder, calls: dict[str, dict[str, Any]]) -> None:
    """Every event reached the handler exactly once (no crash here), in order."""
    problems = check_deliveries(recorder, calls)
    assert not problems, "\n".join(problems)
    counts = Counter(b["id"] for b in recorder.accepted)
    twice = {i: n for i, n in counts.items() if n > 1}
    assert not twice, f"event ids accepted more than once: {twice}"
    # The induced failures were retried with the same event id.
    failed = {r.body["id"] for r in recorder.received if r.answered != 200}
    assert failed, "the recorder's induced failures did not happen"
    assert failed <= set(counts)


async def test_documented_provider_with_webhook_faults(tmp_path: Path, recorder: Recorder) -> None:
    """Duplicated, shuffled, early and lost webhooks: every call ends with the right status
    (a lost terminal webhook is made up for by a look-up), nobody is dialed twice, the live
    limit holds and each event reaches the handler once, in order."""
    faults = {
        "duplicate_webhooks": 0.3,
        "out_of_order": 0.3,
        "early_webhook": 0.3,
        "lose_webhooks": 0.1,
    }
    sim = start_simulator(tmp_path, seed=11, time_scale=0.002, max_concurrent=50, faults=faults)
    cfg = DaemonConfig(
        simulator_url=sim.url,
        store_path=tmp_path / "state.db",
        recorder_url=recorder.url,
        max_live_calls=8,
        max_call_duration="4s",
    )
    daemon = await start_daemon_async(tmp_path, cfg)
    numbers = destinations(60)
    async with daemon.async_api() as api:
        queued = await queue_calls(api, numbers, metadata={"batch": "acceptance"})
        calls = await wait_all_terminal(api, queued, daemon, timeout=75, recorder=recorder)
    sim_calls = sim.calls()
    stats = sim.stats()

    by_to = dialed_once(sim_calls)
    assert set(by_to) == set(numbers)
    assert stats["max_live_seen"] <= cfg.max_live_calls, stats

    wrong = []
    problems: list[str] = []
    for call in calls.values():
        sim_call = by_to[call["to"]]
        expected = _expected(sim_call)
        if call["status"] != expected:
            wrong.append((call["to"], sim_call["outcome"], expected, call["status"]))
        problems += check_events(call)
        assert len(call["attempts"]) == 1, call["attempts"]
        attempt = call["attempts"][0]
        assert attempt["provider_call_id"] == sim_call["id"]
        assert sim_call["metadata"]["batch"] == "acceptance"
        assert call["metadata"] == {"batch": "acceptance"}
        final = call["events"][-1]
        if expected == "completed":
            assert final["duration"] == sim_call["duration"]
        if _lost(sim_call):
            assert final["data"]["source"] == "lookup", final
            assert call["attempts"][0]["settled_by"] == "lookup"
    assert not wrong, f"(to, outcome, expected, got): {wrong}"
    assert not problems, "\n".join(problems)
    # The faults did strike (seeded, so this is stable): some terminal webhooks were lost.
    assert any(_lost(c) for c in sim_calls), "no terminal webhook was lost"
    statuses = Counter(c["status"] for c in calls.values())
    assert statuses["completed"] >= 1 and "timed_out" not in statuses, statuses
    assert any(
        len([w for w in c["webhooks"] if w["status"] == c["outcome"] and not w["lost"]]) > 1
        for c in sim_calls
    ), "no duplicated terminal webhook: the fault did not strike"
    _check_recorder(recorder, calls)


async def test_deployed_provider_account_webhook(tmp_path: Path, recorder: Recorder) -> None:
    """The deployed shape: one signed account-level ``call.completed`` for answered calls and
    nothing for the rest, which look-ups end in their true outcome."""
    sim, daemon = await _start_deployed(
        tmp_path, recorder, max_call_duration="30m", seed=5, time_scale=0.002
    )
    numbers = destinations(20, start=100)
    async with daemon.async_api() as api:
        queued = await queue_calls(api, numbers)
        calls = await wait_all_terminal(api, queued, daemon, timeout=60, recorder=recorder)
    by_to = dialed_once(sim.calls())
    assert set(by_to) == set(numbers)
    wrong = []
    problems: list[str] = []
    for call in calls.values():
        sim_call = by_to[call["to"]]
        expected = provider_status(sim_call["outcome"])
        if call["status"] != expected:
            wrong.append((call["to"], sim_call["outcome"], call["status"]))
        problems += check_events(call)
        assert call["attempts"][0]["provider_call_id"] == sim_call["id"]
        if expected == "completed":
            hooks = sim_call["webhooks"]
            assert [h["http_status"] for h in hooks] == [200], hooks
            assert call["events"][-1]["duration"] == sim_call["duration"]
        else:
            assert call["events"][-1]["data"]["source"] == "lookup"
    assert not wrong, f"(to, outcome, got): {wrong}"
    assert not problems, "\n".join(problems)
    statuses = Counter(c["status"] for c in calls.values())
    assert statuses["completed"] >= 1 and len(statuses) >= 3, statuses
    _check_recorder(recorder, calls)


async def test_dropped_answers_are_never_redialed(tmp_path: Path, recorder: Recorder) -> None:
    """A placement whose answer is lost is ambiguous: never resent, resolved by its webhooks."""
    sim = start_simulator(
        tmp_path, seed=23, time_scale=0.002, max_concurrent=50, faults={"drop_answer": 0.3}
    )
    cfg = DaemonConfig(
        simulator_url=sim.url,
        store_path=tmp_path / "state.db",
        recorder_url=recorder.url,
        max_live_calls=10,
        max_call_duration="4s",
    )
    daemon = await start_daemon_async(tmp_path, cfg)
    numbers = destinations(30, start=200)
    async with daemon.async_api() as api:
        queued = await queue_calls(api, numbers)
        calls = await wait_all_terminal(api, queued, daemon, timeout=60, recorder=recorder)
    by_to = dialed_once(sim.calls())
    assert set(by_to) == set(numbers)
    wrong = []
    problems: list[str] = []
    for call in calls.values():
        sim_call = by_to[call["to"]]
        expected = _expected(sim_call)
        if call["status"] != expected:
            wrong.append((call["to"], sim_call["outcome"], call["status"]))
        problems += check_events(call)
        [attempt] = call["attempts"]
        # Its webhooks told the daemon the provider's id even when the answer was lost.
        assert attempt["provider_call_id"] == sim_call["id"]
    assert not wrong, f"(to, outcome, got): {wrong}"
    assert not problems, "\n".join(problems)
    # Once its webhooks resolve an attempt, the API no longer shows the lost answer's error:
    # the daemon's log says which placements went unanswered.
    ambiguous = daemon.log_path.read_text().count('"event": "dialer.ambiguous"')
    assert ambiguous >= 1, "no answer was dropped: the fault did not strike"
    _check_recorder(recorder, calls)


def test_call_wait_prints_the_terminal_event(tmp_path: Path) -> None:
    """``orchestrator call --wait`` queues through the running daemon and prints the call's
    terminal event."""
    sim = start_simulator(tmp_path, seed=3, time_scale=0.002)
    cfg = DaemonConfig(simulator_url=sim.url, store_path=tmp_path / "state.db")
    daemon = start_daemon(tmp_path, cfg)
    [number] = destinations(1, start=300)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "call",
            "--wait",
            "--to",
            number,
            "--metadata",
            "customer=c1",
            "--config",
            str(daemon.config_path),
            "--timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), (done.returncode, done.stdout, done.stderr)
    event = json.loads(done.stdout)
    assert event["type"] == f"call.{event['status']}"
    assert event["call"]["to"] == number
    assert event["call"]["metadata"] == {"customer": "c1"}
    [sim_call] = [c for c in sim.calls() if c["to"] == number]
    assert event["status"] == provider_status(sim_call["outcome"])
    assert done.returncode == (0 if event["status"] == "completed" else 1)
    with daemon.api() as api:
        call = api.get(f"/v1/calls/{event['call']['id']}").json()
    assert call["status"] == event["status"]
    assert call["events"][-1]["id"] == event["id"]

    # A number the daemon refuses: nothing queued, exit 1, the code on stderr.
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "call",
            "--wait",
            "--to",
            "+1555",
            "--config",
            str(daemon.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert "INVALID_PHONE_NUMBER" in refused.stderr


async def test_deployed_webhook_before_the_answer(tmp_path: Path, recorder: Recorder) -> None:
    """The deployed provider answers slowly (1 s) while short calls complete within it: each
    signed call.completed reaches the daemon before the POST's answer does."""
    sim, daemon = await _start_deployed(
        tmp_path,
        recorder,
        max_call_duration="4s",
        seed=8,
        time_scale=0.001,
        faults={"slow": 1.0, "slow_seconds": 1.0},
    )
    numbers = destinations(8, start=500)
    async with daemon.async_api() as api:
        queued = await queue_calls(api, numbers)
        calls = await wait_all_terminal(api, queued, daemon, timeout=40, recorder=recorder)
    by_to = dialed_once(sim.calls())
    assert set(by_to) == set(numbers)
    answered = [c for c in by_to.values() if c["outcome"] == "completed"]
    assert answered, "no call was answered: nothing to check"
    got = {
        call["to"]: (
            by_to[call["to"]]["outcome"],
            call["status"],
            [h["http_status"] for h in by_to[call["to"]]["webhooks"]],
        )
        for call in calls.values()
    }
    wrong = {to: pair for to, pair in got.items() if pair[1] != provider_status(pair[0])}
    assert not wrong, f"(outcome, our status, HTTP answers to its webhooks): {wrong}"
