"""The embedded SQLite connector (stdlib ``sqlite3``, WAL mode): the default store.

Writes go through one connection, one transaction at a time (SQLite has one writer anyway);
``BEGIN IMMEDIATE`` takes the write lock up front, so two daemons on one file serialise their
claims instead of failing half-way through a transaction.

Where each statement runs is chosen for the event loop's sake. A small statement on a held
write transaction takes microseconds and cannot wait on a lock, so it runs on the loop itself:
handing it to a worker thread (as aiosqlite does) costs ten times the statement, and under load
each hand-off also waits for the GIL (``bench/README.md`` has the figures). What could stall the
loop goes to the connector's one worker thread instead:

* ``BEGIN IMMEDIATE`` when another process holds the write lock (it is tried on the loop with no
  busy wait first, and waits up to ``busy_timeout`` in the thread only if that fails);
* bulk writes (``executemany``) and the named queries in :data:`OFF_LOOP`, which scan or change
  many rows (counts over a whole campaign, cancelling a campaign, listings);
* migrations, and WAL checkpoints (on a connection of their own, so writers carry on), whose
  fsyncs are the only disk waits: commits themselves do not fsync (``synchronous = NORMAL``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from orchestrator import exceptions
from orchestrator.connectors import protocol as connector
from orchestrator.connectors.protocol import Row

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Named queries that may touch many rows: they run in the worker thread, off the event loop.
#: The claims are not among them although they can pass over many rows not yet due (80 ms for
#: a million deliveries backing off, 60 ms for a million calls outside their calling window):
#: they run on every turn, a hop to the thread costs the busy daemon more than that rare scan
#: saves, and the write lock is held for the scan wherever it runs.
OFF_LOOP = frozenset(
    {
        "campaign_pending_delivery",
        "campaign_progress",
        "campaign_queued_numbers",
        "cancel_campaign_calls",
        "cancel_campaign_queue",
        "count_dead_deliveries",
        "count_queued",
        "list_calls",
        "list_campaign_errors",
        "list_campaigns",
        "list_open_campaigns",
        "list_deliveries",
        "list_do_not_call",
        "list_events",
        "queued_by_hold",
        "release_attempts",
        "release_deliveries",
        "reprioritize_campaign_queue",
        "rescue_attempts",
    }
)

#: Rows changed between WAL checkpoints (SQLite's own auto-checkpoint would run, and fsync,
#: inside a commit on the event loop; it is turned off and done here in the worker thread).
CHECKPOINT_CHANGES = 5000


class _Offload(Protocol):
    def __call__(self, fn: Callable[[], T], /) -> asyncio.Future[T]: ...


def _busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


class _SQLiteTransaction:
    def __init__(
        self,
        conn: sqlite3.Connection,
        queries: dict[str, str],
        offload: _Offload,
    ) -> None:
        self._conn = conn
        self._queries = queries
        self._offload = offload
        self.offloaded = False  # a statement was handed to the thread and not awaited to its end

    def _sql(self, name: str, params: Mapping[str, Any]) -> str:
        try:
            sql = self._queries[name]
        except KeyError:
            raise exceptions.StoreError(f"unknown query {name}") from None
        connector.check_params(sql, params, name)
        return sql

    def _run(self, query: str, sql: str, params: Mapping[str, Any]) -> tuple[list[Row], int]:
        try:
            cursor = self._conn.execute(sql, params)
            try:
                rows = [dict(row) for row in cursor.fetchall()]
                return rows, cursor.rowcount
            finally:
                cursor.close()
        except sqlite3.Error as exc:
            raise exceptions.StoreError(f"{query}: {exc}") from exc

    async def _statement(self, query: str, params: dict[str, Any]) -> tuple[list[Row], int]:
        sql = self._sql(query, params)
        if query in OFF_LOOP:
            return await self._off_loop(lambda: self._run(query, sql, params))
        return self._run(query, sql, params)

    async def _off_loop(self, fn: Callable[[], T]) -> T:
        self.offloaded = True
        result = await self._offload(fn)
        self.offloaded = False
        return result

    async def fetch(self, query: str, **params: Any) -> list[Row]:
        rows, _ = await self._statement(query, params)
        return rows

    async def fetchone(self, query: str, **params: Any) -> Row | None:
        rows, _ = await self._statement(query, params)
        return rows[0] if rows else None

    async def execute(self, query: str, **params: Any) -> int:
        _, count = await self._statement(query, params)
        return count

    async def executemany(self, query: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        sql = self._sql(query, rows[0])

        def run() -> None:
            try:
                self._conn.executemany(sql, [dict(r) for r in rows])
            except sqlite3.Error as exc:
                raise exceptions.StoreError(f"{query}: {exc}") from exc

        await self._off_loop(run)


class SQLiteConnector:
    """A store in one SQLite file: what follows ``sqlite://`` is the path, so
    ``sqlite:///var/lib/orchestrator/state.db`` is absolute and ``sqlite://state.db`` is
    relative to the working directory."""

    dialect = "sqlite"

    def __init__(self, url: str, *, busy_timeout: float = 30.0) -> None:
        self.path = url.removeprefix("sqlite://")
        if not self.path:
            raise exceptions.ConfigError("the sqlite store URL names no file: sqlite://PATH")
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        self._queries = connector.queries(self.dialect)
        self._checkpointed_at = 0
        # A rollback left running in the thread by a cancellation: the next BEGIN waits for it.
        self._settling: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"SQLiteConnector(path={self.path!r})"

    def _offload(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._thread is None:
            raise exceptions.StoreError("the SQLite store is not open")
        return asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _connect(self) -> sqlite3.Connection:
        # check_same_thread=False: the connection is used from the loop and from the worker
        # thread, never both at once (the transaction lock, and awaiting every hand-off).
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a commit survives a process crash (kill -9); only a power loss
        # can take back the last transactions.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        try:
            self._conn = await self._offload(self._connect)
            await self._offload(self._migrate)
            if self.path != ":memory:":
                self._checkpointer = await self._offload(self._connect)
                self._conn.execute("PRAGMA wal_autocheckpoint = 0")
            # Statements on the loop never wait for a lock: BEGIN falls back to the thread.
            self._conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error as exc:
            await self.close()
            raise exceptions.StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc

    async def close(self) -> None:
        """Close the connections in the thread, after whatever still runs there (a statement
        a cancellation left running, a rollback, a checkpoint): never under its feet."""
        conns = [c for c in (self._conn, self._checkpointer) if c is not None]
        self._conn = self._checkpointer = None

        def close_all() -> None:
            for conn in conns:
                conn.close()

        thread = self._thread
        if thread is None:
            close_all()
            return
        try:
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(thread, close_all))
        finally:
            self._thread = None
            thread.shutdown(wait=False)

    def _migrate(self) -> None:
        conn = self._require()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(connector.MIGRATIONS_TABLE.format(real="REAL"))
            done = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
            for step in connector.pending(done, serial="INTEGER"):
                for statement in step.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (step.version, step.name, time.time()),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise exceptions.StoreError("the SQLite store is not open")
        return self._conn

    def _begin_waiting(self) -> None:
        """BEGIN IMMEDIATE, waiting up to busy_timeout for another process's writer."""
        conn = self._require()
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        finally:
            conn.execute("PRAGMA busy_timeout = 0")

    async def _begin(self, conn: sqlite3.Connection) -> None:
        settling = self._settling
        if settling is not None:
            # Cleared only once done: a waiter cancelled here leaves it for the next one.
            await asyncio.wait({settling})
            if self._settling is settling:
                self._settling = None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if not _busy(exc):
                raise exceptions.StoreError(f"cannot begin a transaction: {exc}") from exc
            waiting = self._offload(self._begin_waiting)
            try:
                await asyncio.shield(waiting)
            except asyncio.CancelledError:
                # The thread will still begin (or give up): what it began is rolled back
                # there, after it, and the next BEGIN waits for that.
                self._settling = self._offload(lambda: self._roll_back(conn))
                raise
            except sqlite3.Error as exc2:
                raise exceptions.StoreBusy(f"cannot begin a transaction: {exc2}") from exc2

    @staticmethod
    def _roll_back(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _rollback(self, conn: sqlite3.Connection, tx: _SQLiteTransaction) -> None:
        if not tx.offloaded:
            self._roll_back(conn)  # nothing runs in the thread: now, where no cancel can reach
        else:
            # A cancelled statement may still be running in the thread: roll back after it.
            self._settling = self._offload(lambda: self._roll_back(conn))

    def _checkpoint(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SQLiteTransaction]:
        conn = self._require()
        async with self._lock:
            await self._begin(conn)
            tx = _SQLiteTransaction(conn, self._queries, self._offload)
            try:
                yield tx
            except BaseException:
                self._rollback(conn, tx)
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn, tx)
                raise exceptions.StoreError(f"commit failed: {exc}") from exc
            changes = conn.total_changes
        if changes - self._checkpointed_at >= CHECKPOINT_CHANGES:
            self._checkpointed_at = changes
            try:
                await self._offload(self._checkpoint)
            except sqlite3.Error as exc:  # committed all the same; the next one catches up
                log.warning("sqlite.checkpoint_failed", error=str(exc))
