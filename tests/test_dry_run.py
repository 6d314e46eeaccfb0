"""Before a campaign runs: ``--dry-run`` reads the file as the import would and stores nothing;
the estimate of when it would finish applies the dialer's limits and calling windows, and
holds against a campaign actually run on the simulator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from orchestrator import config, estimate
from orchestrator.api import ControlApi
from orchestrator.api.dry_run import Plan
from orchestrator.connectors.sqlite import SQLiteConnector
from orchestrator.store import Store
from orchestrator.windows import CallingWindow
from tests.daemons import (
    FROM_NUMBER,
    DaemonConfig,
    list_all_calls,
    reap_fixture,
    start_daemon_async,
    start_simulator,
)

TOKEN = "dry-run-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = estimate.Limits(calls_per_second=2.0, max_live_calls=10, budget_per_second=None)
LA = ("America/Los_Angeles",)
MONDAY_6AM_LA = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)  # 06:00 in Los Angeles


# -- the estimate ------------------------------------------------------------------------------


def test_the_tightest_limit_sets_the_pace() -> None:
    found = estimate.estimate(
        {LA: 100}, limits=LIMITS, call_seconds=3.0, talk_seconds=2.0, price_per_minute=0.5,
        window=None, start=MONDAY_6AM_LA,
    )  # fmt: skip
    assert (found.bound_by, found.calls_per_second) == ("pace", 2.0)
    assert found.seconds == 100 / 2.0 + 3.0 and found.cost == 100 * 2.0 / 60 * 0.5
    live = estimate.Limits(calls_per_second=50.0, max_live_calls=10)
    assert estimate.throughput(live, 20.0) == (0.5, "live_calls")
    budget = estimate.Limits(calls_per_second=50.0, max_live_calls=10, budget_per_second=0.1)
    assert estimate.throughput(budget, 1.0) == (0.1, "budget")


def test_calls_wait_for_their_window() -> None:
    window = CallingWindow.model_validate({"start": "09:00", "end": "17:00"})
    found = estimate.estimate(
        {LA: 120}, limits=LIMITS, call_seconds=1.0, talk_seconds=1.0, price_per_minute=0.0,
        window=window, start=MONDAY_6AM_LA,
    )  # fmt: skip
    assert found.finishes_at is not None
    # Closed for three hours, then a minute at two a second.
    opens = MONDAY_6AM_LA + timedelta(hours=3)
    assert opens <= found.finishes_at <= opens + timedelta(minutes=2)
    nowhere = estimate.estimate(
        {(): 5}, limits=LIMITS, call_seconds=1.0, talk_seconds=1.0, price_per_minute=0.0,
        window=window, start=MONDAY_6AM_LA,
    )  # fmt: skip
    assert nowhere.seconds is None  # nobody's local time can be told: never dialled


# -- the API -----------------------------------------------------------------------------------


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], Store]]:
    store = Store(SQLiteConnector(f"sqlite://{tmp_path / 'dry.db'}"), router=lambda event: [])
    await store.open()

    async def ready() -> tuple[bool, dict[str, Any]]:
        return True, {}

    control = ControlApi(
        store, token=TOKEN, defaults=config.Defaults.model_validate({"from": FROM_NUMBER}),
        on_queued=lambda: None, ready=ready, plan=Plan(limits=LIMITS),
    )  # fmt: skip
    async with TestClient(TestServer(control.app())) as http:
        yield http, store
    await store.close()


async def test_a_dry_run_reads_as_the_import_does_and_stores_nothing(
    client: tuple[TestClient[Any, Any], Store],
) -> None:
    http, store = client
    body = b"to,x\n+14155550100,1\nbad,2\n+12125550101,3\n+14155550102,4\n"
    headers = {**AUTH, "Content-Type": "text/csv", "X-Campaign-Settings": '{"price_per_minute": 1}'}
    dry = await http.post(
        "/v1/campaigns", params={"name": "spring", "dry_run": "true", "talk_seconds": "30"},
        data=body, headers=headers,
    )  # fmt: skip
    report = await dry.json()
    assert dry.status == 200 and report["dry_run"] is True, report
    assert await store.campaigns() == [] and await store.list_calls() == []  # nothing stored
    assert report["time_zones"] == {"America/Los_Angeles": 2, "America/New_York": 2} or (
        report["time_zones"]["America/Los_Angeles"] == 2
    )
    assert report["estimate"]["calls"] == 3 and report["estimate"]["cost"] == 1.5
    real = await http.post("/v1/campaigns", params={"name": "spring"}, data=body, headers=headers)
    answer = await real.json()
    assert real.status == 201, answer
    done = {k: v for k, v in answer["import"].items() if k != "number"}
    done["errors"] = [{k: v for k, v in e.items() if k != "import"} for e in done["errors"]]
    assert done == report["import"]  # row for row: the same counts, lines and reasons


# -- against a campaign actually run -----------------------------------------------------------

_reap = reap_fixture()


@pytest.mark.slow
async def test_the_estimate_holds_within_a_fifth(tmp_path: Path) -> None:
    numbers = [f"+1415555{6000 + n:04d}" for n in range(60)]
    sim = start_simulator(tmp_path, scripts={n: ["completed"] for n in numbers}, time_scale=0.01)
    cfg = DaemonConfig(
        simulator_url=sim.url, store_path=tmp_path / "state.db", max_live_calls=10,
        calls_per_second=3.0, max_call_duration="30s",
    )  # fmt: skip
    daemon = await start_daemon_async(tmp_path, cfg)
    rows = tmp_path / "rows.csv"
    rows.write_text("to\n" + "\n".join(numbers) + "\n")

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "orchestrator", *args, "--config", str(daemon.config_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    # A call: the simulator's ring (5 s) and talk (60 s), scaled.
    dry = await cli("campaign", "import", str(rows), "--name", "timed", "--dry-run", "--json",
                    "--talk-seconds", "0.6", "--ring-seconds", "0.07")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    predicted = json.loads(dry.stdout)["estimate"]["seconds"]
    text = await cli("campaign", "import", str(rows), "--name", "timed", "--dry-run")
    assert "dry run: 60 row(s) would be queued, 0 refused" in text.stdout, text.stdout
    started = time.monotonic()
    done = await cli("campaign", "import", str(rows), "--name", "timed")
    assert done.returncode == 0, done.stderr
    async with daemon.async_api() as api:
        while True:
            calls = await list_all_calls(api, page=200)
            if len(calls) == 60 and all(c["status"] == "completed" for c in calls):
                break
            assert time.monotonic() - started < 120, calls[:3]
            await asyncio.sleep(0.1)
    took = time.monotonic() - started
    assert abs(took - predicted) <= 0.2 * took, (predicted, took)


async def test_show_estimates_what_remains(client: tuple[TestClient[Any, Any], Store]) -> None:
    http, store = client
    body = b"to\n+14155550100\n+14155550101\n+14155550100\n"
    headers = {**AUTH, "Content-Type": "text/csv", "X-Campaign-Settings": '{"price_per_minute": 2}'}
    made = await http.post("/v1/campaigns", params={"name": "left"}, data=body, headers=headers)
    campaign = (await made.json())["campaign"]
    plain = await (await http.get(f"/v1/campaigns/{campaign['id']}", headers=AUTH)).json()
    assert "estimate" not in plain  # only when asked: it reads every queued call
    shown = await http.get(
        f"/v1/campaigns/{campaign['id']}", params={"estimate": "true"}, headers=AUTH
    )
    left = (await shown.json())["estimate"]
    assert left["calls"] == 3 and left["talk_seconds"] == 120.0  # the 2-minute expectation
    # Ten live calls of 140 s (20 ringing, 120 talking) bind before two a second does.
    assert left["cost"] == 3 * 2 * 2.0 and left["bound_by"] == "live_calls"
    assert await store.queued_numbers(campaign["id"]) == {"+14155550100": 2, "+14155550101": 1}
