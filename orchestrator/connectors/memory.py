"""A pure-Python in-memory connector, for fast unit tests of the engine.

Every named query of ``queries.sql`` is one method of :class:`_Database`, written to behave as
the SQL does on SQLite: the same row dicts (every column, in table order), the same ordering,
``LIMIT`` and ``NULL`` semantics, ``ON CONFLICT DO NOTHING`` returning no row, the column
defaults of the migration and its constraints (``NOT NULL``, ``UNIQUE``, the partial unique
index ``attempts_one_live_per_number``, the ``attempts.call_id`` foreign key), each raising
:class:`~orchestrator.exceptions.StoreError` as a wrapped SQLite ``IntegrityError`` would.

Values get SQLite's column affinity (an int stored in a ``DOUBLE PRECISION`` column reads back
as a float). Rows are never changed in place: an update stores a new dict, so a transaction's
snapshot is a shallow copy of each table, and every row handed out is a copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from orchestrator import exceptions
from orchestrator.connectors import protocol as connector
from orchestrator.connectors.memory_campaigns import CampaignQueries
from orchestrator.connectors.memory_tables import (
    ABANDONED,
    Params,
    Result,
    eq,
    le,
    lengthen,
    lt,
    ordered,
    pick,
    row_key,
    take,
)
from orchestrator.connectors.protocol import Row


class _Database(CampaignQueries):
    """Every named query of ``queries.sql``, in Python, over the tables of :class:`Storage`."""

    # -- calls ---------------------------------------------------------------------------

    def insert_call(self, p: Params) -> Result:
        values = pick(
            p,
            "id idempotency_key request_hash to_number from_number agent_id campaign metadata "
            "purpose goal template_id status",
        )
        values |= {"reason": None, "attempts": 1, "created_at": p["now"]}
        values |= {"updated_at": p["now"], "ended_at": None}
        return self._one(self._insert("calls", values, on_conflict=("idempotency_key",)))

    def get_call(self, p: Params) -> Result:
        return self._select(self._where("calls", lambda r: eq(r["id"], p["id"])))

    def get_call_by_idempotency_key(self, p: Params) -> Result:
        key = p["idempotency_key"]
        return self._select(self._where("calls", lambda r: eq(r["idempotency_key"], key)))

    def list_calls(self, p: Params) -> Result:
        status, campaign, after = p["status"], p["campaign"], p["after"]
        rows = self._where(
            "calls",
            lambda r: (
                (status is None or eq(r["status"], status))
                and (campaign is None or eq(r["campaign"], campaign))
                and (after is None or lt(after, r["id"]))
            ),
        )
        return self._select(take(ordered(rows, "id"), p["limit"]))

    def update_call(self, p: Params) -> Result:
        rows = self._where(
            "calls", lambda r: eq(r["id"], p["id"]) and eq(r["attempts"], p["attempt"])
        )
        changes = {
            "status": p["status"],
            "reason": p["reason"],
            "ended_at": p["ended_at"],
            "updated_at": p["now"],
        }
        updated = self._update("calls", rows, lambda r: changes)
        return updated, len(updated)

    # -- attempts ------------------------------------------------------------------------

    def next_call_attempt(self, p: Params) -> Result:
        rows = self._where(
            "calls", lambda r: eq(r["id"], p["id"]) and eq(r["attempts"], p["previous"])
        )
        changes = {"attempts": p["number"], "status": "queued", "reason": None}
        changes |= {"ended_at": None, "updated_at": p["now"]}
        updated = self._update("calls", rows, lambda r: changes)
        return updated, len(updated)

    def insert_attempt(self, p: Params) -> Result:
        if not any(eq(p["call_id"], call_id) for call_id in self.tables["calls"]):
            raise exceptions.StoreError("FOREIGN KEY constraint failed")
        fields = (
            "id call_id number to_number from_number webhook_token priority not_before campaign"
        )
        values = pick(p, fields)
        values |= {"status": "queued", "live": 0, "ambiguous": 0, "created_at": p["now"]}
        return self._one(self._insert("attempts", values))

    def bulk_insert_call(self, p: Params) -> Result:
        self.insert_call(p | {"idempotency_key": None, "request_hash": None, "status": "queued"})
        return [], 1

    def bulk_insert_attempt(self, p: Params) -> Result:
        self.insert_attempt(p | {"number": 1})
        return [], 1

    def get_attempt(self, p: Params) -> Result:
        return self._select(self._where("attempts", lambda r: eq(r["id"], p["id"])))

    def lock_attempt(self, p: Params) -> Result:
        return self.get_attempt(p)  # one transaction at a time: nothing to wait for

    def try_lock_attempt(self, p: Params) -> Result:
        return self.get_attempt(p)

    def get_attempt_by_token(self, p: Params) -> Result:
        token = p["webhook_token"]
        return self._select(self._where("attempts", lambda r: eq(r["webhook_token"], token)))

    def get_attempt_by_provider_id(self, p: Params) -> Result:
        provider = p["provider_call_id"]
        return self._select(self._where("attempts", lambda r: eq(r["provider_call_id"], provider)))

    def get_ambiguous_attempt(self, p: Params) -> Result:
        rows = self._where(
            "attempts",
            lambda r: (
                eq(r["to_number"], p["to_number"])
                and eq(r["from_number"], p["from_number"])
                and eq(r["live"], 1)
                and r["provider_call_id"] is None
                and (eq(r["ambiguous"], 1) or eq(r["status"], "dialing"))
            ),
        )
        return self._select(ordered(rows, "-created_at")[:1])

    def get_attempt_by_number(self, p: Params) -> Result:
        rows = self._where(
            "attempts", lambda r: eq(r["call_id"], p["call_id"]) and eq(r["number"], p["number"])
        )
        return self._select(rows)

    def list_attempts(self, p: Params) -> Result:
        rows = self._where("attempts", lambda r: eq(r["call_id"], p["call_id"]))
        return self._select(ordered(rows, "number"))

    def count_live(self, p: Params) -> Result:
        return self._select([{"n": len(self._where("attempts", lambda r: eq(r["live"], 1)))}])

    def _due(self, p: Params, campaign: Callable[[Row], bool]) -> Result:
        live = {r["to_number"] for r in self._where("attempts", lambda r: eq(r["live"], 1))}
        due = self._where(
            "attempts",
            lambda r: (
                eq(r["status"], "queued")
                and campaign(r)
                and le(r["not_before"], p["now"])
                and r["to_number"] not in live
            ),
        )
        return self._select(take(ordered(due, "-priority", "not_before", "id"), p["limit"]))

    def due_attempts_of_campaign(self, p: Params) -> Result:
        return self._due(p, lambda r: eq(r["campaign"], p["campaign"]))

    def due_attempts_without_campaign(self, p: Params) -> Result:
        return self._due(p, lambda r: r["campaign"] is None)

    def claim_attempt_by_id(self, p: Params) -> Result:
        rows = self._where("attempts", lambda r: eq(r["id"], p["id"]) and eq(r["status"], "queued"))
        changes = {
            "status": "dialing",
            "live": 1,
            "from_number": p["from_number"],
            "lease_owner": p["owner"],
            "lease_until": p["lease_until"],
            "placed_at": p["now"],
            "check_at": p["check_at"],
            "ending": None,
        }
        updated = self._update("attempts", rows, lambda r: changes)
        return updated, len(updated)

    def defer_attempt(self, p: Params) -> Result:
        rows = self._where("attempts", lambda r: eq(r["id"], p["id"]) and eq(r["status"], "queued"))
        changes = {"not_before": p["not_before"]}
        return [], len(self._update("attempts", rows, lambda r: changes))

    def set_call_from(self, p: Params) -> Result:
        rows = self._where("calls", lambda r: eq(r["id"], p["id"]))
        changes = {"from_number": p["from_number"]}
        return [], len(self._update("calls", rows, lambda r: changes))

    def count_recent_attempts(self, p: Params) -> Result:
        rows = self._where(
            "attempts",
            lambda r: eq(r["to_number"], p["to_number"]) and le(p["since"], r["placed_at"]),
        )
        return self._select([{"n": len(rows)}])

    def count_live_by_from(self, p: Params) -> Result:
        counts: dict[Any, int] = {}
        for row in self._where("attempts", lambda r: eq(r["live"], 1)):
            counts[row["from_number"]] = counts.get(row["from_number"], 0) + 1
        return self._select([{"from_number": k, "n": n} for k, n in counts.items()])

    # -- campaigns ---------------------------------------------------------------------------

    def any_due_attempt(self, p: Params) -> Result:
        due = self._where(
            "attempts", lambda r: eq(r["status"], "queued") and le(r["not_before"], p["now"])
        )
        return self._select([{"due": 1}] if due else [])

    def count_queued(self, p: Params) -> Result:
        return self._select(
            [{"n": len(self._where("attempts", lambda r: eq(r["status"], "queued")))}]
        )

    def lock_dialing(self, p: Params) -> Result:
        return self._select([{"locked": 1}])  # one transaction at a time already

    def get_pacing(self, p: Params) -> Result:
        return self._select(self._where("pacing", lambda r: eq(r["name"], p["bucket"])))

    def put_pacing(self, p: Params) -> Result:
        values = {"name": p["bucket"], "tokens": p["tokens"], "updated_at": p["now"]}
        values |= {"paused_until": p["paused_until"], "reason": p["reason"], "factor": p["factor"]}
        existing = self._where("pacing", lambda r: eq(r["name"], p["bucket"]))
        if existing:
            return [], len(self._update("pacing", existing, lambda r: values))
        self._insert("pacing", values)
        return [], 1

    def update_attempt(self, p: Params) -> Result:
        changes = pick(
            p,
            "status live ambiguous provider_call_id provider_status error_code error_message "
            "not_before lease_owner lease_until duration ended_at agent_call_sid check_at "
            "checked_at check_result checks ending settled_by failures",
        )
        rows = self._where("attempts", lambda r: eq(r["id"], p["id"]))
        return [], len(self._update("attempts", rows, lambda r: changes))

    def try_lock_sweeper(self, p: Params) -> Result:
        return self._select([{"locked": 1}])

    def extend_attempt_lease(self, p: Params) -> Result:
        rows = self._where(
            "attempts",
            lambda r: (
                eq(r["id"], p["id"])
                and eq(r["lease_owner"], p["owner"])
                and eq(r["status"], "dialing")
                and eq(r["ambiguous"], 0)
            ),
        )
        return [], len(self._update("attempts", rows, lambda r: lengthen(r, p)))

    def extend_delivery_lease(self, p: Params) -> Result:
        rows = self._where(
            "deliveries",
            lambda r: (
                eq(r["id"], p["id"])
                and eq(r["lease_owner"], p["owner"])
                and eq(r["state"], "pending")
            ),
        )
        return [], len(self._update("deliveries", rows, lambda r: lengthen(r, p)))

    def notify(self, p: Params) -> Result:
        return self._select([{"topic": p["topic"]}])

    def _abandon(self, test: Callable[[Row], bool], grace: Any) -> Result:
        """Mark placements in flight (dialing, not yet ambiguous) that pass ``test`` abandoned,
        to be searched for ``grace`` seconds after they were sent."""
        rows = self._where(
            "attempts",
            lambda r: eq(r["status"], "dialing") and eq(r["ambiguous"], 0) and test(r),
        )

        def changes(row: Row) -> Params:
            placed = row["placed_at"]
            due = None if placed is None or grace is None else placed + grace
            return ABANDONED | {"check_at": due}

        rows = self._update("attempts", rows, changes)
        return rows, len(rows)

    def rescue_attempts(self, p: Params) -> Result:
        return self._abandon(lambda r: lt(r["lease_until"], p["now"]), p["grace"])

    def release_attempts(self, p: Params) -> Result:
        return self._abandon(lambda r: eq(r["lease_owner"], p["owner"]), p["grace"])

    # -- look-ups at the provider --------------------------------------------------------

    def due_checks(self, p: Params) -> Result:
        rows = self._where("attempts", lambda r: eq(r["live"], 1) and le(r["check_at"], p["now"]))
        return self._select(take(ordered(rows, "check_at"), p["limit"]))

    def set_check_at(self, p: Params) -> Result:
        rows = self._where("attempts", lambda r: eq(r["id"], p["id"]) and eq(r["live"], 1))
        return [], len(self._update("attempts", rows, lambda r: {"check_at": p["check_at"]}))

    def get_live_attempt_by_number(self, p: Params) -> Result:
        return self._select(
            self._where(
                "attempts", lambda r: eq(r["to_number"], p["to_number"]) and eq(r["live"], 1)
            )
        )

    def end_campaign_calls(self, p: Params) -> Result:
        rows = self._where(
            "attempts", lambda r: eq(r["campaign"], p["campaign"]) and eq(r["live"], 1)
        )
        rows = self._update("attempts", rows, lambda r: {"ending": "canceled", "check_at": 0})
        return rows, len(rows)

    def lock_lookups(self, p: Params) -> Result:
        return self._select([{"locked": 1}])

    # -- events and deliveries -----------------------------------------------------------

    def insert_event(self, p: Params) -> Result:
        seq = max(self.tables["events"], default=0) + 1  # INTEGER PRIMARY KEY: max(rowid) + 1
        fields = "id call_id attempt_id type occurred_at dedupe_key body"
        values = pick(p, fields) | {"seq": seq}
        row = self._insert("events", values, on_conflict=("dedupe_key",))
        return self._one({"seq": row["seq"]} if row is not None else None)

    def list_events(self, p: Params) -> Result:
        rows = self._where("events", lambda r: eq(r["call_id"], p["call_id"]))
        return self._select(ordered(rows, "seq"))

    def get_event(self, p: Params) -> Result:
        return self._select(self._where("events", lambda r: eq(r["seq"], p["seq"])))

    def insert_delivery(self, p: Params) -> Result:
        values = pick(p, "id event_seq event_id call_id handler")
        values |= {"state": "pending", "tries": 0, "not_before": p["now"], "updated_at": p["now"]}
        self._insert("deliveries", values)
        return [], 1

    def claim_deliveries(self, p: Params) -> Result:
        now = p["now"]
        pending = self._where("deliveries", lambda r: eq(r["state"], "pending"))

        def head(d: Row) -> bool:
            return not any(
                eq(e["call_id"], d["call_id"])
                and eq(e["handler"], d["handler"])
                and lt(e["event_seq"], d["event_seq"])
                for e in pending
            )

        due = [
            d
            for d in pending
            if eq(d["handler"], p["handler"])
            and le(d["not_before"], now)
            and (d["lease_until"] is None or lt(d["lease_until"], now))
            and head(d)
        ]
        chosen = take(ordered(due, "event_seq"), p["limit"])
        rows = self._update(
            "deliveries",
            chosen,
            lambda r: {
                "lease_owner": p["owner"],
                "lease_until": p["lease_until"],
                "tries": r["tries"] + 1,
            },
        )
        return rows, len(rows)

    def finish_delivery(self, p: Params) -> Result:
        rows = self._where(
            "deliveries", lambda r: eq(r["id"], p["id"]) and eq(r["lease_owner"], p["owner"])
        )
        changes = {
            "state": p["state"],
            "not_before": p["not_before"],
            "last_error": p["last_error"],
            "lease_owner": None,
            "lease_until": None,
            "updated_at": p["now"],
        }
        return [], len(self._update("deliveries", rows, lambda r: changes))

    def return_delivery(self, p: Params) -> Result:
        rows = self._where(
            "deliveries",
            lambda r: (
                eq(r["id"], p["id"])
                and eq(r["lease_owner"], p["owner"])
                and eq(r["state"], "pending")
            ),
        )

        def changes(row: Row) -> Params:
            return {
                "lease_owner": None,
                "lease_until": None,
                "tries": row["tries"] - 1,
                "not_before": p["not_before"],
                "updated_at": p["now"],
            }

        return [], len(self._update("deliveries", rows, changes))

    def list_deliveries(self, p: Params) -> Result:
        state, handler = p["state"], p["handler"]
        rows = self._where(
            "deliveries",
            lambda r: (
                (state is None or eq(r["state"], state))
                and (handler is None or eq(r["handler"], handler))
            ),
        )
        return self._select(take(ordered(rows, "event_seq", "handler"), p["limit"]))

    def replay_delivery(self, p: Params) -> Result:
        rows = self._where("deliveries", lambda r: eq(r["id"], p["id"]) and eq(r["state"], "dead"))
        changes = {"state": "pending", "tries": 0, "not_before": p["now"], "last_error": None}
        changes |= {"lease_owner": None, "lease_until": None, "updated_at": p["now"]}
        updated = self._update("deliveries", rows, lambda r: changes)
        return updated, len(updated)

    def release_deliveries(self, p: Params) -> Result:
        rows = self._where(
            "deliveries",
            lambda r: eq(r["lease_owner"], p["owner"]) and eq(r["state"], "pending"),
        )

        def changes(row: Row) -> Params:
            return {"lease_owner": None, "lease_until": None, "tries": row["tries"] - 1}

        return [], len(self._update("deliveries", rows, changes))

    # -- timers and receipts -------------------------------------------------------------

    def insert_timer(self, p: Params) -> Result:
        values = {name: p[name] for name in ("id", "kind", "ref", "due_at")}
        row = self._insert("timers", values, on_conflict=("kind", "ref"))
        return [], 0 if row is None else 1

    def next_due_timer(self, p: Params) -> Result:
        due = self._where("timers", lambda r: le(r["due_at"], p["now"]))
        return self._select(ordered(due, "due_at")[:1])

    def delete_timer(self, p: Params) -> Result:
        rows = self._where("timers", lambda r: eq(r["kind"], p["kind"]) and eq(r["ref"], p["ref"]))
        return [], self._delete("timers", rows)

    def next_timer(self, p: Params) -> Result:
        due = [r["due_at"] for r in self.tables["timers"].values() if r["due_at"] is not None]
        return self._select([{"due_at": min(due, key=row_key) if due else None}])

    def _kv(self, p: Params) -> list[Row]:
        return self._where(
            "plugin_kv", lambda r: eq(r["scope"], p["scope"]) and eq(r["key"], p["key"])
        )

    def kv_get(self, p: Params) -> Result:
        return self._select([{"value": r["value"]} for r in self._kv(p)])

    def kv_set(self, p: Params) -> Result:
        values = {"value": p["value"], "updated_at": p["now"]}
        existing = self._kv(p)
        if existing:
            return [], len(self._update("plugin_kv", existing, lambda r: values))
        pk = f"{p['scope']}\0{p['key']}"
        self._insert("plugin_kv", {"pk": pk, "scope": p["scope"], "key": p["key"], **values})
        return [], 1

    def kv_delete(self, p: Params) -> Result:
        return [], self._delete("plugin_kv", self._kv(p))

    def insert_receipt(self, p: Params) -> Result:
        values = {"id": p["id"], "received_at": p["now"], "attempt_id": None}
        values |= {"outcome": "received", "body": p["body"]}
        row = self._insert("receipts", values, on_conflict=("id",))
        return self._one({"id": row["id"]} if row is not None else None)

    def update_receipt(self, p: Params) -> Result:
        rows = self._where("receipts", lambda r: eq(r["id"], p["id"]))
        changes = {"attempt_id": p["attempt_id"], "outcome": p["outcome"]}
        return [], len(self._update("receipts", rows, lambda r: changes))


_SQL = connector.queries("memory")  # the base queries: their names and parameters
_MISSING = sorted(name for name in _SQL if not callable(getattr(_Database, name, None)))
if _MISSING:  # pragma: no cover - a query added to queries.sql but not here
    raise NotImplementedError(f"MemoryConnector does not implement {_MISSING}")


class _MemoryTransaction:
    """A transaction over the in-memory tables; usable only inside its ``async with``."""

    def __init__(self, db: _Database) -> None:
        self._db = db
        self.active = True

    def _run(self, query: str, params: Params) -> Result:
        if not self.active:
            raise exceptions.StoreError(f"{query}: the transaction is over")
        try:
            sql = _SQL[query]
        except KeyError:
            raise exceptions.StoreError(f"unknown query {query}") from None
        connector.check_params(sql, params, query)
        for name, value in params.items():
            if value is not None and not isinstance(value, int | float | str | bytes):
                raise exceptions.StoreError(
                    f"{query}: type {type(value).__name__} is not supported (parameter {name})"
                )
        method: Callable[[Params], Result] = getattr(self._db, query)
        try:
            rows, changed = method(params)
        except exceptions.StoreError as exc:  # a constraint failed, as SQLite says it
            raise exceptions.StoreError(f"{query}: {exc.message}") from exc
        return [dict(row) for row in rows], changed

    async def fetch(self, query: str, **params: Any) -> list[Row]:
        """Run a named query and return (copies of) its rows."""
        return self._run(query, params)[0]

    async def fetchone(self, query: str, **params: Any) -> Row | None:
        """Run a named query and return its first row, if any."""
        rows = self._run(query, params)[0]
        return rows[0] if rows else None

    async def execute(self, query: str, **params: Any) -> int:
        """Run a named query and return the number of rows it changed (-1 for a SELECT)."""
        return self._run(query, params)[1]

    async def executemany(self, query: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run a named write once per parameter set."""
        for params in rows:
            self._run(query, dict(params))


class MemoryConnector:
    """A store held in Python dicts: ``memory://``. One transaction at a time; an exception
    inside a transaction restores the tables as they were at its start. The data lives as
    long as the connector object (closing and reopening it keeps it, like a file)."""

    dialect = "memory"

    def __init__(self) -> None:
        self._db = _Database()
        self._lock = asyncio.Lock()
        self._open = False

    def __repr__(self) -> str:
        sizes = ", ".join(f"{table}={len(rows)}" for table, rows in self._db.tables.items())
        return f"MemoryConnector({sizes})"

    async def open(self) -> None:
        """Mark the store open (the tables exist from the start: nothing to migrate)."""
        self._open = True

    async def close(self) -> None:
        """Mark the store closed; the data stays for a later :meth:`open`."""
        self._open = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_MemoryTransaction]:
        """A transaction: kept when the block exits normally, undone on any exception."""
        if not self._open:
            raise exceptions.StoreError("the in-memory store is not open")
        async with self._lock:
            snapshot = self._db.snapshot()
            tx = _MemoryTransaction(self._db)
            try:
                yield tx
            except BaseException:
                self._db.restore(snapshot)
                raise
            finally:
                tx.active = False
