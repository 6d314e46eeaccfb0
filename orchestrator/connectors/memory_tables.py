"""The in-memory tables under :class:`~orchestrator.connectors.memory.MemoryConnector`, with SQLite's
semantics: column affinity, ``NOT NULL``, ``UNIQUE`` (partial indexes too), the foreign key of
``attempts.call_id``, and ``ON CONFLICT DO NOTHING``. Rows are never changed in place: an update
stores a new dict, so a snapshot is a shallow copy of each table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from orchestrator import exceptions
from orchestrator.connectors.protocol import Row

__all__ = [
    "ABANDONED",
    "Params",
    "Result",
    "Storage",
    "eq",
    "le",
    "lengthen",
    "lt",
    "ordered",
    "pick",
    "row_key",
    "take",
]

Params = dict[str, Any]
Result = tuple[list[Row], int]  # (rows returned, rows changed; -1 for a SELECT like sqlite3)
Tables = dict[str, dict[Any, Row]]

# Columns in declared order: T (TEXT), I (INTEGER), R (DOUBLE PRECISION); "!" is NOT NULL.
_SPEC = {
    "calls": "id T!, idempotency_key T, request_hash T, to_number T!, from_number T!, "
    "agent_id T, campaign T, metadata T!, purpose T, goal T, template_id T, status T!, "
    "reason T, attempts I!, created_at R!, updated_at R!, ended_at R",
    "attempts": "id T!, call_id T!, number I!, to_number T!, from_number T!, status T!, "
    "live I!, ambiguous I!, webhook_token T!, provider_call_id T, provider_status T, "
    "error_code T, error_message T, priority I!, not_before R!, lease_owner T, lease_until R, "
    "duration R, created_at R!, placed_at R, ended_at R, campaign T, agent_call_sid T, "
    "check_at R, checked_at R, check_result T, checks I!, ending T, settled_by T, "
    "failures I!",
    "events": "seq I!, id T!, call_id T!, attempt_id T, type T!, occurred_at R!, "
    "dedupe_key T, body T!",
    "deliveries": "id T!, event_seq I!, event_id T!, call_id T!, handler T!, state T!, "
    "tries I!, not_before R!, lease_owner T, lease_until R, last_error T, updated_at R!",
    "timers": "id T!, kind T!, ref T!, due_at R!",
    "receipts": "id T!, received_at R!, attempt_id T, outcome T!, body T!",
    "pacing": "name T!, tokens R!, updated_at R!, paused_until R!, reason T, factor R!",
    # pk: the composite primary key (scope, key) as one value; no query returns it.
    "plugin_kv": "pk T!, scope T!, key T!, value T!, updated_at R!",
    "campaigns": "id T!, name T!, status T!, reason T, settings T!, priority I!, share R!, "
    "budget R, price_per_minute R!, spent R!, dialed I!, rows_total I!, rows_invalid I!, "
    "created_at R!, updated_at R!, imports I!, importing I!, importing_until R!, "
    "talk_seconds R!, "
    "talked I!",
    "campaign_errors": "pk T!, campaign_id T!, import_no I!, line I!, reason T!",
    "do_not_call": "number T!, reason T, added_at R!",
}
_COLUMNS: dict[str, dict[str, tuple[str, bool]]] = {
    table: {
        name: (kind.rstrip("!"), kind.endswith("!"))
        for name, kind in (column.split() for column in spec.split(", "))
    }
    for table, spec in _SPEC.items()
}
_PRIMARY = {
    "events": "seq",
    "pacing": "name",
    "plugin_kv": "pk",
    "campaign_errors": "pk",
    "do_not_call": "number",
}  # every other table's primary key is "id"
_DEFAULTS: dict[str, Row] = {
    "attempts": {"live": 0, "ambiguous": 0, "priority": 0, "checks": 0, "failures": 0},
    "deliveries": {"tries": 0},
    "campaigns": {"imports": 0},
}


def _always(row: Row) -> bool:
    return True


def _is_live(row: Row) -> bool:
    return bool(row["live"] == 1)


# Each UNIQUE constraint or unique index: its columns and the rows it covers.
_UNIQUE: dict[str, list[tuple[tuple[str, ...], Callable[[Row], bool]]]] = {
    "calls": [(("id",), _always), (("idempotency_key",), _always)],
    "attempts": [
        (("id",), _always),
        (("webhook_token",), _always),
        (("provider_call_id",), _always),
        (("call_id", "number"), _always),
        (("to_number",), _is_live),  # attempts_one_live_per_number
    ],
    "events": [(("seq",), _always), (("id",), _always), (("dedupe_key",), _always)],
    "deliveries": [(("id",), _always), (("event_id", "handler"), _always)],
    "timers": [(("id",), _always), (("kind", "ref"), _always)],
    "receipts": [(("id",), _always)],
    "pacing": [(("name",), _always)],
    "plugin_kv": [(("scope", "key"), _always)],
    "campaigns": [(("id",), _always)],
    "campaign_errors": [(("campaign_id", "import_no", "line"), _always)],
    "do_not_call": [(("number",), _always)],
}

ABANDONED = {
    "ambiguous": 1,
    "lease_owner": None,
    "lease_until": None,
    "error_code": "ABANDONED",
    "error_message": "the daemon stopped while placing this call; its outcome is unknown",
}


def lengthen(row: Row, p: Params) -> Params:
    current = row["lease_until"]
    return {"lease_until": p["lease_until"] if lt(current, p["lease_until"]) else current}


def _affinity(kind: str, value: Any) -> Any:
    """The value as SQLite stores it in a column of this affinity."""
    if isinstance(value, bool):
        value = int(value)
    if kind == "T" and isinstance(value, int | float):
        return str(value)
    if kind == "R" and isinstance(value, int):
        return float(value)
    if kind == "I" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def row_key(value: Any) -> tuple[int, Any]:
    """SQLite's sort order across types: NULL, numbers, text, blobs."""
    if value is None:
        return (0, 0)
    if isinstance(value, int | float):
        return (1, value)
    return (2, value) if isinstance(value, str) else (3, value)


def eq(a: Any, b: Any) -> bool:
    """SQL ``a = b``: never true when either side is NULL."""
    return a is not None and b is not None and row_key(a) == row_key(b)


def lt(a: Any, b: Any) -> bool:
    """SQL ``a < b``: never true when either side is NULL."""
    return a is not None and b is not None and row_key(a) < row_key(b)


def le(a: Any, b: Any) -> bool:
    return lt(a, b) or eq(a, b)


def ordered(rows: Iterable[Row], *keys: str) -> list[Row]:
    """Rows sorted by ``keys`` (``-name`` descending); ties keep insertion (rowid) order."""
    out = list(rows)
    for key in reversed(keys):
        name = key.lstrip("-")
        out.sort(key=lambda row: row_key(row[name]), reverse=key.startswith("-"))
    return out


def take(rows: list[Row], limit: Any) -> list[Row]:
    """SQLite's ``LIMIT``: a negative limit is none; NULL is an error."""
    if limit is None or isinstance(limit, str | bytes):
        raise exceptions.StoreError("datatype mismatch")
    return rows if limit < 0 else rows[: int(limit)]


def pick(params: Params, names: str) -> Params:
    """The parameters named in the space-separated ``names``."""
    return {name: params[name] for name in names.split()}


class Storage:
    """The tables and the primitives the queries are written with (insert, update, where)."""

    def __init__(self) -> None:
        self.tables: Tables = {table: {} for table in _COLUMNS}

    def snapshot(self) -> Tables:
        """The tables as they are now (rows are immutable, so a shallow copy is enough)."""
        return {table: dict(rows) for table, rows in self.tables.items()}

    def restore(self, snapshot: Tables) -> None:
        """Put back the tables of a :meth:`snapshot`."""
        self.tables = snapshot

    # -- storage -------------------------------------------------------------------------

    def _new_row(self, table: str, values: Params) -> Row:
        defaults = _DEFAULTS.get(table, {})
        return {
            name: _affinity(kind, values[name] if name in values else defaults.get(name))
            for name, (kind, _) in _COLUMNS[table].items()
        }

    def _clash(self, table: str, row: Row, columns: tuple[str, ...]) -> bool:
        pk = _PRIMARY.get(table, "id")
        cover = next(c for cols, c in _UNIQUE[table] if cols == columns)
        if not cover(row) or any(row[c] is None for c in columns):
            return False
        return any(
            other[pk] != row[pk] and cover(other) and all(eq(other[c], row[c]) for c in columns)
            for other in self.tables[table].values()
        )

    def _check(self, table: str, row: Row) -> None:
        for name, (_, not_null) in _COLUMNS[table].items():
            if not_null and row[name] is None:
                raise exceptions.StoreError(f"NOT NULL constraint failed: {table}.{name}")
        for columns, _ in _UNIQUE[table]:
            if self._clash(table, row, columns):
                names = ", ".join(f"{table}.{c}" for c in columns)
                raise exceptions.StoreError(f"UNIQUE constraint failed: {names}")

    def _insert(
        self, table: str, values: Params, *, on_conflict: tuple[str, ...] | None = None
    ) -> Row | None:
        """INSERT one row; None when ``ON CONFLICT (on_conflict) DO NOTHING`` applied."""
        row = self._new_row(table, values)
        pk = _PRIMARY.get(table, "id")
        if row[pk] is None:
            raise exceptions.StoreError(f"NOT NULL constraint failed: {table}.{pk}")
        if row[pk] in self.tables[table]:
            if on_conflict == (pk,):
                return None
            raise exceptions.StoreError(f"UNIQUE constraint failed: {table}.{pk}")
        if on_conflict not in (None, (pk,)) and self._clash(table, row, on_conflict):
            return None
        self._check(table, row)
        self.tables[table][row[pk]] = row
        return row

    def _update(self, table: str, rows: list[Row], changes: Callable[[Row], Params]) -> list[Row]:
        """UPDATE ``rows`` with ``changes(row)``, atomically (all or none on a violation)."""
        pk = _PRIMARY.get(table, "id")
        stored = self.tables[table]
        before = {row[pk]: stored[row[pk]] for row in rows}
        after = []
        for row in rows:
            new = dict(row)
            for name, value in changes(row).items():
                new[name] = _affinity(_COLUMNS[table][name][0], value)
            stored[new[pk]] = new
            after.append(new)
        try:
            for new in after:
                self._check(table, new)
        except exceptions.StoreError:
            stored.update(before)
            raise
        return after

    def _where(self, table: str, test: Callable[[Row], bool]) -> list[Row]:
        return [row for row in self.tables[table].values() if test(row)]

    def _delete(self, table: str, rows: list[Row]) -> int:
        pk = _PRIMARY.get(table, "id")
        for row in rows:
            del self.tables[table][row[pk]]
        return len(rows)

    @staticmethod
    def _one(row: Row | None) -> Result:
        return ([row], 1) if row is not None else ([], 0)

    @staticmethod
    def _select(rows: list[Row]) -> Result:
        return rows, -1
