"""SIGHUP: the daemon re-reads its config file. A valid file swaps in its plugins and rules
without a restart; an invalid one changes nothing, the daemon keeps running and says why."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import yaml

from tests.daemons import (
    DaemonConfig,
    Recorder,
    destinations,
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
recorder = recorder_fixture()


async def test_sighup_swaps_rules_and_refuses_a_broken_file(
    tmp_path: Path, recorder: Recorder
) -> None:
    sim = start_simulator(tmp_path, seed=3, time_scale=0.002)
    cfg = DaemonConfig(simulator_url=sim.url, store_path=tmp_path / "state.db")
    daemon = await start_daemon_async(tmp_path, cfg)
    first, second, third = destinations(3, start=3300)
    async with daemon.async_api() as api:
        await wait_all_terminal(api, await queue_calls(api, [first]), daemon, timeout=30)
        assert recorder.received == []  # no rule routes anything yet

        cfg.recorder_url = recorder.url
        daemon.config_path.write_text(yaml.safe_dump(cfg.as_dict(), sort_keys=False))
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "daemon.reloaded" in daemon.log_tail(), 15, "reload", daemon)
        queued = await queue_calls(api, [second])
        await wait_all_terminal(api, queued, daemon, timeout=30, recorder=recorder)
        assert {b["call"]["to"] for b in recorder.accepted} == {second}

        text = daemon.config_path.read_text()
        daemon.config_path.write_text(text.replace("rules:", "rulez:"))
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_until(
            lambda: "daemon.reload_refused" in daemon.log_tail(), 15, "refusal", daemon
        )
        assert "rulez" in daemon.log_tail()  # the problem is named, with its place
        assert daemon.alive
        queued = await queue_calls(api, [third])
        await wait_all_terminal(api, queued, daemon, timeout=30, recorder=recorder)
        await asyncio.sleep(0.2)
    assert {b["call"]["to"] for b in recorder.accepted} == {second, third}  # old rules kept
