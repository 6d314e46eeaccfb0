"""Webhook intake throughput: status webhooks durably accepted per second by the real intake,
against a bare aiohttp handler that only answers 200, both driven by the same load generator.

The intake is the daemon's (:class:`orchestrator.intake.Intake` with metrics) over a store on a
temporary SQLite file, its events routed by an event bus with one rule (``call.*``), so each
webhook writes its receipt, the attempt and call, the event and one outbox row before the 200.
The calls are real: imported as a campaign and claimed (``dialing``) beforehand, each with its
per-call token. Every call gets the documented ``call.status_changed`` webhooks ``initiated``,
``ringing``, ``in-progress`` and ``completed`` in order, signed as the simulator signs them.

The load generator runs in a process of its own (so the server under test has a core): N
connections (``--connections``), each sending one call's four webhooks in turn, then the next
call's. The baseline is a bare aiohttp app on the same path that reads the body and answers 200,
driven by the same requests. Rounds alternate baseline and intake (fresh calls each round); each
figure is the median of its rounds. Besides rates, each side's server CPU per request is
reported (less sensitive to a noisy machine than rates). Prints one JSON line.

    .venv/bin/python bench/intake.py             # --calls 2000 --rounds 3 --connections 32
    .venv/bin/python bench/intake.py --quick     # ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import cpu, emit, number, percentile, quiet
from aiohttp import web

from orchestrator import bus, connectors, metrics
from orchestrator.intake import PATH, Intake
from orchestrator.model import CORRELATION_KEY, NewCall
from orchestrator.provider.simulator import SIGNATURE_HEADER, sign
from orchestrator.store import ClaimRules, Store
from orchestrator.store.campaigns import CampaignSettings

TARGET = 0.7
CALLER = "+16045551234"
SECRET = "whsec_bench"  # noqa: S105 - a throwaway secret for a temporary store
STATUSES = ("initiated", "ringing", "in-progress", "completed")
BASELINE_REQUESTS = 16_000

#: One webhook: (path, body, headers); a call's four are sent in order on one connection.
Request = tuple[str, bytes, dict[str, str]]


# -- the load generator (its own process) ------------------------------------------------------


async def _load(url: str, calls: list[list[Request]], connections: int) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(calls)
    limit = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=limit) as session:

        async def connection() -> None:
            for call in queue:
                for path, body, headers in call:
                    began = time.perf_counter()
                    async with session.post(url + path, data=body, headers=headers) as response:
                        await response.read()
                    latencies.append(time.perf_counter() - began)
                    statuses[response.status] = statuses.get(response.status, 0) + 1

        cpu0, began = cpu(), time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(connections)))
        elapsed, used = time.perf_counter() - began, cpu() - cpu0
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "statuses": statuses,
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "loadgen_cpu_share": round(used / elapsed, 2),
    }


def _loadgen(url: str, calls: list[list[Request]], connections: int, out: Any) -> None:
    out.send(asyncio.run(_load(url, calls, connections)))


def drive(url: str, calls: list[list[Request]], connections: int) -> dict[str, Any]:
    """Run the load generator in a child process against ``url``; its figures."""
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_loadgen, args=(url, calls, connections, theirs), daemon=True)
    proc.start()
    result: dict[str, Any] = mine.recv()
    proc.join(10)
    return result


# -- the servers ---------------------------------------------------------------------------------


async def _serve(application: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(application, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _under_load(
    application: web.Application, calls: list[list[Request]], connections: int
) -> dict[str, Any]:
    """Serve ``application`` here while the load generator runs; its figures and ours."""
    runner, url = await _serve(application)
    try:
        cpu0 = cpu()
        result = await asyncio.to_thread(drive, url, calls, connections)
        server_cpu = cpu() - cpu0
    finally:
        await runner.cleanup()
    ok = result["statuses"].get(200, 0)
    result["ok_per_s"] = round(ok / result["seconds"], 1)
    result["server_cpu_ms_per_request"] = round(server_cpu / result["requests"] * 1000, 3)
    result["seconds"] = round(result["seconds"], 2)
    return result


async def bare(calls: list[list[Request]], connections: int) -> dict[str, Any]:
    """The floor: an aiohttp handler that reads the body and answers 200. It is fast, so the
    same requests are sent over again until there are at least BASELINE_REQUESTS of them."""
    calls = calls * max(1, -(-BASELINE_REQUESTS // (len(calls) * len(STATUSES))))

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200)

    application = web.Application()
    application.router.add_post(PATH + "/{token}", ok)
    return await _under_load(application, calls, connections)


def _routes() -> bus.EventBus:
    class Nothing:
        async def handle(self, event: Any, ctx: Any) -> None:
            return None

    return bus.EventBus([bus.Subscription(name="all", handler=Nothing(), patterns=("call.*",))])


async def prepare(path: Path, calls: int, offset: int) -> tuple[str, list[list[Request]]]:
    """Import ``calls`` calls, claim them all (``dialing``) and build their webhooks; the
    campaign's id and the webhooks."""
    store = Store(connectors.connect(f"sqlite://{path}"), router=_routes().route)
    await store.open()
    try:
        campaign = await store.create_campaign(
            "bench", CampaignSettings(from_numbers=(CALLER,), purpose="bench")
        )
        for chunk in range(0, calls, 1000):
            rows = [
                NewCall(to=number(offset + n), from_="", metadata={"row": n})
                for n in range(chunk, min(calls, chunk + 1000))
            ]
            await store.import_rows(str(campaign["id"]), rows)
        rules = ClaimRules(max_live=10_000_000, lease=3600.0, watchdog_after=3600.0)
        claims = []
        while len(claims) < calls:
            batch = await store.claim_batch("bench", rules, limit=500)
            if not batch.claims:
                raise RuntimeError(f"only {len(claims)} of {calls} calls could be claimed")
            claims.extend(batch.claims)
    finally:
        await store.close()
    out = []
    for claim in claims:
        provider_id = str(uuid.uuid4())
        path_ = f"{PATH}/{claim.attempt['webhook_token']}"
        metadata = {**json.loads(claim.call["metadata"]), CORRELATION_KEY: claim.attempt_id}
        call: list[Request] = []
        for status in STATUSES:
            body: dict[str, Any] = {
                "event": "call.status_changed",
                "call_id": provider_id,
                "status": status,
                "recording_url": None,
                "transcript": None,
                "metadata": metadata,
                "timestamp": "2026-01-01T00:00:00.000Z",
            }
            if status == "completed":
                body["duration"] = 42
            raw = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET, raw)}
            call.append((path_, raw, headers))
        out.append(call)
    return str(campaign["id"]), out


async def intake(
    path: Path, campaign: str, calls: list[list[Request]], connections: int
) -> dict[str, Any]:
    """The daemon's intake over the prepared store; checks every call ended ``completed``."""
    routes = _routes()
    store = Store(connectors.connect(f"sqlite://{path}"), router=routes.route)
    await store.open()
    try:
        application = Intake(
            store, publish=routes.publish, secret=SECRET, metrics=metrics.Metrics()
        ).app()
        result = await _under_load(application, calls, connections)
        progress = await store.campaign_progress(campaign)
        result["completed_calls"] = progress["by_status"].get("completed", 0)
        if result["completed_calls"] != len(calls):
            raise RuntimeError(f"{result['completed_calls']} of {len(calls)} calls completed")
    finally:
        await store.close()
    return result


async def measure(calls: int, rounds: int, connections: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "intake": []}
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        for n in range(rounds):
            path = Path(tmp) / f"intake-{n}.db"
            campaign, prepared = await prepare(path, calls, offset=n * calls)
            runs["baseline"].append(await bare(prepared, connections))
            runs["intake"].append(await intake(path, campaign, prepared, connections))

    def median(kind: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[kind]))

    base, real = median("baseline", "ok_per_s"), median("intake", "ok_per_s")
    ratio = real / base
    return {
        "bench": "intake",
        "calls": calls,
        "webhooks": calls * len(STATUSES),
        "rounds": rounds,
        "connections": connections,
        "intake_events_per_s": round(real, 1),
        "baseline_events_per_s": round(base, 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET,
        "met": ratio >= TARGET,
        "intake_server_cpu_ms_per_event": median("intake", "server_cpu_ms_per_request"),
        "baseline_server_cpu_ms_per_event": median("baseline", "server_cpu_ms_per_request"),
        "intake_p99_ms": median("intake", "p99_ms"),
        "baseline_p99_ms": median("baseline", "p99_ms"),
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (4 webhooks each)")
    parser.add_argument("--rounds", type=int, default=3, help="baseline/intake pairs")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument("--quick", action="store_true", help="a ~20 s run (600 calls, 1 round)")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.rounds = 600, 1
    quiet()
    emit(asyncio.run(measure(args.calls, args.rounds, args.connections)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
