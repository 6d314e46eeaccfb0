"""``orchestrator demo``: the product on a laptop with nothing configured.

It runs the built-in simulator and the daemon in this process, on a temporary SQLite file,
queues a small campaign, and prints each call's lifecycle events as the handlers receive them,
then a summary of outcomes.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from orchestrator import app, bus, config, phone
from orchestrator.model import CallStatus, Event, NewCall
from orchestrator.plugin import Context
from orchestrator.simulation import Faults, SimulatorConfig
from orchestrator.simulator import Simulator

FROM = "+16045551234"
AGENT = "c72ea2b8-1234-5678-9abc-def012345678"


class Printer:
    """A handler that prints one line per event."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()

    async def handle(self, event: Event, ctx: Context) -> None:
        extra = ""
        if event.duration:
            extra = f" ({event.duration:.0f}s)"
        if event.error:
            extra = f" ({event.error.get('code')})"
        print(
            f"{time.monotonic() - self.started:6.2f}s  {event.call.to}  {event.type}{extra}",
            file=self.out,
        )


async def run(out: TextIO | None = None, *, calls: int = 24) -> int:
    """Run the demo; print to ``out`` (stdout by default). Returns an exit status."""
    out = out or sys.stdout
    sim = Simulator(
        SimulatorConfig(
            time_scale=0.01,
            seed=42,
            max_concurrent=50,
            faults=Faults(duplicate_webhooks=0.2, out_of_order=0.2, early_webhook=0.2),
        )
    )
    base_url = await sim.start()
    with tempfile.TemporaryDirectory(prefix="orchestrator-demo-") as tmp:
        cfg = config.Config.model_validate(
            {
                "magpipe": {"base_url": base_url, "token": sim.config.token, "timeout": "5s"},
                "defaults": {"from": FROM, "agent_id": AGENT},
                "webhooks": {"listen": "127.0.0.1:0"},
                "api": {"listen": "127.0.0.1:0"},
                "store": f"sqlite://{Path(tmp) / 'demo.db'}",
                "dialer": {"max_live_calls": 8, "calls_per_second": 20, "max_call_duration": "10s"},
            }
        )
        printer = bus.Subscription(name="printer", handler=Printer(out), patterns=("call.*",))
        daemon = app.Daemon(cfg, subscriptions=[printer], shutdown_grace=5)
        runner = asyncio.create_task(daemon.run(), name="daemon")
        try:
            await _wait_open(daemon, runner)
            print(f"simulator {base_url}  daemon webhooks {daemon.urls['webhooks']}", file=out)
            ids = []
            for i in range(calls):
                to = phone.validate_number(f"+1415555{2000 + i:04d}")
                call, _ = await daemon.store.create_call(
                    NewCall(
                        to=to,
                        from_=FROM,
                        metadata={"campaign": "demo", "row": i},
                        purpose="Appointment reminder",
                        campaign="demo",
                    )
                )
                ids.append(call["id"])
            daemon.publish([])
            assert daemon._dialer is not None
            daemon._dialer.wake.set()
            rows = await _wait_ended(daemon, ids, runner)
        finally:
            daemon.stopping.set()
            status = await runner
            await sim.stop()
    outcomes = Counter(r["status"] for r in rows)
    print("\nsummary", file=out)
    for status_name, count in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {status_name:<12} {count}", file=out)
    stats = sim.stats()
    print(
        f"  dials {stats['placed']} for {len(rows)} calls; peak live {stats['max_live_seen']}",
        file=out,
    )
    return status


async def _wait_open(daemon: app.Daemon, runner: asyncio.Task[int]) -> None:
    while "api" not in daemon.urls:
        if runner.done():
            runner.result()
            raise RuntimeError("the daemon stopped during start-up")
        await asyncio.sleep(0.01)


async def _wait_ended(
    daemon: app.Daemon, ids: list[str], runner: asyncio.Task[int]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        rows = [r for r in await daemon.store.list_calls(limit=1000) if r["id"] in set(ids)]
        if all(CallStatus(r["status"]).terminal for r in rows) and len(rows) == len(ids):
            # Let the last deliveries reach the printer.
            await asyncio.sleep(0.3)
            return rows
        if runner.done() or time.monotonic() > deadline:
            raise RuntimeError("the demo did not finish")
        await asyncio.sleep(0.05)
