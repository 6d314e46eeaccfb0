"""Group commit at the intake: webhooks arriving together share a transaction, each request
still answered only once its own webhook is committed, and nobody is left hanging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator import exceptions
from orchestrator.connectors.sqlite import SQLiteConnector
from orchestrator.intake import GroupCommit
from orchestrator.model import CallStatus
from orchestrator.store import Ingest, Store
from tests.test_store import claim, hook, new_call


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(SQLiteConnector(f"sqlite://{tmp_path / 'intake.db'}"))
    await store.open()
    yield store
    await store.close()


async def tokens(store: Store, n: int) -> list[str]:
    """n calls created and claimed: their webhook tokens."""
    for i in range(n):
        await store.create_call(new_call(f"+1555000{i:04}"))
    return [(await claim(store, max_live=n)).attempt.webhook_token for _ in range(n)]


async def test_a_burst_is_written_in_few_commits_and_each_gets_its_own_result(
    store: Store,
) -> None:
    given = await tokens(store, 40)
    commit = GroupCommit(store, max_batch=16)
    results = await asyncio.gather(
        *(commit.ingest(hook(CallStatus.RINGING), token=t) for t in given),
        commit.ingest(hook(CallStatus.RINGING), token="unknown"),
    )
    assert [r.outcome for r in results] == [Ingest.APPLIED] * 40 + [Ingest.UNMATCHED]
    assert commit.written == 41 and commit.commits < 10  # 1, then batches of up to 16
    calls = await store.list_calls(limit=100)
    assert {c.status for c in calls} == {"ringing"}


async def test_a_lone_webhook_is_written_at_once(store: Store) -> None:
    [token] = await tokens(store, 1)
    commit = GroupCommit(store)
    result = await commit.ingest(hook(CallStatus.RINGING), token=token)
    assert result.outcome is Ingest.APPLIED and commit.commits == 1


async def test_a_request_that_goes_away_does_not_disturb_the_others(store: Store) -> None:
    given = await tokens(store, 3)
    commit = GroupCommit(store)
    tasks = [asyncio.create_task(commit.ingest(hook(CallStatus.RINGING), token=t)) for t in given]
    await asyncio.sleep(0)
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [r.outcome for r in (done[0], done[2])] == [Ingest.APPLIED, Ingest.APPLIED]  # type: ignore[union-attr]
    # The webhook of the request that went away was written all the same.
    statuses = [c.status for c in await store.list_calls(limit=10)]
    assert statuses == ["ringing"] * 3


async def test_a_writer_cut_short_fails_every_waiter_and_the_next_writer_starts(
    store: Store,
) -> None:
    given = await tokens(store, 4)
    commit = GroupCommit(store)
    tasks = [
        asyncio.create_task(commit.ingest(hook(CallStatus.RINGING), token=t)) for t in given[:3]
    ]
    await asyncio.sleep(0)
    assert commit._writer is not None
    commit._writer.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(d, exceptions.StoreError) for d in done)  # a 503: sent again
    result = await commit.ingest(hook(CallStatus.RINGING), token=given[3])
    assert result.outcome is Ingest.APPLIED
