"""What only the PostgreSQL connector has: a pool of concurrent transactions, migrations raced
by daemons starting together, ``FOR UPDATE SKIP LOCKED`` claims, a schema in the URL, and a
password that must never leak. The engine's behaviour is in the conformance suite
(``test_store.py``), which runs on PostgreSQL too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from orchestrator import connectors, exceptions
from orchestrator.connectors import protocol as connector
from orchestrator.connectors.postgres import PostgresConnector, translate
from orchestrator.connectors.protocol import Connector, migrations
from orchestrator.connectors.sqlite import SQLiteConnector
from tests.conftest import PostgresFactory

pytestmark = pytest.mark.postgres

T0 = 1_700_000_000.0
SECRET = "s3cr3t-Pa55w0rd"


async def _columns(url: str, schema: str, table: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            schema,
            table,
        )
    finally:
        await conn.close()
    return [row["column_name"] for row in rows]


async def _applied(url: str, schema: str) -> list[tuple[int, str, float]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            f'SELECT version, name, applied_at FROM "{schema}".schema_migrations '  # noqa: S608
            "ORDER BY version"
        )
    finally:
        await conn.close()
    return [(row["version"], row["name"], row["applied_at"]) for row in rows]


async def _insert_call(conn: Connector, call_id: str, to: str) -> None:
    async with conn.transaction() as tx:
        await tx.fetchone(
            "insert_call",
            id=call_id,
            idempotency_key=None,
            request_hash="h",
            to_number=to,
            from_number="+15559990000",
            agent_id=None,
            campaign=None,
            metadata="{}",
            purpose=None,
            goal=None,
            template_id=None,
            status="queued",
            now=T0,
        )
        await tx.fetchone(
            "insert_attempt",
            id=f"a-{call_id}",
            call_id=call_id,
            number=1,
            to_number=to,
            from_number="+15559990000",
            webhook_token=f"t-{call_id}",
            campaign=None,
            priority=0,
            not_before=T0,
            now=T0,
        )


async def _claim_together(
    conn: Connector, claimers: int, claim: Any, *, timeout: float = 20
) -> list[list[str]]:
    """Run ``claim(tx)`` in ``claimers`` transactions at once, each on its own pooled
    connection, none committing before all have claimed: what SKIP LOCKED is for (without it
    they would wait for each other, here forever)."""
    barrier = asyncio.Barrier(claimers)

    async def one() -> list[str]:
        async with conn.transaction() as tx:
            got: list[str] = await claim(tx)
            await barrier.wait()
        return got

    return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(claimers))), timeout)


# -- migrations ------------------------------------------------------------------------------


async def test_concurrent_migrations_apply_each_once(
    postgres: PostgresFactory, postgres_url: str
) -> None:
    conns = [postgres(max_size=2) for _ in range(5)]
    await asyncio.gather(*(c.open() for c in conns))
    applied = await _applied(postgres_url, postgres.schema)
    assert [(v, n) for v, n, _ in applied] == [(m.version, m.name) for m in migrations()]
    for c in conns:  # every connector works on the one schema
        async with c.transaction() as tx:
            assert await tx.fetchone("count_live") == {"n": 0}
    await asyncio.gather(*(c.close() for c in conns))

    again = postgres()
    await again.open()  # nothing pending: nothing re-applied
    assert await _applied(postgres_url, postgres.schema) == applied


async def test_events_seq_is_bigserial(postgres: PostgresFactory, postgres_url: str) -> None:
    conn = postgres()
    await conn.open()
    async with conn.transaction() as tx:
        row = await tx.fetchone(
            "insert_event",
            id="e1",
            call_id="c",
            attempt_id=None,
            type="t",
            occurred_at=1,  # an int timestamp: stored and returned as a float
            dedupe_key=None,
            body="{}",
        )
        assert row == {"seq": 1}
        event = await tx.fetchone("get_event", seq=1)
    assert event is not None
    assert type(event["seq"]) is int
    assert event["occurred_at"] == 1.0 and type(event["occurred_at"]) is float
    pg = await asyncpg.connect(postgres_url)
    try:
        kind = await pg.fetchval(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'events' AND column_name = 'seq'",
            postgres.schema,
        )
    finally:
        await pg.close()
    assert kind == "bigint"


# -- SKIP LOCKED claims ----------------------------------------------------------------------


async def test_concurrent_attempt_claims_never_share(postgres: PostgresFactory) -> None:
    """Ten claimers at once (each its own pooled connection, as ten daemons would be): every
    attempt goes to one of them only, and nobody waits forever."""
    from orchestrator.store import Claim, Store

    conn = postgres(max_size=12)
    await conn.open()
    for n in range(20):
        await _insert_call(conn, f"c{n:02}", f"+1555000{n:04}")
    stores = [Store(conn, clock=lambda: T0 + 1) for _ in range(10)]
    got = await asyncio.gather(
        *(s.claim_attempt(f"w{n}", max_live=100, lease=30, watchdog_after=60)
          for n, s in enumerate(stores))
    )  # fmt: skip
    ids = [c.attempt_id for c in got if isinstance(c, Claim)]
    assert len(ids) == 10 and len(set(ids)) == 10, got
    async with conn.transaction() as tx:
        assert await tx.fetchone("count_live") == {"n": 10}


async def test_concurrent_delivery_claims_never_share(postgres: PostgresFactory) -> None:
    conn = postgres(max_size=10)
    await conn.open()
    async with conn.transaction() as tx:
        for n in range(30):
            await tx.execute(
                "insert_delivery",
                id=f"d{n:02}",
                event_seq=n + 1,
                event_id=f"e{n}",
                call_id=f"c{n}",
                handler="h",
                now=T0,
            )

    async def claim(tx: Any) -> list[str]:
        rows = await tx.fetch(
            "claim_deliveries", handler="h", owner="w", lease_until=T0 + 30, now=T0 + 1, limit=3
        )
        return [row["id"] for row in rows]

    claims = await _claim_together(conn, 8, claim)
    got = [delivery for one in claims for delivery in one]
    assert all(len(one) == 3 for one in claims), claims
    assert len(set(got)) == len(got) == 24


async def test_concurrent_timers_are_taken_once(postgres: PostgresFactory) -> None:
    conn = postgres(max_size=8)
    await conn.open()
    async with conn.transaction() as tx:
        for n in range(10):
            await tx.execute("insert_timer", id=f"t{n}", kind="k", ref=f"r{n}", due_at=T0 + n)

    async def claim(tx: Any) -> list[str]:
        row = await tx.fetchone("next_due_timer", now=T0 + 100)
        if row:
            await tx.execute("delete_timer", kind=row["kind"], ref=row["ref"])
        return [row["id"]] if row else []

    claims = await _claim_together(conn, 6, claim)
    got = [timer for one in claims for timer in one]
    assert len(got) == 6 and len(set(got)) == 6
    async with conn.transaction() as tx:
        assert await tx.fetchone("next_timer") is not None


# -- transactions ----------------------------------------------------------------------------


async def test_failed_read_aborts_and_commit_says_so(postgres: PostgresFactory) -> None:
    conn = postgres()
    await conn.open()

    async def swallow_a_failed_read() -> None:
        async with conn.transaction() as tx:
            await tx.execute("insert_timer", id="t1", kind="k", ref="r", due_at=T0)
            with pytest.raises(exceptions.StoreError, match="list_calls"):
                # PostgreSQL refuses a negative LIMIT: the transaction is aborted.
                await tx.fetch("list_calls", status=None, campaign=None, after=None, limit=-1)
            with pytest.raises(exceptions.StoreError, match="aborted"):
                await tx.fetchone("next_timer")

    with pytest.raises(exceptions.StoreError, match="commit failed"):
        await swallow_a_failed_read()
    async with conn.transaction() as tx:
        assert await tx.fetchone("next_timer") == {"due_at": None}  # nothing committed


_UPDATE_ATTEMPT = translate(
    "update_attempt", connector.queries("postgres")["update_attempt"]
).params


async def test_cancelled_transaction_rolls_back_and_pool_recovers(
    postgres: PostgresFactory,
) -> None:
    conn = postgres(max_size=2)
    await conn.open()
    await _insert_call(conn, "c1", "+15550000001")
    async with conn.transaction() as tx:
        queued = await tx.fetchone("get_attempt", id="a-c1")
    assert queued is not None
    queued = {k: v for k, v in queued.items() if k in _UPDATE_ATTEMPT}
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:  # locks the attempt's row until released
        async with conn.transaction() as tx:
            await tx.fetchone(
                "claim_attempt_by_id", id="a-c1", owner="w1", from_number="+15559990000",
                lease_until=T0 + 30, now=T0 + 1, check_at=None,
            )  # fmt: skip
            holding.set()
            await release.wait()

    async def blocked() -> None:  # waits for that row lock, then is cancelled
        async with conn.transaction() as tx:
            await tx.execute("update_attempt", **(queued | {"status": "failed"}))

    holder = asyncio.create_task(hold())
    await holding.wait()
    waiter = asyncio.create_task(blocked())
    await asyncio.sleep(0.3)
    assert not waiter.done()  # waiting for the holder's row lock
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    for _ in range(3):  # both pooled connections are usable again
        async with conn.transaction() as tx:
            row = await tx.fetchone("get_attempt", id="a-c1")
    assert row is not None and row["status"] == "dialing" and row["ambiguous"] == 0


async def test_rows_match_sqlite_query_by_query(postgres: PostgresFactory, tmp_path: Path) -> None:
    """The conformance suite's script of every named query: PostgreSQL answers as SQLite."""
    from tests.test_store import _script

    results = []
    for conn in (SQLiteConnector(f"sqlite://{tmp_path / 'diff.db'}"), postgres()):
        await conn.open()
        try:
            results.append(await _script(conn))
        finally:
            await conn.close()
    sqlite, pg = results
    differ = [
        (name, mine, theirs)
        for (name, mine), (_, theirs) in zip(sqlite, pg, strict=True)
        if mine != theirs and name != "notify"  # pg_notify's row, not the topic: ignored
    ]
    # LIMIT -1 is "no limit" on SQLite and an error on PostgreSQL; LIMIT NULL the other way
    # round. The engine sends neither.
    assert [(name, "StoreError" in (a, b)) for name, a, b in differ] == [("list_calls", True)] * 2


# -- parameters ------------------------------------------------------------------------------


def test_translation_of_named_parameters() -> None:
    query = translate(
        "q",
        "SELECT CAST(:a AS TEXT)::text, ':b', \"x:c\", E'it\\'s :d', $t$ :e $t$ -- :f\n"
        "FROM t WHERE x = :a AND y = :g_2 /* :h */ AND z::int = :b",
    )
    assert query.params == ("a", "g_2", "b")
    assert query.sql == (
        "SELECT CAST($1 AS TEXT)::text, ':b', \"x:c\", E'it\\'s :d', $t$ :e $t$ -- :f\n"
        "FROM t WHERE x = $1 AND y = $2 /* :h */ AND z::int = $3"
    )
    assert query.args({"a": 1, "b": 2, "g_2": 3, "unused": 4}) == [1, 3, 2]
    with pytest.raises(exceptions.StoreError, match=r"query q is missing parameters \['b'\]"):
        query.args({"a": 1, "g_2": 3})


def test_every_named_query_translates() -> None:
    for name, sql in connector.queries("postgres").items():
        query = translate(name, sql)
        assert ":" not in query.sql.replace("::", ""), name
        assert len(query.params) == len(set(query.params))


async def test_argument_errors_name_the_parameter(postgres: PostgresFactory) -> None:
    conn = postgres()
    await conn.open()
    with pytest.raises(exceptions.StoreError, match=r"get_call: .*parameter :id"):
        async with conn.transaction() as tx:
            await tx.fetchone("get_call", id=42)
    async with conn.transaction() as tx:  # the pool's connection is usable again
        assert await tx.fetchone("get_call", id="42") is None


# -- URL, schema and password ----------------------------------------------------------------


async def test_schema_in_url(postgres: PostgresFactory, postgres_url: str) -> None:
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}schema={postgres.schema}"
    conn = postgres(url)
    assert conn.schema == postgres.schema
    assert "?schema=" not in repr(conn) and "&schema=" not in repr(conn)  # not sent to asyncpg
    await conn.open()
    assert "to_number" in await _columns(postgres_url, postgres.schema, "calls")
    same = postgres(url, schema=postgres.schema)  # the same schema twice is fine
    await same.open()
    async with same.transaction() as tx:
        assert await tx.fetchone("count_live") == {"n": 0}


def test_schema_errors() -> None:
    base = "postgresql://u@127.0.0.1:1/db"
    with pytest.raises(exceptions.ConfigError, match="more than one schema"):
        PostgresConnector(f"{base}?schema=a", schema="b")
    with pytest.raises(exceptions.ConfigError, match="invalid PostgreSQL schema"):
        PostgresConnector(f"{base}?schema=a;drop")
    with pytest.raises(exceptions.ConfigError, match="pool size"):
        PostgresConnector(base, min_size=5, max_size=2)


async def test_connect_builds_a_postgres_connector() -> None:
    for scheme in ("postgresql", "postgres"):
        conn = connectors.connect(f"{scheme}://u:{SECRET}@127.0.0.1:1/db?schema=s")
        assert isinstance(conn, PostgresConnector)
        assert conn.schema == "s"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://orchestrator:{SECRET}@127.0.0.1:1/test",
        f"postgresql://orchestrator:{SECRET}@127.0.0.1:1/test?schema=s",
        f"postgres://orchestrator@127.0.0.1:1/test?password={SECRET}",
        "postgresql://orchestrator:s3cr3t%2FPa55@127.0.0.1:1/test",
    ],
)
async def test_password_never_shown(url: str) -> None:
    secrets = (SECRET, "s3cr3t/Pa55", "s3cr3t%2FPa55")
    conn = PostgresConnector(url, connect_timeout=5)
    assert not any(s in repr(conn) or s in conn.url for s in secrets), (repr(conn), conn.url)
    assert "***" in repr(conn)
    with pytest.raises(exceptions.StoreError) as caught:
        await conn.open()
    shown = (str(caught.value), repr(caught.value), caught.value.message)
    assert "cannot open PostgreSQL store" in shown[0]
    assert not any(s in text for s in secrets for text in shown), shown
    with pytest.raises(exceptions.StoreError, match="not open"):
        async with conn.transaction():
            pass
    await conn.close()  # closing what never opened is fine


async def test_pool_and_transaction_errors_are_store_errors(postgres: PostgresFactory) -> None:
    conn = postgres(min_size=0, max_size=1)
    await conn.open()
    async with conn.transaction() as tx:
        with pytest.raises(exceptions.StoreError, match="unknown query"):
            await tx.fetch("no_such_query")
    await conn.close()
    with pytest.raises(exceptions.StoreError, match="not open"):
        async with conn.transaction():
            pass


# -- the fleet: several stores (daemons) on one database ---------------------------------------


async def test_notify_wakes_another_daemon(postgres: PostgresFactory) -> None:
    """A call queued through one daemon's store wakes the dialer of another ('dial'); an event
    with subscribed handlers wakes delivery workers ('deliver')."""
    from orchestrator.model import NewCall
    from orchestrator.store import Store

    listener_conn, writer_conn = postgres(), postgres()
    await listener_conn.open()
    await writer_conn.open()
    heard: asyncio.Queue[str] = asyncio.Queue()
    listening = asyncio.create_task(listener_conn.listen(heard.put_nowait))
    try:
        await asyncio.sleep(0.3)  # LISTEN is in place
        writer = Store(writer_conn, router=lambda event: ["audit"])
        assert writer.notifies
        await writer.create_call(NewCall(to="+14155550100", from_="+16045551234"))
        topics = {await asyncio.wait_for(heard.get(), 5) for _ in range(2)}
        assert topics == {"dial", "deliver"}
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)


async def test_fleet_wide_live_limit_holds_under_concurrent_claims(
    postgres: PostgresFactory,
) -> None:
    """Five daemons claiming at once never hold more than max_live slots together."""
    from orchestrator.model import NewCall
    from orchestrator.store import Claim, Store

    stores = [Store(postgres(max_size=4)) for _ in range(5)]
    for store in stores:
        await store.open()
    for n in range(40):
        await stores[0].create_call(NewCall(to=f"+1415555{n:04}", from_="+16045551234"))

    async def claim_all(store: Store, owner: str) -> int:
        got = 0
        for _ in range(20):
            claim = await store.claim_attempt(owner, max_live=7, lease=30, watchdog_after=600)
            got += isinstance(claim, Claim)
        return got

    claimed = await asyncio.gather(*(claim_all(s, f"d{n}") for n, s in enumerate(stores)))
    assert sum(claimed) == 7, claimed
    assert await stores[0].live_count() == 7


# -- races between transactions on one attempt (several pooled connections, as in a daemon) ---


class _SlowTransaction:
    """A real transaction that pauses after the named queries, to force an interleaving."""

    def __init__(self, tx: Any, delays: dict[str, float]) -> None:
        self._tx = tx
        self._delays = delays

    async def _after(self, query: str) -> None:
        if query in self._delays:
            await asyncio.sleep(self._delays[query])

    async def fetch(self, query: str, **params: Any) -> Any:
        rows = await self._tx.fetch(query, **params)
        await self._after(query)
        return rows

    async def fetchone(self, query: str, **params: Any) -> Any:
        row = await self._tx.fetchone(query, **params)
        await self._after(query)
        return row

    async def execute(self, query: str, **params: Any) -> Any:
        changed = await self._tx.execute(query, **params)
        await self._after(query)
        return changed


class _Slow:
    """The same connector (same pool), slowed after some queries."""

    notifies = True

    def __init__(self, inner: Any, delays: dict[str, float]) -> None:
        self._inner = inner
        self._delays = delays

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SlowTransaction]:
        async with self._inner.transaction() as tx:
            yield _SlowTransaction(tx, self._delays)


def _hook(status: str, provider_call_id: str) -> Any:
    from orchestrator.model import CallStatus
    from orchestrator.store import Webhook

    raw = f'{{"status": "{status}", "id": "{provider_call_id}"}}'.encode()
    return Webhook(raw=raw, status=CallStatus(status), provider_call_id=provider_call_id)


async def _claimed(store: Any, to: str, watchdog_after: float = 600) -> Any:
    from orchestrator.model import NewCall
    from orchestrator.store import Claim

    await store.create_call(NewCall(to=to, from_="+16045551234"))
    claim = await store.claim_attempt("A", max_live=10, lease=30, watchdog_after=watchdog_after)
    assert isinstance(claim, Claim)
    return claim


async def _state(conn: Any, attempt_id: str) -> tuple[dict[str, Any], list[str], bool]:
    async with conn.transaction() as tx:
        attempt = await tx.fetchone("get_attempt", id=attempt_id)
        events = await tx.fetch("list_events", call_id=attempt["call_id"])
        timer = await tx.fetchone("next_timer")
    keys = ("status", "live", "ambiguous")
    return {k: attempt[k] for k in keys}, [e["type"] for e in events], timer["due_at"] is not None


async def _later(seconds: float, work: Any) -> Any:
    await asyncio.sleep(seconds)
    return await work


async def test_placed_answer_racing_a_final_webhook_loses_nothing(
    postgres: PostgresFactory,
) -> None:
    from orchestrator.store import Store

    conn = postgres(max_size=6)
    await conn.open()
    fast, slow = Store(conn), Store(_Slow(conn, {"lock_attempt": 0.3}))
    claim = await _claimed(fast, "+14155550101")
    await asyncio.gather(
        slow.placed(claim.attempt_id, provider_call_id="P1", provider_status="initiated"),
        _later(0.1, fast.ingest(_hook("failed", "P1"), token=claim.attempt.webhook_token)),
    )
    attempt, events, timer = await _state(conn, claim.attempt_id)
    assert attempt == {"status": "failed", "live": 0, "ambiguous": 0}
    assert (
        events[-1] == "call.failed"
        and "call.initiated" not in events[events.index("call.failed") :]
    )
    assert not timer


async def test_two_webhooks_on_two_connections_keep_the_final_one(
    postgres: PostgresFactory,
) -> None:
    from orchestrator.store import Store

    conn = postgres(max_size=6)
    await conn.open()
    fast, slow = Store(conn), Store(_Slow(conn, {"lock_attempt": 0.3}))
    claim = await _claimed(fast, "+14155550102")
    await fast.placed(claim.attempt_id, provider_call_id="P2", provider_status="initiated")
    token = claim.attempt.webhook_token
    await asyncio.gather(
        slow.ingest(_hook("in_progress", "P2"), token=token),
        _later(0.1, fast.ingest(_hook("completed", "P2"), token=token)),
    )
    attempt, events, timer = await _state(conn, claim.attempt_id)
    assert attempt == {"status": "completed", "live": 0, "ambiguous": 0}
    assert events[-1] == "call.completed" and not timer


async def test_timed_out_answer_racing_a_webhook_is_not_left_live(
    postgres: PostgresFactory,
) -> None:
    from orchestrator import exceptions as exc
    from orchestrator.store import Store

    conn = postgres(max_size=6)
    await conn.open()
    fast, slow = Store(conn), Store(_Slow(conn, {"lock_attempt": 0.3}))
    claim = await _claimed(fast, "+14155550103")
    await asyncio.gather(
        slow.ambiguous(claim.attempt_id, exc.AmbiguousPlacement("read timed out")),
        _later(0.1, fast.ingest(_hook("busy", "P3"), token=claim.attempt.webhook_token)),
    )
    attempt, _, timer = await _state(conn, claim.attempt_id)
    assert attempt == {"status": "busy", "live": 0, "ambiguous": 0}
    assert not timer and await fast.live_count() == 0


async def test_watchdog_and_requeue_or_webhook_never_deadlock(postgres: PostgresFactory) -> None:
    """Lock order is attempt then timer everywhere; the watchdog never waits for an attempt."""
    from orchestrator.store import Store

    conn = postgres(max_size=6)
    await conn.open()
    fast = Store(conn)
    claim = await _claimed(fast, "+14155550104", watchdog_after=0)
    slow_requeue = Store(_Slow(conn, {"lock_attempt": 0.4}))
    slow_fire = Store(_Slow(conn, {"next_due_timer": 0.2}))
    results = await asyncio.gather(
        slow_requeue.requeue(claim.attempt_id, None, retry_at=0),
        _later(0.1, slow_fire.fire_next()),
        return_exceptions=True,
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    other = await _claimed(fast, "+14155550105", watchdog_after=0)
    fired, ingested = await asyncio.gather(
        slow_fire.fire_next(),
        _later(0.05, fast.ingest(_hook("completed", "P5"), token=other.attempt.webhook_token)),
        return_exceptions=True,
    )
    assert not isinstance(fired, BaseException) and not isinstance(ingested, BaseException)
    attempt, events, _ = await _state(conn, other.attempt_id)
    terminal = [e for e in events if e in ("call.completed", "call.timed_out")]
    assert len(terminal) == 1 and attempt["live"] == 0, events
