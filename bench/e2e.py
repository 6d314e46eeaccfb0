"""End to end: a campaign dialled by the daemon, four webhooks per call through the intake,
every lifecycle event routed by a rule to a handler. Calls per second, the orchestrator's CPU
per call and webhook-to-handler latency, against a bare baseline moving the same HTTP traffic.

The simulator runs in a process of its own (``time_scale=0``, every call answered, so each
sends ``initiated``, ``ringing``, ``in-progress`` and ``completed``); this process is the
orchestrator alone, so its CPU time (``time.process_time``, every thread) is the orchestrator's.
The daemon runs whole on a temporary SQLite file holding the campaign (``--calls`` rows), with
the rule ``call.* -> log`` (the ``log`` plugin at ``debug``, filtered out by the log level), so
each event is an outbox row delivered to the handler. The handler is wrapped to count and time
events: latency is from the webhook's arrival at the intake (stamped just before it is parsed)
to the handler being called, for the events only a webhook can cause (``ringing``,
``in_progress``, ``completed``).

The baseline, in this same process and against the same simulator, is the bare traffic of the
same calls: an httpx client places them (the same ``--max-live`` calls live at once, a slot
freed by the call's ``completed`` webhook) and a bare aiohttp handler answers the webhooks 200.
A run stops when every call has completed or after ``--seconds``. ``calls_per_s`` and the CPU
per call count calls ended in the store; ``handled_calls_per_s`` those whose ``call.completed``
reached the handler (the outbox can lag behind the store).
Prints one JSON line.

    .venv/bin/python bench/e2e.py                # --calls 10000 --seconds 60
    .venv/bin/python bench/e2e.py --quick        # ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import LoopLag, SimulatorProcess, cpu, emit, number, percentile, quiet
from aiohttp import web

from orchestrator import config, connectors, intake
from orchestrator.daemon.supervisor import Daemon, subscriptions_from
from orchestrator.model import Event, NewCall
from orchestrator.plugin import Context
from orchestrator.provider.client import PLACE_CALL_PATH, CallRequest, MagpipeClient
from orchestrator.provider.simulator.model import Outcome
from orchestrator.store import Store, Webhook
from orchestrator.store.campaigns import CampaignSettings

TARGETS = {"calls_per_s": 500.0, "cpu_ms_per_call": 1.0, "latency_p99_ms": 50.0}
CALLER = "+16045551234"
AGENT = "c72ea2b8-1234-5678-9abc-def012345678"
TOKEN = "sim-token"  # noqa: S105 - the simulator's well-known fake token
SECRET = "whsec_simulator"  # noqa: S105 - the simulator's default webhook secret
WEBHOOK_ONLY = frozenset(("ringing", "in_progress", "completed"))


class Timed:
    """Wraps the rule's handler: counts events, times them from their webhook's arrival."""

    def __init__(self, inner: Any, arrivals: dict[tuple[str, str], float], calls: int) -> None:
        self.inner = inner
        self.arrivals = arrivals
        self.calls = calls
        self.completed = 0
        self.events = 0
        self.latencies: list[float] = []
        self.done = asyncio.Event()

    async def handle(self, event: Event, ctx: Context) -> None:
        now = time.time()
        self.events += 1
        if event.status in WEBHOOK_ONLY and event.call.provider_call_id:
            arrived = self.arrivals.pop((event.call.provider_call_id, event.status), None)
            if arrived is not None:
                self.latencies.append(now - arrived)
        await self.inner.handle(event, ctx)
        if event.type == "call.completed":
            self.completed += 1
            if self.completed >= self.calls:
                self.done.set()


def _stamp_arrivals() -> dict[tuple[str, str], float]:
    """Record when each webhook reached the intake, keyed by (provider call id, status)."""
    arrivals: dict[tuple[str, str], float] = {}
    parse = intake.parse

    def stamped(raw: bytes) -> Any:
        arrived = time.time()
        parsed = parse(raw)
        if isinstance(parsed, Webhook) and parsed.provider_call_id:
            arrivals.setdefault((parsed.provider_call_id, parsed.status.value), arrived)
        return parsed

    intake.parse = stamped  # type: ignore[assignment]
    return arrivals


async def _fill(url: str, offset: int, calls: int) -> str:
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
    return str(campaign["id"])


async def daemon(
    sim: SimulatorProcess, calls: int, max_live: int, seconds: float, tmp: Path
) -> dict[str, Any]:
    store = f"sqlite://{tmp / 'e2e.db'}"
    campaign = await _fill(store, 0, calls)
    cfg = config.Config.model_validate(
        {
            "magpipe": {
                "base_url": sim.url,
                "token": TOKEN,
                "webhook_secret": SECRET,
                # The simulator enforces no budget: the bench measures the daemon, not it.
                "rate_limit": {"per_minute": 10**9, "per_hour": 10**12},
            },
            "defaults": {"from": CALLER, "agent_id": AGENT},
            "webhooks": {"listen": "127.0.0.1:0"},
            "api": {"listen": "127.0.0.1:0"},
            "store": store,
            "dialer": {
                "max_live_calls": max_live,
                "calls_per_second": 100_000,
                "max_call_duration": 3600,
            },
            "plugins": {"events-log": {"use": "log", "level": "debug"}},
            "rules": [{"name": "every event", "on": "call.*", "do": "events-log"}],
        }
    )
    arrivals = _stamp_arrivals()
    subs = subscriptions_from(cfg)
    timed = Timed(subs[0].handler, arrivals, calls)
    subs = [dataclasses.replace(subs[0], handler=timed)]
    daemon = Daemon(cfg, subscriptions=subs)
    sim0 = await sim.aprobe()
    cpu0, began = cpu(), time.perf_counter()
    runner = asyncio.create_task(daemon.run())
    with LoopLag() as lag:
        finished = asyncio.ensure_future(timed.done.wait())
        await asyncio.wait({runner, finished}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        elapsed, used = time.perf_counter() - began, cpu() - cpu0
        finished.cancel()
    sim1 = await sim.aprobe()
    # How far the store got meanwhile (the handler may lag behind it).
    ended = (await daemon.store.campaign_progress(campaign))["by_status"].get("completed", 0)
    daemon.stopping.set()
    status = await runner
    if status != 0:
        raise RuntimeError(f"the daemon exited with status {status}")
    done = timed.completed
    return {
        "completed": ended,
        "seconds": round(elapsed, 2),
        # Calls ended in the store (dialled, all four webhooks taken): the headline rate.
        "calls_per_s": round(ended / elapsed, 1),
        # Calls whose call.completed reached the handler (the outbox may lag behind).
        "handled": done,
        "handled_calls_per_s": round(done / elapsed, 1),
        "cpu_ms_per_call": round(used / max(ended, 1) * 1000, 3),
        "simulator_cpu_ms_per_call": round((sim1["cpu"] - sim0["cpu"]) / max(ended, 1) * 1000, 3),
        "events_handled": timed.events,
        "latency_samples": len(timed.latencies),
        "latency_p50_ms": round(percentile(timed.latencies, 0.5) * 1000, 2),
        "latency_p99_ms": round(percentile(timed.latencies, 0.99) * 1000, 2),
        "max_loop_stall_ms": lag.max_ms,
    }


async def baseline(
    sim: SimulatorProcess, calls: int, max_live: int, seconds: float
) -> dict[str, Any]:
    """The same calls as bare HTTP: place with httpx, answer the webhooks 200."""
    slots = asyncio.Semaphore(max_live)
    state = {"completed": 0, "errors": 0}
    finished = asyncio.Event()

    async def webhook(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("status") == Outcome.COMPLETED.value:
            slots.release()
            state["completed"] += 1
            if state["completed"] >= calls:
                finished.set()
        return web.Response(status=200)

    receiver = web.Application()
    receiver.router.add_post(intake.PATH + "/{token}", webhook)
    runner = web.AppRunner(receiver, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hooks = f"http://127.0.0.1:{runner.addresses[0][1]}{intake.PATH}/bare"
    shaper = MagpipeClient(token=TOKEN, base_url=sim.url)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = sim.url + PLACE_CALL_PATH
    pending: set[asyncio.Task[None]] = set()
    offset = 5_000_000  # numbers the daemon's campaign does not use

    async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:

        async def place(n: int) -> None:
            body = shaper.body(
                CallRequest(
                    to=number(offset + n), from_=CALLER, agent_id=AGENT,
                    metadata={"row": n}, webhook_url=hooks, purpose="bench",
                )
            )  # fmt: skip
            try:
                response = await http.post(url, json=body, headers=headers)
                response.raise_for_status()
            except httpx.HTTPError:
                state["errors"] += 1
                slots.release()

        async def dial() -> None:
            for n in range(calls):
                await slots.acquire()
                task = asyncio.create_task(place(n))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await finished.wait()

        sim0 = await sim.aprobe()
        cpu0, began = cpu(), time.perf_counter()
        with LoopLag() as lag:
            dialer = asyncio.create_task(dial())
            await asyncio.wait({dialer}, timeout=seconds)
            elapsed, used = time.perf_counter() - began, cpu() - cpu0
        sim1 = await sim.aprobe()
        dialer.cancel()
        for task in list(pending):
            task.cancel()
        await asyncio.gather(dialer, *pending, return_exceptions=True)
    await shaper.aclose()
    await runner.cleanup()
    done = state["completed"]
    return {
        "completed": done,
        "seconds": round(elapsed, 2),
        "calls_per_s": round(done / elapsed, 1),
        "cpu_ms_per_call": round(used / max(done, 1) * 1000, 3),
        "simulator_cpu_ms_per_call": round((sim1["cpu"] - sim0["cpu"]) / max(done, 1) * 1000, 3),
        "errors": state["errors"],
        "max_loop_stall_ms": lag.max_ms,
    }


async def measure(calls: int, max_live: int, seconds: float) -> dict[str, Any]:
    with (
        SimulatorProcess(
            time_scale=0.0,
            max_concurrent=10_000_000,
            balance=1e12,
            seed=1,
            outcome_mix={Outcome.COMPLETED: 1.0},
            webhook_secret=SECRET,
        ) as sim,
        tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp,
    ):
        base = await baseline(sim, calls, max_live, seconds)
        real = await daemon(sim, calls, max_live, seconds, Path(tmp))
        sim.stop()
    met = {
        "calls_per_s": real["calls_per_s"] >= TARGETS["calls_per_s"],
        "cpu_ms_per_call": real["cpu_ms_per_call"] <= TARGETS["cpu_ms_per_call"],
        "latency_p99_ms": real["latency_p99_ms"] < TARGETS["latency_p99_ms"],
    }
    return {
        "bench": "e2e",
        "calls": calls,
        "max_live": max_live,
        "seconds_cap": seconds,
        "calls_per_s": real["calls_per_s"],
        "cpu_ms_per_call": real["cpu_ms_per_call"],
        "latency_p50_ms": real["latency_p50_ms"],
        "latency_p99_ms": real["latency_p99_ms"],
        "baseline_calls_per_s": base["calls_per_s"],
        "baseline_cpu_ms_per_call": base["cpu_ms_per_call"],
        "handled_calls_per_s": real["handled_calls_per_s"],
        "ratio_calls_per_s": round(real["calls_per_s"] / max(base["calls_per_s"], 1e-9), 3),
        "ratio_cpu_per_call": round(
            real["cpu_ms_per_call"] / max(base["cpu_ms_per_call"], 1e-9), 2
        ),
        "targets": TARGETS,
        "met": met,
        "daemon": real,
        "baseline": base,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000, help="rows in the campaign")
    parser.add_argument("--max-live", type=int, default=100, help="dialer.max_live_calls")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop each run after this long")
    parser.add_argument("--quick", action="store_true", help="a ~20 s run (400 calls)")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.seconds = 400, 20.0
    quiet()
    emit(asyncio.run(measure(args.calls, args.max_live, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
