"""The dialer against the real simulator over loopback, on the in-memory store: pacing stops
promptly, and a claim that completes after shutdown began is handed back, never placed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from orchestrator.connectors.memory import MemoryConnector
from orchestrator.daemon import dialer
from orchestrator.model import NewCall
from orchestrator.provider import client
from orchestrator.store import ClaimBatch, ClaimRules, Store
from tests.conftest import StartSimulator

FROM = "+16045551234"
AGENT = "c72ea2b8-1234-5678-9abc-def012345678"


class GatedStore(Store):
    """A real store whose claims wait at a gate, so a test can stop the dialer mid-claim."""

    def __init__(self) -> None:
        super().__init__(MemoryConnector())
        self.claiming = asyncio.Event()
        self.gate = asyncio.Event()

    async def claim_batch(self, owner: str, rules: ClaimRules, *, limit: int) -> ClaimBatch:
        batch = await super().claim_batch(owner, rules, limit=limit)
        self.claiming.set()
        await self.gate.wait()
        return batch


@pytest.fixture
async def store() -> AsyncIterator[GatedStore]:
    s = GatedStore()
    await s.open()
    yield s
    await s.close()


def make_dialer(store: Store, magpipe: client.MagpipeClient, rate: float = 100.0) -> dialer.Dialer:
    settings = dialer.DialerParams(
        max_live_calls=5,
        calls_per_second=rate,
        max_call_duration=60.0,
        webhook_base="http://127.0.0.1:9/webhooks/magpipe",
        agent_id=AGENT,
    )
    return dialer.Dialer(store, magpipe, settings, owner="test", publish=lambda events: None)


async def test_claim_finishing_after_stop_is_handed_back(
    store: GatedStore, start_simulator: StartSimulator
) -> None:
    sim = await start_simulator()
    magpipe = client.MagpipeClient(token="sim-token", base_url=sim.url)
    call, _ = await store.create_call(NewCall(to="+14155550101", from_=FROM, agent_id=AGENT))
    the_dialer = make_dialer(store, magpipe)
    runner = asyncio.create_task(the_dialer.run())
    try:
        await asyncio.wait_for(store.claiming.wait(), 5)
        stopping = asyncio.create_task(the_dialer.stop(time.monotonic() + 5))
        await asyncio.sleep(0.05)  # stop() is now waiting for the claim loop
        store.gate.set()
        await asyncio.wait_for(stopping, 5)
        assert runner.done()
    finally:
        runner.cancel()
        await magpipe.aclose()
    assert sim.stats()["placed"] == 0, "a placement started after shutdown began"
    _, [attempt], _ = await store.get_call(call.id) or (None, [], None)
    assert (attempt.status, attempt.live, attempt.ambiguous) == ("queued", 0, 0)
    assert attempt.error_code is None
    assert await store.live_count() == 0
    assert await store.next_timer() is None  # the watchdog went with the claim


async def test_stop_interrupts_a_retry_after_pause(
    store: GatedStore, start_simulator: StartSimulator
) -> None:
    """A long fleet-wide Retry-After pause must not hold shutdown for its whole length."""
    sim = await start_simulator()
    magpipe = client.MagpipeClient(token="sim-token", base_url=sim.url)
    store.gate.set()
    await store.create_call(NewCall(to="+14155550102", from_=FROM, agent_id=AGENT))
    await store.pause_dialing(store.clock() + 3600)
    the_dialer = make_dialer(store, magpipe)
    runner = asyncio.create_task(the_dialer.run())
    try:
        await asyncio.wait_for(store.claiming.wait(), 5)
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await the_dialer.stop(time.monotonic() + 30)
        assert time.monotonic() - started < 5
        assert runner.done()
    finally:
        runner.cancel()
        await magpipe.aclose()
    assert sim.stats()["placed"] == 0
