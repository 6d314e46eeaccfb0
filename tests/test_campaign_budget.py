"""A campaign with a budget, end to end: the daemon and the simulator as real processes, the
command line as a user runs it. The campaign pauses within its budget (every call talks as long
as expected, so the stated bound is: not a cent over), its budget is raised with
``campaign set``, it resumes by itself, and ends ``completed`` with every row final and
``campaign.completed`` delivered to a handler."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import (
    DaemonConfig,
    Recorder,
    reap_fixture,
    recorder_fixture,
    start_daemon_async,
    start_simulator,
)

pytestmark = pytest.mark.slow

_reap = reap_fixture()
recorder = recorder_fixture()

NUMBERS = [f"+1415555{4100 + n:04d}" for n in range(12)]
BUDGET = 4.5  # a call talks 60 s at 1.0 a minute: four calls fit, a fifth does not


async def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    """The command line, in a thread: the recorder answers on this test's event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orchestrator", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def show(campaign_id: str, config: Path) -> dict[str, Any]:
    done = await cli("campaign", "show", campaign_id, "--json", config=config)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


async def wait_for(
    campaign_id: str, config: Path, status: str, timeout: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        campaign = await show(campaign_id, config)
        if campaign["status"] == status:
            return campaign
        assert time.monotonic() < deadline, f"never {status}: {campaign}"
        await asyncio.sleep(0.3)


async def test_a_budget_holds_is_raised_and_the_campaign_completes(
    tmp_path: Path, recorder: Recorder
) -> None:
    sim = start_simulator(tmp_path, scripts={n: ["completed"] for n in NUMBERS}, time_scale=0.02)
    cfg = DaemonConfig(
        simulator_url=sim.url,
        store_path=tmp_path / "state.db",
        max_live_calls=3,
        max_call_duration="30s",
        plugins={"hook": {"use": "http", "url": recorder.url}},
        rules=[{"name": "campaigns", "on": "campaign.*", "do": "hook"}],
    )
    daemon = await start_daemon_async(tmp_path, cfg)
    config = daemon.config_path
    rows = tmp_path / "rows.csv"
    rows.write_text("to\n" + "\n".join(NUMBERS) + "\n")
    settings = json.dumps({"expected_call_minutes": 1})
    done = await cli(
        "campaign", "import", str(rows), "--name", "capped", "--budget", str(BUDGET),
        "--price-per-minute", "1", "--settings", settings, config=config,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    campaign_id = done.stdout.split()[1]

    paused = await wait_for(campaign_id, config, "paused")
    # Every call cost what was expected, so the budget held to the cent.
    assert paused["spent"] <= BUDGET, paused
    assert paused["spent"] == 4.0 and paused["reason"].startswith("budget reached")
    assert paused["progress"]["by_state"]["completed"] == 4
    resumed = await cli("campaign", "resume", campaign_id, config=config)
    assert resumed.returncode == 1 and "BUDGET_REACHED" in resumed.stderr  # raise it instead

    raised = await cli("campaign", "set", campaign_id, "--budget", "20", config=config)
    assert raised.returncode == 0, raised.stderr
    assert "active" in raised.stdout

    completed = await wait_for(campaign_id, config, "completed")
    assert completed["progress"]["by_state"] == {"completed": len(NUMBERS)}
    assert completed["spent"] == len(NUMBERS) * 1.0
    deadline = time.monotonic() + 20
    while "campaign.completed" not in [b["type"] for b in recorder.accepted]:
        assert time.monotonic() < deadline, [b["type"] for b in recorder.accepted]
        await asyncio.sleep(0.2)
    types = [b["type"] for b in recorder.accepted]
    assert types.count("campaign.budget_reached") == 1
    assert types.count("campaign.completed") == 1
    [event] = [b for b in recorder.accepted if b["type"] == "campaign.completed"]
    assert event["data"]["campaign"] == campaign_id
    assert event["data"]["calls"] == {"completed": len(NUMBERS)}
