"""Shared fixtures: a real simulator on a loopback port, started per test; PostgreSQL stores,
each on a fresh schema dropped afterwards (skipped without a server, failed when ``CI=true``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from orchestrator.connectors.protocol import Connector, redact_url
from orchestrator.provider.simulator import Simulator
from orchestrator.provider.simulator.model import SimulatorConfig
from tests.stores import clock, env, store  # noqa: F401 - fixtures for every test module

StartSimulator = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def start_simulator() -> AsyncIterator[StartSimulator]:
    """Start a simulator (fast time scale, fixed seed unless overridden) on an ephemeral port."""
    started: list[Simulator] = []

    async def start(**overrides: Any) -> Simulator:
        settings: dict[str, Any] = {"time_scale": 0.001, "seed": 7, **overrides}
        sim = Simulator(SimulatorConfig(**settings))
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


# -- PostgreSQL ------------------------------------------------------------------------------

POSTGRES_ENV = "ORCHESTRATOR_TEST_POSTGRES"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

_probed: dict[str, str | None] = {}  # URL -> None when the server answered, else why not
_scratch: dict[str, str] = {}  # scratch schema -> the URL of its server, until dropped


T = TypeVar("T")


def _run_sync(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync or async code (in a thread of its own)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro()).result()


async def _probe(url: str) -> str | None:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as exc:
        return f"asyncpg is not installed ({exc}): pip install -e '.[postgres]'"
    try:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def postgres_test_url() -> str:
    """The test server's URL (``$ORCHESTRATOR_TEST_POSTGRES`` or the local default).

    Unreachable: the test is skipped, but under ``CI=true`` it fails, because a PostgreSQL
    test that silently skips in CI tests nothing.
    """
    url = os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES
    if url not in _probed:
        _probed[url] = _run_sync(lambda: _probe(url))
    reason = _probed[url]
    if reason is not None:
        message = f"PostgreSQL not reachable at {redact_url(url)}: {reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: a skipped PostgreSQL test is a failure)")
        pytest.skip(message)
    return url


def new_scratch_schema(url: str) -> str:
    """A fresh schema name, remembered so the session drops it even if a test does not."""
    schema = f"orch_test_{secrets.token_hex(6)}"
    _scratch[schema] = url
    return schema


async def drop_schema(url: str, schema: str) -> None:
    """Drop a scratch schema and everything in it."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
    _scratch.pop(schema, None)


@functools.cache
def _scratch_connector_class() -> type[Connector]:
    from orchestrator.connectors.postgres import PostgresConnector

    class ScratchPostgresConnector(PostgresConnector):
        """A PostgreSQL connector on its own schema, which it drops when it closes."""

        def __init__(self, url: str, **kwargs: Any) -> None:
            super().__init__(url, **kwargs)
            self.admin_url = url

        async def close(self) -> None:
            try:
                await super().close()
            finally:
                assert self.schema is not None
                await drop_schema(self.admin_url, self.schema)

    return ScratchPostgresConnector


def scratch_postgres(**kwargs: Any) -> Connector:
    """A PostgreSQL connector on a fresh schema that is dropped (CASCADE) when it closes."""
    url = postgres_test_url()
    cls: Any = _scratch_connector_class()
    connector: Connector = cls(url, schema=new_scratch_schema(url), **kwargs)
    return connector


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; skips (fails under ``CI=true``) when it does not answer."""
    return postgres_test_url()


class PostgresFactory:
    """Makes PostgresConnectors that all share one fresh schema, ``self.schema``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.schema = new_scratch_schema(url)
        self.made: list[Any] = []

    def __call__(self, url: str | None = None, **kwargs: Any) -> Any:
        """A connector on the scratch schema; with ``url``, exactly that URL (no schema
        added unless ``schema=`` is given)."""
        from orchestrator.connectors.postgres import PostgresConnector

        if url is None:
            kwargs.setdefault("schema", self.schema)
        conn = PostgresConnector(url or self.url, **kwargs)
        self.made.append(conn)
        return conn

    async def cleanup(self) -> None:
        for conn in self.made:
            await conn.close()
        await drop_schema(self.url, self.schema)


@pytest.fixture
async def postgres(postgres_url: str) -> AsyncIterator[PostgresFactory]:
    """A factory of PostgresConnectors on one fresh schema, dropped with everything in it when
    the test ends (connectors left open are closed first)."""
    factory = PostgresFactory(postgres_url)
    try:
        yield factory
    finally:
        await factory.cleanup()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop any scratch schema a test left behind (say, one whose store failed to open)."""
    for schema, url in list(_scratch.items()):
        try:
            _run_sync(lambda url=url, schema=schema: drop_schema(url, schema))
        except Exception as exc:
            print(f"could not drop the scratch schema {schema}: {exc}")


# The tiers a newcomer can run on their own (README, "Development"): each test module is in
# exactly one. ``store``: the store's behaviour on every connector (memory, SQLite, and
# PostgreSQL where it runs). ``acceptance``: whole daemons (in-process or real subprocesses,
# some killed with SIGKILL) against the simulator. ``unit``: everything else, each part alone.
STORE_TIER = frozenset(
    {
        "test_store",
        "test_sqlite",
        "test_postgres",
        "test_checks",
        "test_group_commit",
        "test_campaigns",
        "test_campaign_lifecycle",
        "test_request_budget_store",
    }
)
ACCEPTANCE_TIER = frozenset(
    {
        "test_acceptance",
        "test_campaign_budget",
        "test_carrier_overload",
        "test_request_budget",
        "test_backpressure",
        "test_campaign_api",
        "test_cli",
        "test_crash",
        "test_demo",
        "test_fleet",
        "test_provider_records",
        "test_reconcile",
        "test_reload",
    }
)


def tier_of(module: str) -> str:
    """The tier marker of a test module (by its name, without the package)."""
    if module in STORE_TIER:
        return "store"
    if module in ACCEPTANCE_TIER:
        return "acceptance"
    return "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        item.add_marker(getattr(pytest.mark, tier_of(module)))
