"""The provider pushing back, end to end: the daemon (in this process, on a SQLite file) against
the simulator over loopback. 429 slows the whole dialer; INSUFFICIENT_BALANCE and UNAUTHORIZED
pause all dialing, say so with an ``account.*`` event and probe again; AGENT_NOT_FOUND and
NUMBER_NOT_OWNED pause the campaign; none of these loses a queued call. And the pacing: the
simulator never sees more live calls than allowed, and slots stay busy while work is queued."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator import bus, config, plugin
from orchestrator.daemon.supervisor import Daemon
from orchestrator.model import CallStatus, Event, NewCall
from orchestrator.provider.simulator import Simulator
from orchestrator.provider.simulator.model import Faults, Outcome, Script, SimulatorConfig
from orchestrator.store.campaigns import CampaignSettings
from tests.daemons import UNLIMITED

pytestmark = pytest.mark.slow

FROM = "+16045551234"
AGENT = "c72ea2b8-1234-5678-9abc-def012345678"
TOKEN = "sim-token"


class Events:
    """An in-process handler recording every event it is given."""

    def __init__(self) -> None:
        self.seen: list[Event] = []

    async def handle(self, event: Event, ctx: plugin.Context) -> None:
        self.seen.append(event)

    def types(self) -> list[str]:
        return [e.type for e in self.seen]


class Running:
    """A daemon and a simulator running in this process."""

    def __init__(self, sim: Simulator, daemon: Daemon, events: Events) -> None:
        self.sim = sim
        self.daemon = daemon
        self.events = events

    @property
    def store(self) -> Any:
        return self.daemon.store

    async def until(self, what: Callable[[], bool], timeout: float, label: str) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, f"timed out waiting for {label}"
            await asyncio.sleep(0.05)

    async def statuses(self, ids: list[str]) -> list[str]:
        out = []
        for call_id in ids:
            found = await self.store.get_call(call_id)
            out.append(found[0].status)
        return out


Start = Callable[..., Any]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    running: list[tuple[Simulator, Daemon, asyncio.Task[int]]] = []

    async def go(*, sim_config: SimulatorConfig, dialer: dict[str, Any]) -> Running:
        sim = Simulator(sim_config)
        await sim.start()
        cfg = config.Config.model_validate(
            {
                "magpipe": {
                    "base_url": sim.url,
                    "token": TOKEN,
                    "timeout": "5s",
                    "rate_limit": UNLIMITED,
                },
                "defaults": {"from": FROM, "agent_id": AGENT},
                "webhooks": {"listen": "127.0.0.1:0"},
                "api": {"listen": "127.0.0.1:0", "token": "api-token"},
                "store": f"sqlite://{tmp_path / 'state.db'}",
                "dialer": dialer,
            }
        )
        events = Events()
        sub = bus.Subscription(name="events", handler=events, patterns=("*",))
        daemon = Daemon(cfg, subscriptions=[sub], shutdown_grace=2.0)
        task = asyncio.create_task(daemon.run())
        running.append((sim, daemon, task))
        deadline = time.monotonic() + 10
        while "api" not in daemon.urls:
            assert not task.done(), task
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        return Running(sim, daemon, events)

    yield go
    for sim, daemon, task in running:
        daemon.stopping.set()
        await asyncio.wait_for(task, 15)
        await sim.stop()


def quick(**overrides: Any) -> SimulatorConfig:
    settings: dict[str, Any] = {
        "token": TOKEN,
        "time_scale": 0.002,
        "seed": 9,
        "max_concurrent": 50,
        "outcome_mix": {Outcome.COMPLETED: 1.0},
        **overrides,
    }
    return SimulatorConfig(**settings)


async def queue(run: Running, count: int, start: int = 0, **kw: Any) -> list[str]:
    ids = []
    for n in range(count):
        call, _ = await run.store.create_call(
            NewCall(to=f"+1415555{start + n:04d}", from_=FROM, agent_id=AGENT, **kw)
        )
        ids.append(call.id)
    run.daemon._dialer.wake.set()  # as the API would
    return ids


async def test_insufficient_balance_pauses_dialing_and_probes(start: Start) -> None:
    run = await start(sim_config=quick(balance=0.0), dialer={"balance_probe": "1s"})
    ids = await queue(run, 6)
    await run.until(lambda: "account.balance_low" in run.events.types(), 10, "balance_low")
    state = await run.store.dialing_state()
    assert state["reason"] == "insufficient_balance"
    await asyncio.sleep(0.5)
    assert run.sim.stats()["placed"] == 0
    assert set(await run.statuses(ids)) == {"queued"}  # waiting, not rejected
    run.sim.balance = 100.0
    await run.until(lambda: run.sim.stats()["placed"] == 6, 20, "dialing resumed")
    await run.until(lambda: run.events.types().count("call.completed") == 6, 20, "completed")
    assert "call.rejected" not in run.events.types()


async def test_unauthorized_stops_dialing_fails_readyz_and_recovers(start: Start) -> None:
    run = await start(sim_config=quick(), dialer={"unauthorized_probe": "1s"})
    run.sim.token = "rotated"  # the key was revoked
    ids = await queue(run, 3)
    await run.until(lambda: "account.unauthorized" in run.events.types(), 10, "unauthorized")
    async with httpx.AsyncClient(base_url=run.daemon.urls["api"]) as api:
        ready = await api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["provider"] == "unauthorized"
        assert set(await run.statuses(ids)) == {"queued"}
        run.sim.token = TOKEN  # the key works again
        await run.until(lambda: run.sim.stats()["placed"] == 3, 20, "dialing resumed")
        await run.until(lambda: run.events.types().count("call.completed") == 3, 20, "done")
        assert (await api.get("/readyz")).status_code == 200
    assert "call.rejected" not in run.events.types()


async def test_rate_limits_slow_the_dialer_and_lose_nothing(start: Start) -> None:
    sim_config = quick(faults=Faults(rate_limit=0.4, retry_after=1))
    run = await start(sim_config=sim_config, dialer={"calls_per_second": 50})
    ids = await queue(run, 20)
    factors = []

    async def watch() -> None:
        while True:
            factors.append((await run.store.dialing_state())["factor"])
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        await run.until(lambda: run.events.types().count("call.completed") == 20, 60, "all")
    finally:
        watcher.cancel()
    assert run.sim.stats()["rejected"] > 0  # the provider did say 429
    assert min(factors) < 1.0  # and the pace slowed down
    assert set(await run.statuses(ids)) == {"completed"}
    placed = [c.to for c in run.sim.calls]
    assert len(placed) == len(set(placed)) == 20  # a 429 is safe to resend, once placed never


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        ({"agent_id": "00000000-0000-0000-0000-000000000000"}, "AGENT_NOT_FOUND"),
        ({"from_numbers": ["+16045550000"]}, "NUMBER_NOT_OWNED"),
    ],
)
async def test_agent_or_number_refusal_pauses_the_campaign(
    start: Start, settings: dict[str, Any], code: str
) -> None:
    run = await start(sim_config=quick(), dialer={})
    campaign = await run.store.create_campaign(
        "refused", CampaignSettings.model_validate({"from_numbers": [FROM], **settings})
    )
    await run.store.import_rows(
        campaign["id"], [NewCall(to=f"+141555500{n:02d}", from_="") for n in range(4)]
    )
    others = await queue(run, 2, start=100)  # calls outside the campaign go on
    run.daemon._dialer.wake.set()
    await run.until(lambda: "campaign.paused" in run.events.types(), 10, "campaign.paused")
    row = await run.store.campaign(campaign["id"])
    assert row["status"] == "paused" and code in row["reason"]
    progress = await run.store.campaign_progress(campaign["id"])
    assert progress["by_status"] == {"queued": 4}  # none lost, none rejected
    await run.until(lambda: run.events.types().count("call.completed") == 2, 20, "others")
    assert set(await run.statuses(others)) == {"completed"}


async def test_pacing_keeps_slots_busy_and_never_exceeds_them(start: Start) -> None:
    limit = 5
    talk = {f"+1415555{n:04d}": Script(outcome=Outcome.COMPLETED, duration=60.0, ring=2.0)
            for n in range(40)}  # fmt: skip
    sim_config = quick(time_scale=0.005, scripts=talk)
    run = await start(sim_config=sim_config, dialer={"max_live_calls": limit,
                                                     "calls_per_second": 200})  # fmt: skip
    await queue(run, 40)
    samples = []
    while True:
        queued = await run.store.gauges()
        if queued["queued"] == 0:
            break
        samples.append(run.sim.stats()["live"])
        await asyncio.sleep(0.02)
    await run.until(lambda: run.events.types().count("call.completed") == 40, 30, "all done")
    assert run.sim.stats()["max_live_seen"] <= limit
    busy = statistics.mean(samples[len(samples) // 10 :]) / limit  # after the first fill
    assert busy >= 0.9, f"slots {busy:.0%} busy while work was queued ({len(samples)} samples)"
    assert CallStatus.COMPLETED.event_type in run.events.types()
