"""The connector contract: how the engine talks to a database.

The engine (:mod:`orchestrator.store`) never writes SQL. It runs *named queries* inside
transactions; each connector knows how to run them. The SQL connectors read them from
``queries.sql`` (with per-dialect overrides); :class:`~orchestrator.connectors.memory.MemoryConnector`
implements them in Python for fast unit tests.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, runtime_checkable

from orchestrator import exceptions

Row = dict[str, Any]


class Transaction(Protocol):
    """One open transaction; every named query runs inside one."""

    async def fetch(self, query: str, **params: Any) -> list[Row]:
        """Run a named query and return its rows."""
        ...

    async def fetchone(self, query: str, **params: Any) -> Row | None:
        """Run a named query and return its first row, if any."""
        ...

    async def execute(self, query: str, **params: Any) -> int:
        """Run a named query and return the number of rows it changed."""
        ...

    async def executemany(self, query: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run a named write (no RETURNING) once per parameter set: bulk imports."""
        ...


class Connector(Protocol):
    """A database the store can use: SQLite, PostgreSQL or in-memory."""

    dialect: str

    async def open(self) -> None:
        """Connect and apply pending migrations."""
        ...

    async def close(self) -> None:
        """Release every connection."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A transaction: committed when the block exits normally, rolled back on error."""
        ...


@runtime_checkable
class Notifier(Protocol):
    """A connector whose database can wake other daemons (PostgreSQL's LISTEN/NOTIFY).

    The store's ``notify`` query signals a topic (``dial`` or ``deliver``) when its transaction
    commits; :meth:`listen` hears every daemon's signals. Connectors without it poll.
    """

    notifies: bool

    async def listen(self, on_notify: Callable[[str], None]) -> None:
        """Call ``on_notify(topic)`` for each signal until cancelled (reconnecting as needed)."""
        ...


@dataclass(frozen=True, kw_only=True)
class Migration:
    """One versioned schema change."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped in ``orchestrator/migrations``, in version order."""
    found = []
    for entry in resources.files("orchestrator.connectors.migrations").iterdir():
        match = re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name)
        if match:
            found.append(
                Migration(
                    version=int(match.group(1)),
                    name=match.group(2),
                    sql=entry.read_text(encoding="utf-8"),
                )
            )
    return sorted(found, key=lambda m: m.version)


#: Row-locking clauses per dialect: ``{for_update}`` waits for the row, ``{skip_locked}``
#: passes over locked rows. SQLite has neither and needs neither: its single writer
#: (BEGIN IMMEDIATE) serialises every transaction that could race.
LOCKING = {
    "postgres": {"{for_update}": "FOR UPDATE", "{skip_locked}": "FOR UPDATE SKIP LOCKED"},
}


def queries(dialect: str) -> dict[str, str]:
    """The named queries for ``dialect``: ``NAME@dialect`` blocks replace ``NAME``, and
    ``{for_update}``/``{skip_locked}`` become the dialect's row-locking clauses."""
    text = (
        resources.files("orchestrator.connectors")
        .joinpath("queries.sql")
        .read_text(encoding="utf-8")
    )
    base: dict[str, str] = {}
    override: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        header, _, body = block.partition("\n")
        name, _, variant = header.strip().partition("@")
        sql = "\n".join(
            line for line in body.splitlines() if not line.lstrip().startswith("--")
        ).strip()
        if not variant:
            base[name] = sql
        elif variant == dialect:
            override[name] = sql
    clauses = LOCKING.get(dialect, {})
    found = {}
    for name, sql in (base | override).items():
        for placeholder in ("{for_update}", "{skip_locked}"):
            sql = sql.replace(placeholder, clauses.get(placeholder, ""))
        found[name] = sql
    return found


#: The table that records which migrations a database has; ``{real}`` is the dialect's float.
MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at {real} NOT NULL)"
)


@dataclass(frozen=True, kw_only=True)
class Step:
    """One pending migration, split into statements in a dialect's words."""

    version: int
    name: str
    statements: list[str]


def pending(applied: Iterable[int], *, serial: str) -> list[Step]:
    """The migrations not yet ``applied``, in order: the one migration runner. A connector
    runs ``MIGRATIONS_TABLE``, reads the applied versions, then executes each step and records
    it, all in one transaction; ``serial`` is its auto-increment integer type."""
    done = set(applied)
    return [
        Step(
            version=m.version,
            name=m.name,
            statements=statements(m.sql.replace("{serial}", serial)),
        )
        for m in migrations()
        if m.version not in done
    ]


def statements(sql: str) -> list[str]:
    """Split a migration into statements (none of ours contain a ``;`` inside a literal)."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def redact_url(url: str) -> str:
    """``url`` with any password replaced, for logs and errors."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


@functools.lru_cache(maxsize=1024)
def _parameters(sql: str) -> frozenset[str]:
    return frozenset(re.findall(r"(?<!:):([a-z_]+)", sql))


def check_params(sql: str, params: Mapping[str, Any], name: str) -> None:
    """Raise StoreError naming the query when a ``:param`` it uses was not given."""
    missing = _parameters(sql) - params.keys()
    if missing:
        raise exceptions.StoreError(f"query {name} is missing parameters {sorted(missing)}")
