"""The PostgreSQL connector (asyncpg, a connection pool): the store for several daemons.

SQLite has one writer; PostgreSQL lets many daemons claim work at once, each claim skipping the
rows another transaction has locked (``FOR UPDATE SKIP LOCKED``). The named queries are the same
as SQLite's, translated once from ``:name`` to ``$n`` parameters, and rows come back as the same
plain dicts, so the engine cannot tell the two apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import structlog

from orchestrator import exceptions
from orchestrator.connectors import protocol as connector
from orchestrator.connectors.protocol import Row

log = structlog.get_logger(__name__)

#: Every error the driver raises: server errors, client-side errors, sockets and timeouts.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,  # includes ConnectionError and (since 3.11) asyncio.TimeoutError
)

#: The advisory lock held while migrating ("orchestr" in ASCII): daemons starting together
#: migrate one after the other, and each migration is applied once.
MIGRATION_LOCK = 0x6F72636865737472

#: The channel the store's ``notify`` query signals on (see queries.sql).
CHANNEL = "orchestrator"

#: Integrity errors are labelled like SQLite's ("UNIQUE constraint failed: ..."), so a message
#: reads the same whichever connector produced it.
_LABELS: tuple[tuple[type[BaseException], str], ...] = (
    (asyncpg.UniqueViolationError, "UNIQUE constraint failed"),
    (asyncpg.NotNullViolationError, "NOT NULL constraint failed"),
    (asyncpg.ForeignKeyViolationError, "FOREIGN KEY constraint failed"),
    (asyncpg.CheckViolationError, "CHECK constraint failed"),
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# One pass over a query: literals, quoted identifiers, comments and ``::`` casts are copied as
# they are; each ``:name`` outside them becomes a ``$n`` parameter.
_TOKENS = re.compile(
    r"""
      (?P<verbatim>
          (?<![\w$])[Ee]'(?:[^'\\]|\\.|'')*'     # E'escape string'
        | '(?:[^']|'')*'                           # 'string'
        | "(?:[^"]|"")*"                           # "identifier"
        | --[^\n]*                                 # -- comment
        | /\*.*?\*/                                # /* comment */
        | \$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)\$  # $tag$ dollar-quoted $tag$
        | ::                                       # a cast, not a parameter
      )
    | (?<![\w:]):(?P<name>[A-Za-z_]\w*)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, kw_only=True)
class _Query:
    """A named query translated for asyncpg: ``$n`` is the n-th name in ``params``."""

    name: str
    sql: str
    params: tuple[str, ...]

    def args(self, given: Mapping[str, Any]) -> list[Any]:
        missing = {p for p in self.params if p not in given}
        if missing:
            raise exceptions.StoreError(
                f"query {self.name} is missing parameters {sorted(missing)}"
            )
        return [given[p] for p in self.params]


def translate(name: str, sql: str) -> _Query:
    """Translate one named query from ``:name`` to ``$n`` parameters (one ``$n`` per name)."""
    params: list[str] = []

    def replace(match: re.Match[str]) -> str:
        param = match.group("name")
        if param is None:
            return match.group(0)
        if param not in params:
            params.append(param)
        return f"${params.index(param) + 1}"

    translated = _TOKENS.sub(replace, sql)
    return _Query(name=name, sql=translated, params=tuple(params))


class _PostgresTransaction:
    def __init__(self, conn: Any, queries: dict[str, _Query], scrub: Callable[[str], str]) -> None:
        self._conn = conn
        self._queries = queries
        self._scrub = scrub
        #: Set when a statement failed and could not be undone: the transaction is aborted,
        #: and committing it must fail rather than silently roll back.
        self.failed: str | None = None

    def _query(self, name: str, params: Mapping[str, Any]) -> tuple[_Query, list[Any]]:
        try:
            query = self._queries[name]
        except KeyError:
            raise exceptions.StoreError(f"unknown query {name}") from None
        return query, query.args(params)

    async def _run(self, name: str, params: Mapping[str, Any], *, rows: bool) -> Any:
        query, args = self._query(name, params)
        if self.failed is not None:
            raise exceptions.StoreError(
                f"{name}: the transaction is aborted by an earlier error ({self.failed})"
            )
        try:
            if rows:
                return await self._conn.fetch(query.sql, *args)
            return await self._conn.execute(query.sql, *args)
        except _DRIVER_ERRORS as exc:
            # As on every connector, a StoreError ends the transaction: it is rolled back.
            self.failed = self._message(query, exc)
            raise exceptions.StoreError(self.failed) from exc

    def _message(self, query: _Query, exc: BaseException) -> str:
        text = _describe(exc)
        # The driver numbers the arguments; name them as the query does.
        text = re.sub(
            r"query argument \$(\d+)",
            lambda m: (
                f"parameter :{query.params[int(m.group(1)) - 1]}"
                if 0 < int(m.group(1)) <= len(query.params)
                else m.group(0)
            ),
            text,
        )
        for kind, label in _LABELS:
            if isinstance(exc, kind):
                text = f"{label}: {text}"
                break
        return self._scrub(f"{query.name}: {text}")

    async def fetch(self, query: str, **params: Any) -> list[Row]:
        records = await self._run(query, params, rows=True)
        return [dict(record.items()) for record in records]

    async def fetchone(self, query: str, **params: Any) -> Row | None:
        rows = await self.fetch(query, **params)
        return rows[0] if rows else None

    async def execute(self, query: str, **params: Any) -> int:
        status = await self._run(query, params, rows=False)
        return _rowcount(str(status))

    async def executemany(self, query: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        named, _ = self._query(query, rows[0])
        if self.failed is not None:
            raise exceptions.StoreError(
                f"{query}: the transaction is aborted by an earlier error ({self.failed})"
            )
        try:
            await self._conn.executemany(named.sql, [named.args(r) for r in rows])
        except _DRIVER_ERRORS as exc:
            self.failed = self._message(named, exc)
            raise exceptions.StoreError(self.failed) from exc


def _rowcount(status: str) -> int:
    """The rows a statement changed, from its command tag (``INSERT 0 3``, ``UPDATE 2``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresConnector:
    """A store in a PostgreSQL database: ``postgresql://user:password@host:port/dbname``.

    ``schema`` (or ``?schema=NAME`` in the URL) keeps the store's tables in that schema,
    created if missing; without it they go where the server's ``search_path`` puts them.
    """

    dialect = "postgres"
    #: The store sends NOTIFY on commit and :meth:`listen` hears it: daemons wake each other.
    notifies = True

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        close_timeout: float = 10.0,
    ) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise exceptions.ConfigError(
                f"not a PostgreSQL URL: {_redact(url)!r} (postgresql://user@host/dbname)"
            )
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        in_url = [value for key, value in query if key == "schema"]
        if len(in_url) > 1 or (in_url and schema is not None and in_url[0] != schema):
            raise exceptions.ConfigError(
                f"the PostgreSQL store names more than one schema: {_redact(url)!r}"
            )
        schema = schema if schema is not None else (in_url[0] if in_url else None)
        if schema is not None and not _IDENTIFIER.fullmatch(schema):
            raise exceptions.ConfigError(
                f"invalid PostgreSQL schema name {schema!r}: letters, digits and _ only"
            )
        if min_size < 0 or max_size < 1 or min_size > max_size:
            raise exceptions.ConfigError(
                f"invalid PostgreSQL pool size: min_size={min_size}, max_size={max_size}"
            )
        # The password stays in the private DSN; the public URL never holds it.
        self.url = _redact(url)
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        # asyncpg would send an unknown URL parameter to the server as a setting.
        rest = [(key, value) for key, value in query if key != "schema"]
        self._dsn = urlunsplit(parts._replace(query=urlencode(rest)))
        self._secrets = _secrets(parts.password, query)
        self._pool: Any = None
        self._queries = {
            name: translate(name, sql) for name, sql in connector.queries(self.dialect).items()
        }

    def __repr__(self) -> str:
        return f"PostgresConnector(url={_redact(self._dsn)!r}, schema={self.schema!r})"

    def _scrub(self, text: str) -> str:
        """``text`` with every form of the password taken out: for errors and logs."""
        text = _redact(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def open(self) -> None:
        if self._pool is not None:
            return
        settings = {"search_path": f'"{self.schema}"'} if self.schema else {}
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=self.connect_timeout,
                server_settings=settings,
            )
        except _DRIVER_ERRORS as exc:
            raise exceptions.StoreError(
                self._scrub(f"cannot open PostgreSQL store {self.url}: {_describe(exc)}")
            ) from exc
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            # Waits for the connections in use to come back; past the timeout, cuts them.
            await asyncio.wait_for(pool.close(), self.close_timeout)
        except TimeoutError:
            pool.terminate()
        except _DRIVER_ERRORS as exc:
            pool.terminate()
            raise exceptions.StoreError(
                self._scrub(f"closing the PostgreSQL store failed: {_describe(exc)}")
            ) from exc
        except BaseException:
            pool.terminate()
            raise

    async def _migrate(self) -> None:
        """Apply pending migrations, all in one transaction under an advisory lock."""
        pool = self._require()
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                if self.schema:
                    # The name was checked against _IDENTIFIER: a plain quoted identifier.
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(connector.MIGRATIONS_TABLE.format(real="DOUBLE PRECISION"))
                applied = await conn.fetch("SELECT version FROM schema_migrations")
                done = [row["version"] for row in applied]
                for step in connector.pending(done, serial="BIGSERIAL"):
                    for statement in step.statements:
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) "
                        "VALUES ($1, $2, $3)",
                        step.version,
                        step.name,
                        time.time(),
                    )
        except _DRIVER_ERRORS as exc:
            raise exceptions.StoreError(
                self._scrub(f"cannot migrate the PostgreSQL store: {_describe(exc)}")
            ) from exc

    async def listen(self, on_notify: Callable[[str], None], *, retry: float = 2.0) -> None:
        """Call ``on_notify(topic)`` for each notification of the fleet, until cancelled.

        A dedicated connection (a pooled one drops its LISTEN when it goes back to the pool).
        A lost connection is made again after ``retry`` seconds; meanwhile the daemons poll,
        so a missed notification only delays work by one poll.
        """
        settings = {"search_path": f'"{self.schema}"'} if self.schema else {}
        while True:
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=self.connect_timeout, server_settings=settings
                )
            except _DRIVER_ERRORS as exc:
                log.warning("postgres.listen_failed", error=self._scrub(_describe(exc)))
                await asyncio.sleep(retry)
                continue
            await self._listen_on(conn, on_notify)
            await asyncio.sleep(retry)

    async def _listen_on(self, conn: Any, on_notify: Callable[[str], None]) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(
                CHANNEL, lambda _conn, _pid, _channel, payload: on_notify(payload)
            )
            await lost.wait()
            log.warning("postgres.listen_lost")
        except _DRIVER_ERRORS as exc:
            log.warning("postgres.listen_failed", error=self._scrub(_describe(exc)))
        finally:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(conn.close(), 1.0)

    def _require(self) -> Any:
        if self._pool is None:
            raise exceptions.StoreError("the PostgreSQL store is not open")
        return self._pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTransaction]:
        pool = self._require()
        try:
            conn = await pool.acquire()
        except _DRIVER_ERRORS as exc:
            raise exceptions.StoreError(
                self._scrub(f"cannot begin a transaction: {_describe(exc)}")
            ) from exc
        try:
            xact = conn.transaction()
            try:
                await xact.start()
            except _DRIVER_ERRORS as exc:
                raise exceptions.StoreError(
                    self._scrub(f"cannot begin a transaction: {_describe(exc)}")
                ) from exc
            try:
                tx = _PostgresTransaction(conn, self._queries, self._scrub)
                yield tx
                if tx.failed is not None:
                    # COMMIT of an aborted transaction silently rolls back: say so instead.
                    raise exceptions.StoreError(
                        f"commit failed: the transaction was rolled back ({tx.failed})"
                    )
            except BaseException:
                await _rollback(conn, xact)
                raise
            try:
                await _finish(xact.commit())
            except _DRIVER_ERRORS as exc:
                raise exceptions.StoreError(
                    self._scrub(f"commit failed: {_describe(exc)}")
                ) from exc
        finally:
            await pool.release(conn)


async def _finish(operation: Awaitable[Any]) -> None:
    """Await ``operation`` to its end even if the task is cancelled meanwhile (then re-raise the
    cancellation): a COMMIT once sent is not abandoned half-way, and its connection is idle
    before it goes back to the pool."""
    task = asyncio.ensure_future(operation)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


async def _rollback(conn: Any, xact: Any) -> None:
    """Roll back after an error (or a cancellation) without hiding it: a connection that
    cannot roll back is cut, and the server rolls its transaction back."""
    try:
        await xact.rollback()
    except asyncio.CancelledError:
        conn.terminate()
        raise
    except BaseException:
        conn.terminate()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _redact(url: str) -> str:
    """``url`` with the password hidden, in the userinfo or a ``password=`` parameter."""
    return re.sub(r"([?&]password=)[^&#\s]*", r"\1***", connector.redact_url(url))


def _secrets(password: str | None, query: list[tuple[str, str]]) -> list[str]:
    """Every spelling of the password that could appear in a message, longest first."""
    found = {password} if password else set()
    found |= {value for key, value in query if key == "password" and value}
    spellings = found | {unquote(s) for s in found} | {quote(s, safe="") for s in found}
    return sorted(spellings, key=len, reverse=True)
