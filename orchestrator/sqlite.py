"""The embedded SQLite connector (aiosqlite, WAL mode): the default store.

Writes go through one connection, one transaction at a time (SQLite has one writer anyway);
``BEGIN IMMEDIATE`` takes the write lock up front, so two daemons on one file serialise their
claims instead of failing half-way through a transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from orchestrator import connector, exceptions
from orchestrator.connector import Row


class _SQLiteTransaction:
    def __init__(self, conn: aiosqlite.Connection, queries: dict[str, str]) -> None:
        self._conn = conn
        self._queries = queries

    def _sql(self, name: str, params: dict[str, Any]) -> str:
        try:
            sql = self._queries[name]
        except KeyError:
            raise exceptions.StoreError(f"unknown query {name}") from None
        connector.check_params(sql, params, name)
        return sql

    async def fetch(self, query: str, **params: Any) -> list[Row]:
        sql = self._sql(query, params)
        try:
            # One trip to aiosqlite's thread instead of three (execute, fetchall, close).
            rows = await self._conn.execute_fetchall(sql, params)
        except sqlite3.Error as exc:
            raise exceptions.StoreError(f"{query}: {exc}") from exc
        return [dict(row) for row in rows]

    async def fetchone(self, query: str, **params: Any) -> Row | None:
        rows = await self.fetch(query, **params)
        return rows[0] if rows else None

    async def execute(self, query: str, **params: Any) -> int:
        sql = self._sql(query, params)
        try:
            async with self._conn.execute(sql, params) as cursor:
                return cursor.rowcount
        except sqlite3.Error as exc:
            raise exceptions.StoreError(f"{query}: {exc}") from exc

    async def executemany(self, query: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        sql = self._sql(query, dict(rows[0]))
        try:
            await self._conn.executemany(sql, [dict(r) for r in rows])
        except sqlite3.Error as exc:
            raise exceptions.StoreError(f"{query}: {exc}") from exc


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
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._queries = connector.queries(self.dialect)

    def __repr__(self) -> str:
        return f"SQLiteConnector(path={self.path!r})"

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(self.path, isolation_level=None)
            conn.row_factory = sqlite3.Row
            await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            await conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: a commit survives a process crash (kill -9); only a power
            # loss can take back the last transactions.
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise exceptions.StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc
        self._conn = conn
        await self._migrate()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _migrate(self) -> None:
        conn = self._require()
        async with self._lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
                async with conn.execute("SELECT version FROM schema_migrations") as cursor:
                    done = {row[0] for row in await cursor.fetchall()}
                for migration in connector.migrations():
                    if migration.version in done:
                        continue
                    sql = migration.sql.replace("{serial}", "INTEGER")
                    for statement in connector.statements(sql):
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        (migration.version, migration.name, time.time()),
                    )
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise

    def _require(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise exceptions.StoreError("the SQLite store is not open")
        return self._conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SQLiteTransaction]:
        conn = self._require()
        async with self._lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise exceptions.StoreError(f"cannot begin a transaction: {exc}") from exc
            try:
                yield _SQLiteTransaction(conn, self._queries)
            except BaseException:
                await asyncio.shield(conn.execute("ROLLBACK"))
                raise
            try:
                await asyncio.shield(conn.execute("COMMIT"))
            except sqlite3.Error as exc:
                raise exceptions.StoreError(f"commit failed: {exc}") from exc
