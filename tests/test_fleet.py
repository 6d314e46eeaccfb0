"""A fleet: three daemon processes on one PostgreSQL database behind one load balancer.

The simulator's webhooks go to the balancer, which spreads them over every intake that is up.
Mid-run one daemon is SIGKILLed and another is stopped with SIGTERM; the last one must finish
the campaign: every call ends in the simulator's outcome, nobody is dialed twice, the
simulator never sees more live calls than the fleet's limit, and every event reaches the
handler, in order per call.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import drop_schema, new_scratch_schema
from tests.daemons import (
    TERMINAL,
    DaemonConfig,
    Recorder,
    check_deliveries,
    check_events,
    destinations,
    dialed_once,
    provider_status,
    queue_calls,
    reap_fixture,
    recorder_fixture,
    start_daemon_async,
    start_simulator,
    wait_all_terminal,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

_reap = reap_fixture()
recorder = recorder_fixture(fail_first=3)

FLEET_LIMIT = 6


class Balancer:
    """A small HTTP load balancer: round-robin over the backends, skipping any that refuses
    the connection (as a real balancer's health checks would)."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.served: Counter[str] = Counter()
        self._next = itertools.cycle(range(len(backends)))
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._http = aiohttp.ClientSession()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._http is not None
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        first = next(self._next)
        for offset in range(len(self.backends)):
            backend = self.backends[(first + offset) % len(self.backends)]
            try:
                async with self._http.request(
                    request.method, backend + request.path_qs, data=body, headers=headers
                ) as answer:
                    text = await answer.read()
                    self.served[backend] += 1
                    return web.Response(
                        status=answer.status, body=text, content_type=answer.content_type
                    )
            except aiohttp.ClientConnectionError:
                continue
        return web.Response(status=503, text="no backend")


@pytest.fixture
async def fleet_store(postgres_url: str) -> AsyncIterator[str]:
    """A store URL on a fresh PostgreSQL schema, dropped afterwards."""
    schema = new_scratch_schema(postgres_url)
    sep = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{sep}schema={schema}"
    await drop_schema(postgres_url, schema)


async def test_three_daemons_one_killed_one_stopped(
    tmp_path: Path, recorder: Recorder, fleet_store: str
) -> None:
    faults = {"duplicate_webhooks": 0.2, "out_of_order": 0.2}
    sim = start_simulator(tmp_path, seed=23, time_scale=0.004, max_concurrent=50, faults=faults)
    configs = [
        DaemonConfig(
            simulator_url=sim.url,
            store_path=tmp_path / "unused.db",
            store_url=fleet_store,
            recorder_url=recorder.url,
            max_live_calls=FLEET_LIMIT,
            calls_per_second=40,
            max_call_duration="60s",
        )
        for _ in range(3)
    ]
    balancer = Balancer([f"http://127.0.0.1:{c.webhook_port}" for c in configs])
    public = await balancer.start()
    try:
        daemons = []
        for n, cfg in enumerate(configs):
            cfg.public_url = public
            (tmp_path / f"d{n}").mkdir()
            daemons.append(await start_daemon_async(tmp_path / f"d{n}", cfg))
        survivor, killed, stopped = daemons
        numbers = destinations(90, start=2000)
        async with survivor.async_api() as api:
            queued = await queue_calls(api, numbers, metadata={"batch": "fleet"})
            await wait_until(lambda: sim.stats()["placed"] >= 25, 30, "25 placements", survivor)
            killed.kill()
            await wait_until(lambda: sim.stats()["placed"] >= 50, 30, "50 placements", survivor)
            # In a thread: the recorder and the balancer run on this event loop.
            assert await asyncio.to_thread(stopped.terminate) == 0, stopped.log_tail()
            # The killed daemon's leases (30 s) run out; the survivor takes its work over.
            calls = await wait_all_terminal(api, queued, survivor, timeout=120, recorder=recorder)
        sim_calls = sim.calls()
        stats = sim.stats()
    finally:
        await balancer.stop()

    by_to = dialed_once(sim_calls)
    assert set(by_to) == set(numbers), "some calls were never dialed"
    assert stats["max_live_seen"] <= FLEET_LIMIT, stats
    assert len([b for b, n in balancer.served.items() if n > 0]) == 3, balancer.served

    wrong: list[tuple[str, str, str]] = []
    problems: list[str] = []
    for call in calls.values():
        sim_call = by_to[call["to"]]
        acknowledged = [
            w
            for w in sim_call["webhooks"]
            if w["status"] == sim_call["outcome"] and w["http_status"] == 200
        ]
        expected = provider_status(sim_call["outcome"]) if acknowledged else "timed_out"
        if call["status"] != expected:
            wrong.append((call["to"], sim_call["outcome"], call["status"]))
        problems += check_events(call)
    assert not wrong, f"(to, simulator outcome, our status): {wrong}"
    assert not problems, "\n".join(problems)
    problems = check_deliveries(recorder, calls)
    assert not problems, "\n".join(problems)
    terminal: dict[str, Any] = {
        e["id"]: e for c in calls.values() for e in c["events"] if e["status"] in TERMINAL
    }
    assert len(terminal) == len(calls)
    assert set(terminal) <= recorder.accepted_ids()
