"""``orchestrator demo``: the product on a laptop with nothing configured.

It starts the built-in simulator in this process, places a few calls through the real client
and prints each call's lifecycle as the simulator's status webhooks arrive.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from aiohttp import web

from orchestrator import client, exceptions
from orchestrator.simulation import Outcome, Script, SimulatorConfig
from orchestrator.simulator import Simulator

FROM = "+16045551234"
AGENT = "c72ea2b8-1234-5678-9abc-def012345678"
TERMINAL = {"completed", "busy", "no-answer", "failed", "canceled"}

# One call per outcome, plus one the client refuses locally and one the provider refuses.
CALLS: list[tuple[str, Script | None]] = [
    ("+14155550101", Script(outcome=Outcome.COMPLETED, duration=95, ring=6)),
    ("+14155550102", Script(outcome=Outcome.BUSY, ring=2)),
    ("+14155550103", Script(outcome=Outcome.NO_ANSWER, ring=30)),
    ("+14155550104", Script(outcome=Outcome.FAILED, ring=1)),
    ("+14155550105", Script(outcome=Outcome.CANCELED, ring=3)),
    ("+1415555010", None),
]


async def run(out: Any = None) -> int:
    """Run the demo; print to ``out`` (stdout by default). Returns an exit status."""
    out = out or sys.stdout
    events: dict[str, list[str]] = {}
    finished = asyncio.Event()
    expected: set[str] = set()

    async def receive(request: web.Request) -> web.Response:
        body = await request.json()
        call_id, status = body.get("call_id"), body.get("status")
        events.setdefault(call_id, []).append(status)
        print(f"  webhook  {call_id[:8]}  {status}", file=out)
        done = {c for c, seen in events.items() if TERMINAL & set(seen)}
        if expected and expected <= done:
            finished.set()
        return web.json_response({"ok": True})

    receiver = web.Application()
    receiver.router.add_post("/webhooks", receive)
    runner = web.AppRunner(receiver, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    scripts = {to: script for to, script in CALLS if script is not None}
    sim = Simulator(SimulatorConfig(time_scale=0.01, seed=1, scripts=scripts))
    base_url = await sim.start()
    print(f"simulator on {base_url}, webhooks to http://127.0.0.1:{port}/webhooks", file=out)
    try:
        async with client.MagpipeClient(token=sim.config.token, base_url=base_url) as magpipe:
            for to, _ in CALLS:
                request = client.CallRequest(
                    to=to,
                    from_=FROM,
                    agent_id=AGENT,
                    metadata={"campaign": "demo"},
                    webhook_url=f"http://127.0.0.1:{port}/webhooks",
                    purpose="Appointment reminder",
                )
                try:
                    placed = await magpipe.place_call(request)
                except exceptions.OrchestratorError as exc:
                    print(f"call {to}: refused: {exc}", file=out)
                    continue
                expected.add(placed.call_id)
                print(f"call {to}: {json.dumps(dict(placed.raw))}", file=out)
            await asyncio.wait_for(finished.wait(), timeout=30)
    finally:
        await sim.stop()
        await runner.cleanup()
    print("\nsummary", file=out)
    for record in sim.calls:
        seen = " -> ".join(events.get(record.id, []))
        print(f"  {record.to}  {record.outcome.value:<10} {seen}", file=out)
    return 0
