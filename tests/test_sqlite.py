"""The SQLite connector's own behaviour: statements on the event loop, what may wait (another
process's writer, bulk writes) in its thread, and a transaction cancelled half-way."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator import exceptions
from orchestrator.connectors.sqlite import SQLiteConnector


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SQLiteConnector, SQLiteConnector]]:
    """Two connectors on one file: two daemons sharing a SQLite store."""
    url = f"sqlite://{tmp_path / 'shared.db'}"
    first, second = SQLiteConnector(url), SQLiteConnector(url, busy_timeout=5)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


async def put(conn: SQLiteConnector, key: str, value: str) -> None:
    async with conn.transaction() as tx:
        await tx.execute("kv_set", scope="t", key=key, value=value, now=0.0)


async def holding(conn: SQLiteConnector, release: asyncio.Event) -> asyncio.Task[None]:
    """A task holding ``conn``'s write transaction (it wrote a=1) until ``release`` is set."""
    held = asyncio.Event()

    async def hold() -> None:
        async with conn.transaction() as tx:
            await tx.execute("kv_set", scope="t", key="a", value="1", now=0.0)
            held.set()
            await release.wait()

    task = asyncio.create_task(hold())
    await held.wait()
    return task


async def kv(conn: SQLiteConnector, key: str) -> str | None:
    async with conn.transaction() as tx:
        row = await tx.fetchone("kv_get", scope="t", key=key)
    return None if row is None else str(row["value"])


async def test_waiting_for_another_writer_does_not_block_the_loop(
    pair: tuple[SQLiteConnector, SQLiteConnector],
) -> None:
    first, second = pair
    release = asyncio.Event()
    holder = await holding(first, release)
    writing = asyncio.create_task(put(second, "b", "2"))
    ticks = 0
    for _ in range(10):  # the loop keeps running while the second daemon waits for the lock
        await asyncio.sleep(0.02)
        ticks += 1
    assert ticks == 10 and not writing.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, writing), timeout=10)
    assert await kv(second, "a") == "1" and await kv(first, "b") == "2"


async def test_a_writer_held_past_the_busy_timeout_is_a_store_error(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'shared.db'}"
    first, second = SQLiteConnector(url), SQLiteConnector(url, busy_timeout=0.2)
    await first.open()
    await second.open()
    try:
        async with first.transaction():
            with pytest.raises(exceptions.StoreError, match="cannot begin a transaction"):
                async with second.transaction():
                    pass
        await put(second, "c", "3")  # usable once the writer is gone
    finally:
        await first.close()
        await second.close()
    assert not (tmp_path / "shared.db-journal").exists()


async def test_cancelled_bulk_write_rolls_back_and_the_connection_goes_on(
    pair: tuple[SQLiteConnector, SQLiteConnector],
) -> None:
    conn, _ = pair
    rows = [{"scope": "bulk", "key": str(i), "value": "v", "now": 0.0} for i in range(200_000)]

    async def bulk() -> None:
        async with conn.transaction() as tx:
            await tx.executemany("kv_set", rows)
            await asyncio.sleep(10)  # never reached in time: cancelled in the thread's work

    task = asyncio.create_task(bulk())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with conn.transaction() as tx:
        await tx.execute("kv_set", scope="t", key="after", value="ok", now=0.0)
        written = await tx.fetchone("kv_get", scope="bulk", key="0")
    assert written is None  # the cancelled transaction left nothing behind
    assert await kv(conn, "after") == "ok"


async def test_a_failing_statement_rolls_back_its_transaction(
    pair: tuple[SQLiteConnector, SQLiteConnector],
) -> None:
    conn, _ = pair

    async def half_written() -> None:
        async with conn.transaction() as tx:
            await tx.execute("kv_set", scope="t", key="x", value="1", now=0.0)
            await tx.execute("kv_set", scope="t", key="y")

    with pytest.raises(exceptions.StoreError, match="missing parameters"):
        await half_written()
    assert await kv(conn, "x") is None


async def test_a_caller_cancelled_while_waiting_for_the_lock_leaves_nothing_open(
    pair: tuple[SQLiteConnector, SQLiteConnector],
) -> None:
    first, second = pair
    release = asyncio.Event()
    holder = await holding(first, release)
    waiting = asyncio.create_task(put(second, "never", "x"))
    await asyncio.sleep(0.1)  # the second daemon's BEGIN now waits in its thread
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await holder
    # What the thread began after the cancellation was rolled back: both go on writing.
    await put(second, "b", "2")
    await put(first, "c", "3")
    assert [await kv(first, k) for k in ("a", "b", "c", "never")] == ["1", "2", "3", None]


async def test_a_waiter_cancelled_behind_a_rollback_does_not_let_the_next_one_jump_it(
    pair: tuple[SQLiteConnector, SQLiteConnector],
) -> None:
    conn, _ = pair
    rows = [{"scope": "bulk", "key": str(i), "value": "v", "now": 0.0} for i in range(200_000)]

    async def bulk() -> None:
        async with conn.transaction() as tx:
            await tx.executemany("kv_set", rows)

    task = asyncio.create_task(bulk())
    await asyncio.sleep(0.01)
    task.cancel()  # its rollback is left to run in the thread after the bulk write
    with pytest.raises(asyncio.CancelledError):
        await task
    behind = asyncio.create_task(kv(conn, "x"))
    await asyncio.sleep(0)
    behind.cancel()  # cancelled while waiting for that rollback
    with pytest.raises(asyncio.CancelledError):
        await behind
    await put(conn, "after", "ok")  # still waits for the rollback, then begins
    assert await kv(conn, "after") == "ok" and await kv(conn, "0") is None


CLOSE_DURING_BULK = """
import asyncio, sys
from orchestrator.connectors.sqlite import SQLiteConnector

async def main(path):
    rows = [{"scope": "b", "key": str(i), "value": "v", "now": 0.0} for i in range(300_000)]
    for round in range(3):
        conn = SQLiteConnector(f"sqlite://{path}.{round}")
        await conn.open()

        async def bulk():
            async with conn.transaction() as tx:
                await tx.executemany("kv_set", rows)

        task = asyncio.create_task(bulk())
        await asyncio.sleep(0.02)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await conn.close()  # while the bulk write still runs in the thread
    print("closed")

asyncio.run(main(sys.argv[1]))
"""


async def test_closing_while_the_thread_still_writes_waits_for_it(tmp_path: Path) -> None:
    # In a process of its own: closing a connection under a running statement crashes the
    # interpreter, which would take the test run with it.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLOSE_DURING_BULK, str(tmp_path / "closing.db"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "closed"
