"""Fleet claim throughput: calls dialled per second and claim latency with one and with three
daemon processes on the same PostgreSQL database (or SQLite file).

Each "daemon" is a process running what the dialer runs per call against the store: claim the
next attempt (serialised across the fleet by ``lock_dialing``), record the placement, then a
terminal webhook frees the slot. Only the provider is left out, so the figure is the store's
ceiling, not the provider's. Prints one JSON line.

    python bench/fleet.py --store postgresql://postgres@127.0.0.1:5432/test --calls 3000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
import uuid
from typing import Any

from orchestrator import connectors
from orchestrator.connectors import protocol as connector
from orchestrator.model import CallStatus, NewCall
from orchestrator.store import Claim, Store, Webhook


def _url(base: str, schema: str) -> str:
    if base.startswith("sqlite://"):
        return f"{base.removesuffix('.db')}-{schema}.db"
    joiner = "&" if "?" in base else "?"
    return f"{base}{joiner}schema={schema}"


async def _fill(url: str, calls: int) -> None:
    store = Store(connectors.connect(url))
    await store.open()
    try:
        for n in range(calls):
            to = f"+1415{n // 10000 % 1000:03d}{n % 10000:04d}"
            await store.create_call(NewCall(to=to, from_="+16045551234", agent_id="agent"))
    finally:
        await store.close()


async def _daemon(url: str, owner: str, start_at: float) -> list[float]:
    store = Store(connectors.connect(url))
    await store.open()
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()

    async def finish(claim: Claim) -> None:
        provider_id = f"P-{claim.attempt_id}"
        await store.placed(
            claim.attempt_id, provider_call_id=provider_id, provider_status="initiated"
        )
        hook = Webhook(
            raw=json.dumps({"id": provider_id, "status": "completed"}).encode(),
            status=CallStatus.COMPLETED,
            provider_call_id=provider_id,
            duration=30.0,
        )
        await store.ingest(hook, token=claim.attempt.webhook_token)

    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while True:
            began = time.perf_counter()
            got = await store.claim_attempt(owner, max_live=50, lease=30, watchdog_after=600)
            latencies.append(time.perf_counter() - began)
            if isinstance(got, Claim):
                task = asyncio.create_task(finish(got))
                pending.add(task)
                task.add_done_callback(pending.discard)
                continue
            if not pending and await store.live_count() == 0:
                # Nothing live anywhere and nothing claimable: the queue is drained.
                probe = await store.claim_attempt(owner, max_live=50, lease=30, watchdog_after=600)
                if probe is None:
                    break
                assert isinstance(probe, Claim)
                await finish(probe)
            else:
                await asyncio.sleep(0.001)
        if pending:
            await asyncio.wait(pending)
    finally:
        await store.close()
    return latencies


def _run_daemon(url: str, owner: str, start_at: float, out: Any) -> None:
    out.put(asyncio.run(_daemon(url, owner, start_at)))


def _drop(url: str, schema: str) -> None:
    if not url.startswith("postgres"):
        return

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(url.split("?")[0])
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()

    asyncio.run(drop())


def measure(base: str, daemons: int, calls: int) -> dict[str, Any]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    url = _url(base, schema)
    asyncio.run(_fill(url, calls))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 2.0  # every process connected before the clock starts
    procs = [
        ctx.Process(target=_run_daemon, args=(url, f"bench-{n}", start_at, out))
        for n in range(daemons)
    ]
    for proc in procs:
        proc.start()
    latencies = [value for _ in procs for value in out.get()]
    for proc in procs:
        proc.join()
    elapsed = time.time() - start_at
    _drop(base, schema)
    latencies.sort()
    return {
        "daemons": daemons,
        "calls": calls,
        "calls_per_s": round(calls / elapsed, 1),
        "claim_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "claim_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    one = measure(args.store, 1, args.calls)
    three = measure(args.store, 3, args.calls)
    print(
        json.dumps(
            {
                "bench": "fleet",
                "store": connector.redact_url(args.store).split("://")[0],
                "one": one,
                "three": three,
                "three_vs_one": round(three["calls_per_s"] / one["calls_per_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
