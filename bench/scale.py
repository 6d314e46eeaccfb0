"""Scale: importing a million-row campaign through the store's bulk ``import_rows`` (time and
peak memory), and the latency of claiming one call at queue depths of 1k, 100k and 1M.

The import streams generated rows (valid, distinct numbers, a small metadata object each) into
a campaign on a temporary SQLite file, ``--chunk`` rows per ``import_rows`` transaction, as the
demo and an HTTP import would. Peak RSS is the process's ``ru_maxrss`` (interpreter and modules
included; the figure before the import is given too). The baseline is the bare floor of the
same work in the same run: the same rows (ids, tokens, JSON metadata made the same way) written
by plain ``sqlite3`` ``executemany`` into the same schema with the same pragmas and chunking,
for ``--baseline-rows`` rows; the ratio compares rows per second over the first that many rows
of each (per-row cost grows with the table).

Claim latency: when the queue holds 1k, 100k and 1M rows (paused import, not counted in its
time), ``--claims`` claims of one call each (``claim_batch(limit=1)``, the dialer's transaction)
are timed, and so is a bare claim (plain ``sqlite3``: the head of the campaign's queue by its
index, made live, in one ``BEGIN IMMEDIATE`` transaction). Flat means the 1M median is within
2x of the 1k median.

The HTTP route (``POST /v1/campaigns?name=...`` with a CSV body, the daemon's control API in a
process of its own on a fresh database) imports ``--http-rows`` rows streamed by this process;
its time and the server's peak RSS are reported (the route validates each number, so it costs
more per row than the store alone). Prints one JSON line.

    .venv/bin/python bench/scale.py              # --rows 1000000
    .venv/bin/python bench/scale.py --quick      # 100k rows, ~20 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import cpu, emit, max_rss_mb, number, quiet
from aiohttp import ClientSession, ClientTimeout, web

from orchestrator import connectors
from orchestrator.connectors import protocol as connector
from orchestrator.model import NewCall, new_id, new_token
from orchestrator.store import ClaimRules, Store
from orchestrator.store.campaigns import CampaignSettings

TARGETS = {"import_seconds": 30.0, "peak_rss_mb": 200.0, "claim_flat_ratio": 2.0}
CALLER = "+16045551234"
DEPTHS = (1_000, 100_000, 1_000_000)
API_TOKEN = "bench-token"  # noqa: S105 - a throwaway token for a server on loopback


def rows(start: int, stop: int) -> Iterator[NewCall]:
    for n in range(start, stop):
        yield NewCall(to=number(n), from_="", metadata={"row": n, "tier": "gold"})


def _bare_claim(path: Path, campaign: str) -> float:
    """One claim as bare SQL on its own connection: seconds."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        began = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(
            "SELECT id FROM attempts WHERE status = 'queued' AND campaign = ? "
            "ORDER BY priority DESC, not_before LIMIT 1",
            (campaign,),
        ).fetchone()
        conn.execute(
            "UPDATE attempts SET status = 'dialing', live = 1, lease_owner = 'bare', "
            "placed_at = ? WHERE id = ?",
            (time.time(), row[0]),
        )
        conn.execute("COMMIT")
        return time.perf_counter() - began
    finally:
        conn.close()


async def _claims(store: Store, path: Path, campaign: str, claims: int) -> dict[str, float]:
    rules = ClaimRules(max_live=100_000_000, lease=3600.0, watchdog_after=3600.0)
    store_times, bare_times = [], []
    for _ in range(claims):
        began = time.perf_counter()
        batch = await store.claim_batch("bench", rules, limit=1)
        store_times.append(time.perf_counter() - began)
        assert len(batch.claims) == 1
        bare_times.append(await asyncio.to_thread(_bare_claim, path, campaign))
    return {
        "claim_p50_ms": round(statistics.median(store_times) * 1000, 3),
        "claim_max_ms": round(max(store_times) * 1000, 3),
        "bare_claim_p50_ms": round(statistics.median(bare_times) * 1000, 3),
    }


async def import_and_claim(
    path: Path, total: int, chunk: int, claims: int, checkpoint: int
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Import ``total`` rows, timing claims at each of DEPTHS on the way; the import's
    figures (with its time for the first ``checkpoint`` rows) and the claim latencies."""
    store = Store(connectors.connect(f"sqlite://{path}"))
    await store.open()
    rss_before = max_rss_mb()
    stops = sorted({d for d in DEPTHS if d <= total} | {total, checkpoint})
    latency: dict[str, dict[str, float]] = {}
    at_checkpoint = 0.0
    try:
        campaign = str(
            (await store.create_campaign("scale", CampaignSettings(from_numbers=(CALLER,))))["id"]
        )
        imported, spent = 0, 0.0
        for depth in stops:
            began = time.perf_counter()
            while imported < depth:
                size = min(chunk, depth - imported)
                await store.import_rows(campaign, list(rows(imported, imported + size)))
                imported += size
            spent += time.perf_counter() - began
            if depth == checkpoint:
                at_checkpoint = spent
            if depth in DEPTHS or depth == total:
                latency[str(depth)] = await _claims(store, path, campaign, claims)
        peak = max_rss_mb()
        progress = await store.campaign_progress(campaign)
    finally:
        await store.close()
    assert progress["calls"] == total, progress
    result = {
        "import_seconds": round(spent, 2),
        "import_rows_per_s": round(total / spent),
        "first_rows_per_s": round(checkpoint / at_checkpoint),
        "rss_before_import_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak, 1),
    }
    return result, latency


async def _schema(path: Path) -> str:
    store = Store(connectors.connect(f"sqlite://{path}"))
    await store.open()
    try:
        row = await store.create_campaign("bare", CampaignSettings(from_numbers=(CALLER,)))
    finally:
        await store.close()
    return str(row["id"])


def bare_import(path: Path, campaign: str, total: int, chunk: int) -> float:
    """The same rows written with plain sqlite3, a chunk per transaction: seconds."""
    sql = connector.queries("sqlite")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    try:
        began = time.perf_counter()
        for start in range(0, total, chunk):
            now = time.time()
            calls, attempts = [], []
            for new in rows(start, min(total, start + chunk)):
                call_id = new_id()
                calls.append(
                    {
                        "id": call_id, "to_number": new.to, "from_number": CALLER,
                        "agent_id": None, "campaign": campaign,
                        "metadata": json.dumps(dict(new.metadata), sort_keys=True),
                        "purpose": None, "goal": None, "template_id": None, "now": now,
                    }
                )  # fmt: skip
                attempts.append(
                    {
                        "id": new_id(), "call_id": call_id, "to_number": new.to,
                        "from_number": CALLER, "webhook_token": new_token(),
                        "priority": 0, "not_before": now, "now": now, "campaign": campaign,
                    }
                )  # fmt: skip
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql["bulk_insert_call"], calls)
            conn.executemany(sql["bulk_insert_attempt"], attempts)
            conn.execute("COMMIT")
        return time.perf_counter() - began
    finally:
        conn.close()


# -- the HTTP import route, the daemon's API in a process of its own -------------------------


def _serve_api(path: str, conn: Any) -> None:
    quiet()
    asyncio.run(_api_main(path, conn))


async def _api_main(path: str, conn: Any) -> None:
    from orchestrator import api, config

    store = Store(connectors.connect(f"sqlite://{path}"))
    await store.open()

    async def ready() -> tuple[bool, dict[str, Any]]:
        return True, {}

    control = api.ControlApi(
        store, token=API_TOKEN, defaults=config.Defaults(), on_queued=lambda: None, ready=ready
    )
    runner = web.AppRunner(control.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    conn.send({"url": f"http://127.0.0.1:{runner.addresses[0][1]}", "rss_mb": max_rss_mb()})
    await asyncio.to_thread(conn.recv)  # "stop"
    await runner.cleanup()
    await store.close()
    conn.send({"peak_rss_mb": max_rss_mb(), "cpu": cpu()})


async def _csv(total: int) -> Any:
    """The import file, generated as it is sent (64 KiB pieces)."""
    piece = ["to,metadata.row,metadata.tier\n"]
    size = 0
    for n in range(total):
        line = f"{number(n)},{n},gold\n"
        piece.append(line)
        size += len(line)
        if size >= 1 << 16:
            yield "".join(piece).encode()
            piece, size = [], 0
            await asyncio.sleep(0)
    yield "".join(piece).encode()


async def http_import(path: Path, total: int) -> dict[str, Any]:
    """``POST /v1/campaigns?name=...`` with a ``total``-row CSV streamed as the body."""
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_serve_api, args=(str(path), theirs), daemon=True)
    proc.start()
    try:
        hello = await asyncio.to_thread(mine.recv)
        headers = {
            "Authorization": f"Bearer {API_TOKEN}",
            "Content-Type": "text/csv",
            "X-Campaign-Settings": json.dumps({"from_numbers": [CALLER]}),
        }
        async with ClientSession(timeout=ClientTimeout(total=None)) as http:
            began = time.perf_counter()
            async with http.post(
                hello["url"] + "/v1/campaigns?name=http", data=_csv(total), headers=headers
            ) as response:
                answer = await response.json()
            elapsed = time.perf_counter() - began
        mine.send("stop")
        final = await asyncio.to_thread(mine.recv)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    imported = answer.get("import", {})
    if response.status != 201 or imported.get("queued") != total:
        raise RuntimeError(f"HTTP import answered {response.status}: {str(answer)[:300]}")
    return {
        "rows": total,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(total / elapsed),
        "server_rss_before_mb": round(hello["rss_mb"], 1),
        "server_peak_rss_mb": round(final["peak_rss_mb"], 1),
    }


async def measure(
    total: int, chunk: int, claims: int, baseline_rows: int, http_rows: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        bare_rows = min(total, baseline_rows)
        store_result, latency = await import_and_claim(
            Path(tmp) / "scale.db", total, chunk, claims, bare_rows
        )
        bare_path = Path(tmp) / "bare.db"
        campaign = await _schema(bare_path)
        bare_seconds = await asyncio.to_thread(bare_import, bare_path, campaign, bare_rows, chunk)
        http = await http_import(Path(tmp) / "http.db", http_rows) if http_rows else None
    bare_rate = bare_rows / bare_seconds
    first, last = latency[min(latency, key=int)], latency[max(latency, key=int)]
    flat = last["claim_p50_ms"] / first["claim_p50_ms"]
    met = {
        "import_seconds": store_result["import_seconds"] < TARGETS["import_seconds"],
        "peak_rss_mb": store_result["peak_rss_mb"] < TARGETS["peak_rss_mb"],
        "claim_flat_ratio": flat <= TARGETS["claim_flat_ratio"],
    }
    return {
        "bench": "scale",
        "rows": total,
        "chunk": chunk,
        **store_result,
        "baseline_rows": bare_rows,
        "baseline_rows_per_s": round(bare_rate),
        # Per-row cost grows with the table, so like is compared with like: the store's first
        # baseline_rows rows against the bare writer's same number of rows.
        "ratio": round(store_result["first_rows_per_s"] / bare_rate, 3),
        "claims_per_depth": claims,
        "claim_latency_by_depth": latency,
        "claim_flat_ratio": round(flat, 2),
        "http_import": http,
        # Like with like: HTTP over a fresh database against the store's first rows.
        "http_vs_store_ratio": (
            round(http["rows_per_s"] / store_result["first_rows_per_s"], 3)
            if http and http_rows == bare_rows
            else None
        ),
        "targets": TARGETS,
        "met": met,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to import")
    parser.add_argument("--chunk", type=int, default=1000, help="rows per import transaction")
    parser.add_argument("--claims", type=int, default=50, help="claims timed at each depth")
    parser.add_argument(
        "--baseline-rows", type=int, default=200_000, help="rows the bare baseline writes"
    )
    parser.add_argument(
        "--http-rows", type=int, default=200_000, help="rows imported through HTTP (0: none)"
    )
    parser.add_argument("--quick", action="store_true", help="100k rows (~25 s)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.baseline_rows, args.http_rows = 100_000, 50_000, 20_000
    quiet()
    emit(
        asyncio.run(measure(args.rows, args.chunk, args.claims, args.baseline_rows, args.http_rows))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
