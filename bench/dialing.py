"""Dialing throughput: calls placed per second through the daemon's dialer, against a bare
httpx loop at the same concurrency, both placing calls on the same simulator.

The simulator runs in a process of its own (the orchestrator gets the other core), with
``time_scale=0`` and every webhook dropped (``lose_webhooks=1``): this measures placing calls,
not taking their webhooks (``bench/intake.py`` and ``bench/e2e.py`` do that). The daemon runs
whole (intake, API, timers, heartbeat, dialer) on a temporary SQLite file holding a campaign of
queued calls, with ``max_live_calls`` and ``calls_per_second`` far above what it reaches; its
HTTP concurrency is the Magpipe client's pool (100 connections), so the baseline posts the same
bodies with 100 concurrent workers on one httpx client. Rates are taken from the simulator's
own count of placed calls, over the steady part of each run (after the first tenth). Rounds
alternate baseline and daemon; each figure is the median of its rounds. Prints one JSON line.

    .venv/bin/python bench/dialing.py            # --calls 1000 --rounds 2
    .venv/bin/python bench/dialing.py --quick    # ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import LoopLag, SimulatorProcess, cpu, emit, number, quiet

from orchestrator import config, connectors
from orchestrator.daemon.supervisor import Daemon
from orchestrator.model import CORRELATION_KEY, NewCall, new_id
from orchestrator.provider.client import PLACE_CALL_PATH, CallRequest, MagpipeClient
from orchestrator.store import Store
from orchestrator.store.campaigns import CampaignSettings

TARGET = 0.9
CALLER = "+16045551234"
AGENT = "c72ea2b8-1234-5678-9abc-def012345678"
TOKEN = "sim-token"  # noqa: S105 - the simulator's well-known fake token
#: The Magpipe client's default pool: the daemon's HTTP concurrency towards the provider.
CONCURRENCY = 100
POLL = 0.02


async def _placed(
    sim: SimulatorProcess, start: int, calls: int, began: float, run: asyncio.Task[Any]
) -> dict[str, Any]:
    """Wait (polling every POLL s) until the simulator has ``start + calls`` placed calls;
    the rate since ``began`` (perf_counter), the CPU this process used and the longest stall
    of its event loop meanwhile."""
    cpu0 = cpu()
    with LoopLag() as lag:
        while True:
            placed = int((await sim.aprobe())["stats"]["placed"]) - start
            if placed >= calls:
                elapsed = time.perf_counter() - began
                used = cpu() - cpu0
                break
            if run.done():
                run.result()  # raises what stopped it
                raise RuntimeError(f"the run ended with {placed} of {calls} calls placed")
            await asyncio.sleep(POLL)
    return {
        "calls_per_s": round(calls / elapsed, 1),
        "seconds": round(elapsed, 2),
        "cpu_ms_per_call": round(used / calls * 1000, 3),
        "max_loop_stall_ms": lag.max_ms,
    }


async def baseline(sim: SimulatorProcess, offset: int, calls: int) -> dict[str, Any]:
    """A bare httpx loop: CONCURRENCY workers posting the bodies the client would send."""
    shaper = MagpipeClient(token=TOKEN, base_url=sim.url)
    bodies = [
        shaper.body(
            CallRequest(
                to=number(offset + n),
                from_=CALLER,
                agent_id=AGENT,
                metadata={"row": n, CORRELATION_KEY: new_id()},
                webhook_url=f"http://127.0.0.1:9/webhooks/magpipe/{new_id()}",
                purpose="bench",
            )
        )
        for n in range(calls)
    ]
    await shaper.aclose()
    start = int((await sim.aprobe())["stats"]["placed"])
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = sim.url + PLACE_CALL_PATH
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:
        queue = iter(bodies)

        async def worker() -> None:
            for body in queue:
                response = await http.post(url, json=body, headers=headers)
                response.raise_for_status()

        async def workers() -> None:
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        began = time.perf_counter()
        load = asyncio.create_task(workers())
        result = await _placed(sim, start, calls, began, load)
        await load
    return result


async def _fill(url: str, offset: int, calls: int) -> None:
    store = Store(connectors.connect(url))
    await store.open()
    try:
        campaign = await store.create_campaign(
            "bench", CampaignSettings(from_numbers=(CALLER,), agent_id=AGENT, purpose="bench")
        )
        for chunk in range(0, calls, 1000):
            rows = [
                NewCall(to=number(offset + n), from_="", metadata={"row": n})
                for n in range(chunk, min(calls, chunk + 1000))
            ]
            await store.import_rows(str(campaign["id"]), rows)
    finally:
        await store.close()


async def daemon(sim: SimulatorProcess, offset: int, calls: int, tmp: Path) -> dict[str, Any]:
    """The whole daemon dialing a campaign of ``calls`` queued calls."""
    store = f"sqlite://{tmp / f'dialing-{offset}.db'}"
    await _fill(store, offset, calls)
    cfg = config.Config.model_validate(
        {
            "magpipe": {
                "base_url": sim.url,
                "token": TOKEN,
                "rate_limit": {"per_minute": 10**9, "per_hour": 10**12},
            },
            "defaults": {"from": CALLER, "agent_id": AGENT},
            "webhooks": {"listen": "127.0.0.1:0"},
            "api": {"listen": "127.0.0.1:0"},
            "store": store,
            "dialer": {
                "max_live_calls": 10_000_000,
                "calls_per_second": 10_000,
                "max_call_duration": 3600,
            },
        }
    )
    start = int((await sim.aprobe())["stats"]["placed"])
    daemon = Daemon(cfg, subscriptions=[])
    runner = asyncio.create_task(daemon.run())
    try:
        while "api" not in daemon.urls:  # up: the dialer starts claiming right after
            if runner.done():
                raise RuntimeError(f"the daemon stopped during start-up ({runner.result()})")
            await asyncio.sleep(0.001)
        result = await _placed(sim, start, calls, time.perf_counter(), runner)
    finally:
        daemon.stopping.set()
        status = await runner
    if status != 0:
        raise RuntimeError(f"the daemon exited with status {status}")
    return result


async def measure(calls: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "daemon": []}
    with (
        SimulatorProcess(
            time_scale=0.0,
            max_concurrent=10_000_000,
            balance=1e12,
            seed=1,
            faults={"lose_webhooks": 1.0},
        ) as sim,
        tempfile.TemporaryDirectory(prefix="bench-dialing-") as tmp,
    ):
        offset = 0
        for _ in range(rounds):
            runs["baseline"].append(await baseline(sim, offset, calls))
            offset += calls
            runs["daemon"].append(await daemon(sim, offset, calls, Path(tmp)))
            offset += calls
        sim.stop()

    def median(kind: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[kind]))

    base, dialer = median("baseline", "calls_per_s"), median("daemon", "calls_per_s")
    ratio = dialer / base
    return {
        "bench": "dialing",
        "calls": calls,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "daemon_calls_per_s": round(dialer, 1),
        "baseline_calls_per_s": round(base, 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET,
        "met": ratio >= TARGET,
        "daemon_cpu_ms_per_call": median("daemon", "cpu_ms_per_call"),
        "baseline_cpu_ms_per_call": median("baseline", "cpu_ms_per_call"),
        "daemon_max_loop_stall_ms": median("daemon", "max_loop_stall_ms"),
        "baseline_max_loop_stall_ms": median("baseline", "max_loop_stall_ms"),
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per run")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/daemon pairs")
    parser.add_argument("--quick", action="store_true", help="a ~20 s run (500 calls, 1 round)")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.rounds = 500, 1
    quiet()
    with contextlib.suppress(KeyboardInterrupt):
        emit(asyncio.run(measure(args.calls, args.rounds)))
        return 0
    return 130


if __name__ == "__main__":
    sys.exit(main())
