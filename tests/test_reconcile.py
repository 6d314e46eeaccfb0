"""The provider's records as the second source of truth, with the whole daemon in this process
on a real store, the simulator over loopback HTTP and the real client: calls the provider never
reports on end in their true outcome, ambiguous placements are found or redialed, calls that
outlive their limit are hung up at the provider, and look-ups stay within their budget."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator import config
from orchestrator.daemon.supervisor import Daemon
from orchestrator.model import CallStatus, NewCall
from orchestrator.provider.simulator import Simulator
from orchestrator.provider.simulator.model import Dialect, Faults, Outcome, Script, SimulatorConfig
from tests.daemons import UNLIMITED

FROM = "+16045551234"
SECRET = "whsec_reconcile_test"
API_TOKEN = "reconcile-api-token"
FAST_LOOKUPS = {"after": "0.2s", "every": "0.3s", "ambiguous_grace": "0.5s", "max_per_minute": 6000}


class Rig:
    """A daemon running in this process against a simulator."""

    def __init__(self, daemon: Daemon, sim: Simulator, task: asyncio.Task[int]) -> None:
        self.daemon = daemon
        self.sim = sim
        self.task = task

    @property
    def store(self) -> Any:
        return self.daemon.store

    async def queue(self, to: str, **extra: Any) -> str:
        call, _ = await self.store.create_call(NewCall(to=to, from_=FROM, **extra))
        assert self.daemon._dialer is not None
        self.daemon._dialer.wake.set()
        return str(call.id)

    async def final(self, call_id: str, timeout: float = 20.0) -> tuple[Any, list[Any], list[Any]]:
        """The call once terminal (and no retry pending), with attempts and events."""
        deadline = time.monotonic() + timeout
        while True:
            if self.task.done():
                raise AssertionError(f"the daemon stopped: {self.task.result()}")
            found = await self.store.get_call(call_id)
            assert found is not None
            call, attempts, _events = found
            if CallStatus(call.status).terminal:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"call not terminal: {call}, {attempts}")
            await asyncio.sleep(0.05)

    def sim_calls(self, to: str) -> list[Any]:
        return [c for c in self.sim.calls if c.to == to]

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.daemon.urls["api"], headers={"Authorization": f"Bearer {API_TOKEN}"}
        )


StartRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[StartRig]:
    """Start a simulator and a daemon on it (stopped after the test)."""
    started: list[Rig] = []

    async def start(
        *,
        dialect: str = "deployed",
        reconcile: dict[str, Any] | None = None,
        dialer: dict[str, Any] | None = None,
        rules: list[dict[str, Any]] | None = None,
        store: str | None = None,
        magpipe_timeout: str = "2s",
        sim: Simulator | None = None,
        **simulator: Any,
    ) -> Rig:
        settings: dict[str, Any] = {
            "time_scale": 0.002,
            "seed": 3,
            "dialect": Dialect(dialect),
            "webhook_secret": SECRET,
            "max_concurrent": 200,
            **simulator,
        }
        if sim is None:
            sim = Simulator(SimulatorConfig(**settings))
            await sim.start()
        cfg = config.Config.model_validate(
            {
                "magpipe": {
                    "base_url": sim.url,
                    "token": "sim-token",
                    "webhook_secret": SECRET,
                    "timeout": magpipe_timeout,
                    "reconcile": reconcile or FAST_LOOKUPS,
                    "rate_limit": UNLIMITED,
                },
                "defaults": {"from": FROM},
                "webhooks": {"listen": "127.0.0.1:0"},
                "api": {"listen": "127.0.0.1:0", "token": API_TOKEN},
                "store": store or f"sqlite://{tmp_path / f'rig{len(started)}.db'}",
                "dialer": {
                    "max_live_calls": 200,
                    "calls_per_second": 200,
                    "max_call_duration": "30m",
                    **(dialer or {}),
                },
                "rules": rules or [],
            }
        )
        daemon = Daemon(cfg, lease=5.0)
        task = asyncio.create_task(daemon.run())
        while "api" not in daemon.urls:
            if task.done():
                raise AssertionError(f"the daemon did not start: {task.result()}")
            await asyncio.sleep(0.01)
        # The deployed provider sends to the account's URL, known once the intake listens.
        sim.config = dataclasses.replace(
            sim.config, webhook_url=daemon.urls["webhooks"] + "/webhooks/magpipe"
        )
        started.append(Rig(daemon, sim, task))
        return started[-1]

    yield start
    statuses = []
    for one in started:
        one.daemon.stopping.set()
        statuses.append(await asyncio.wait_for(one.task, 20))
    for sim in {id(one.sim): one.sim for one in started}.values():
        await sim.stop()
    assert statuses == [0] * len(started)


async def test_unanswered_calls_end_in_their_true_outcome_from_the_records(
    rig: StartRig,
) -> None:
    """Deployed: busy, unanswered and failed calls send no webhook; look-ups settle each as
    the provider recorded it, with the event a webhook would have given, within seconds and
    with a 30 minute watchdog. The late misleading call.completed changes nothing."""
    script = {
        "+14155550101": Script(outcome=Outcome.BUSY),
        "+14155550102": Script(outcome=Outcome.NO_ANSWER),
        "+14155550103": Script(outcome=Outcome.FAILED),
        "+14155550104": Script(outcome=Outcome.COMPLETED, duration=30),
    }
    r = await rig(scripts=script, conference_limit=1500.0)  # 3 s: the late webhook comes
    ids = {to: await r.queue(to) for to in script}
    started = time.monotonic()
    results = {to: await r.final(call_id) for to, call_id in ids.items()}
    assert time.monotonic() - started < 10
    for to, (call, attempts, events) in results.items():
        expected = script[to].outcome.value.replace("-", "_")
        assert call.status == expected, (to, call)
        (attempt,) = attempts
        (sim_call,) = r.sim_calls(to)
        assert attempt.provider_call_id == sim_call.id
        assert attempt.agent_call_sid == sim_call.agent_call_sid
        final = events[-1]
        assert final.type == f"call.{expected}"
        if expected != "completed":
            assert final.data["source"] == "lookup"
            assert final.data["endpoint"] in ("get-call", "list-calls")
            assert attempt.settled_by == "lookup"
            assert attempt.check_result.startswith(sim_call.record_status)
    transcript = results["+14155550104"][2][-1].transcript
    assert transcript and "calling about" in transcript  # from the webhook or get-call
    assert await r.store.live_count() == 0  # no slot held once the outcome is known
    # The late misleading call.completed of each unanswered call arrives; nothing changes.
    deadline = time.monotonic() + 10
    while sum(c.overwritten for c in r.sim.calls) < 3:
        assert time.monotonic() < deadline, [c.to_json() for c in r.sim.calls]
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    late = [w for c in r.sim.calls if c.overwritten for w in c.webhooks]
    assert len(late) == 3 and all(w.http_status == 200 for w in late), late
    for to, call_id in ids.items():
        call, _, events = await r.final(call_id)
        assert call.status == script[to].outcome.value.replace("-", "_")
        assert len([e for e in events if e.status and CallStatus(e.status).terminal]) == 1


async def test_busy_number_is_redialed_by_the_retry_rule(rig: StartRig) -> None:
    """The headline feature against the deployed provider: a busy number's retry rule fires
    from the look-up, and the number is dialed exactly max_attempts times."""
    busy, later = "+14155550111", "+14155550112"
    rules = [
        {
            "name": "redial",
            "on": ["call.busy", "call.no_answer"],
            "do": "retry",
            "with": {"delay": "0.2s", "min_gap": "0.1s", "max_attempts": 3},
        }
    ]
    scripts = {
        busy: Script(outcome=Outcome.BUSY),
        later: Script(outcome=Outcome.NO_ANSWER, then=(Outcome.COMPLETED,)),
    }
    r = await rig(scripts=scripts, rules=rules)
    busy_id, later_id = await r.queue(busy), await r.queue(later)
    call, attempts, _ = await r.final(busy_id)
    while len(attempts) < 3 or not CallStatus(attempts[-1].status).terminal:
        call, attempts, _ = await r.final(busy_id)
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # no fourth attempt comes
    call, attempts, _ = await r.final(busy_id)
    assert call.status == "busy" and len(attempts) == 3
    assert len(r.sim_calls(busy)) == 3
    call, attempts, _ = await r.final(later_id)
    while call.status != "completed":
        call, attempts, _ = await r.final(later_id)
        await asyncio.sleep(0.05)
    assert [a.status for a in attempts] == ["no_answer", "completed"]
    assert len(r.sim_calls(later)) == 2


async def test_misattributed_webhooks_are_settled_by_lookups(rig: StartRig) -> None:
    """Every deployed call.completed names another call's record: none is applied to the call
    it names; each call still ends completed with its own record's id and transcript."""
    numbers = [f"+1415555012{i}" for i in range(4)]
    r = await rig(
        scripts={n: Script(duration=20, ring=1) for n in numbers},
        faults=Faults(misattribute=1.0),
    )
    ids = [await r.queue(n) for n in numbers]
    for number, call_id in zip(numbers, ids, strict=True):
        call, (attempt,), events = await r.final(call_id)
        (sim_call,) = r.sim_calls(number)
        assert call.status == "completed"
        assert attempt.provider_call_id == sim_call.id
        assert events[-1].transcript and events[-1].data.get("source") == "lookup"
    sent = [w.payload["data"] for c in r.sim.calls for w in c.webhooks]
    wrong = [d for d in sent if r.sim_calls(d["caller_number"])[0].id != d["call_record_id"]]
    assert wrong, "the misattribute fault did not strike"
    mismatches = r.daemon.metrics.webhook_mismatches._value.get()
    assert mismatches == len(wrong)


async def test_watchdog_hangs_up_a_call_still_live_at_the_provider(rig: StartRig) -> None:
    """A call that outlives max_call_duration is looked up once more, hung up at the provider
    (the simulator shows it ended) and ends call.timed_out saying so."""
    stuck = "+14155550131"
    r = await rig(
        dialect="documented",
        scripts={stuck: Script(fault="stuck", ring=1)},
        reconcile={**FAST_LOOKUPS, "every": "60s"},
        dialer={"max_call_duration": "1.5s"},
    )
    call_id = await r.queue(stuck)
    call, (attempt,), events = await r.final(call_id, timeout=15)
    (sim_call,) = r.sim_calls(stuck)
    assert call.status == "timed_out" and call.reason == "HUNG_UP", call
    assert sim_call.hung_up and sim_call.terminal and sim_call.status == "completed"
    assert "hung up at the provider" in events[-1].error["message"]
    assert attempt.settled_by == "watchdog"
    assert r.sim.stats()["live"] == 0
    # The provider's call.completed for the hung-up call changes nothing.
    await asyncio.sleep(0.3)
    assert (await r.final(call_id))[0].status == "timed_out"


async def test_watchdog_leaves_the_call_live_when_told_not_to_hang_up(rig: StartRig) -> None:
    stuck = "+14155550132"
    r = await rig(
        dialect="documented",
        scripts={stuck: Script(fault="stuck", ring=1)},
        dialer={"max_call_duration": "1s", "hangup_on_timeout": False},
    )
    call, _, events = await r.final(await r.queue(stuck), timeout=15)
    assert call.status == "timed_out" and call.reason == "STILL_LIVE"
    assert "hangup_on_timeout is off" in events[-1].error["message"]
    (sim_call,) = r.sim_calls(stuck)
    assert not sim_call.hung_up and not sim_call.terminal
    assert await r.store.live_count() == 0  # our slot is free all the same


async def test_ambiguous_placements_are_found_or_redialed_never_rung_twice(
    rig: StartRig,
) -> None:
    """One placement's answer is lost after the call was created: the search finds its record
    (by the correlation key get-call returns) and follows it. Another hangs and is never
    created: the search finds nothing, so it is dialed again, once, and says so."""
    created, never = "+14155550141", "+14155550142"
    r = await rig(
        dialect="deployed",
        magpipe_timeout="0.5s",
        scripts={
            created: Script(fault="drop_answer", outcome=Outcome.BUSY),
            never: Script(fault="hang_placement"),
        },
        faults=Faults(hang_seconds=5.0),
    )
    created_id = await r.queue(created)
    never_id = await r.queue(never)
    deadline = time.monotonic() + 10
    while r.sim.stats()["requests_by_endpoint"].get("initiate-bridged-call", 0) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    # From now on the number answers: its second placement goes through.
    r.sim.config = dataclasses.replace(
        r.sim.config, scripts={**r.sim.config.scripts, never: Script(outcome=Outcome.BUSY)}
    )
    call, (attempt,), events = await r.final(created_id)
    (sim_call,) = r.sim_calls(created)
    assert call.status == "busy"
    assert attempt.provider_call_id == sim_call.id and not attempt.ambiguous
    assert "call.requeued" not in [e.type for e in events]
    call, (attempt,), events = await r.final(never_id)
    assert call.status == "busy"
    assert len(r.sim_calls(never)) == 1  # the hung placement created nothing: rung once
    requeued = [e for e in events if e.type == "call.requeued"]
    assert len(requeued) == 1 and requeued[0].error["code"] == "NOT_PLACED"
    assert attempt.provider_call_id == r.sim_calls(never)[0].id
    assert r.daemon.metrics.redials._value.get() == 1


async def test_a_lost_placement_is_told_apart_from_another_record_of_the_number(
    rig: StartRig,
) -> None:
    """Another record for the same number and caller id exists (placed by something else on
    the account, without our correlation key): the search adopts our record, by its key."""
    number = "+14155550151"
    r = await rig(scripts={number: Script(fault="drop_answer", outcome=Outcome.BUSY)})
    async with httpx.AsyncClient() as http:
        other = await http.post(
            r.sim.url + "/functions/v1/initiate-bridged-call",
            headers={"Authorization": "Bearer sim-token"},
            json={"phone_number": "+14155550152", "caller_id": FROM},
        )
    assert other.status_code == 200
    # Make the other record look like a call to our number (its record is all list-calls sees).
    r.sim.calls[-1].to = number
    call_id = await r.queue(number)
    call, (attempt,), _ = await r.final(call_id, timeout=20)
    ours = [c for c in r.sim_calls(number) if c.metadata.get("orchestrator_attempt")]
    assert len(r.sim_calls(number)) == 2 and len(ours) == 1
    assert attempt.provider_call_id == ours[0].id
    assert call.status == "busy"


async def test_look_ups_stay_within_the_budget_with_hundreds_of_live_calls(
    rig: StartRig,
) -> None:
    """200 calls live at once, each due a look-up every half second: the look-ups the
    simulator counts stay within max_per_minute (and its bucket: a tenth of it at once, then
    the rest spread over the minute), list-calls answering for many calls at a time."""
    r = await rig(
        dialect="documented",
        talk_seconds=(5000.0, 5000.0),  # 10 s each: all live through the test
        outcome_mix={Outcome.COMPLETED: 1.0},
        ring_seconds=(1.0, 1.0),
        reconcile={"after": "0.5s", "every": "0.5s", "max_per_minute": 120},
    )
    numbers = [f"+1415556{i:04d}" for i in range(200)]
    for number in numbers:
        await r.queue(number)
    deadline = time.monotonic() + 10
    while r.sim.stats()["live"] < 200:
        assert time.monotonic() < deadline, r.sim.stats()
        await asyncio.sleep(0.05)
    await asyncio.sleep(6.0)
    lookups = [(e, at) for e, at, _ in r.sim.requests if e != "initiate-bridged-call"]
    assert r.sim.stats()["live"] == 200  # still live: every look-up found a live call
    assert len(lookups) >= 6, lookups
    first, last = lookups[0][1], lookups[-1][1]
    burst, rate = 12, (120 - 12) / 60
    assert len(lookups) <= burst + rate * (last - first) + 1, (len(lookups), last - first)
    assert len(lookups) <= 120
    assert Counter(e for e, _ in lookups)["list-calls"] >= 1
    looked = [a for n in numbers for a in await _attempts(r, n) if a.checks]
    assert len(looked) > len(lookups)  # list-calls told us about many calls per request


async def _attempts(r: Rig, number: str) -> list[Any]:
    calls = await r.store.list_calls(limit=500)
    found = [c for c in calls if c.to_number == number]
    return (await r.store.get_call(found[0].id))[1] if found else []


@pytest.fixture
async def pg_store(postgres_url: str) -> AsyncIterator[str]:
    """A store URL on a fresh PostgreSQL schema, dropped after the daemons stopped."""
    from tests.conftest import drop_schema, new_scratch_schema

    schema = new_scratch_schema(postgres_url)
    sep = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{sep}schema={schema}"
    await drop_schema(postgres_url, schema)


@pytest.mark.postgres
async def test_two_daemons_never_look_up_the_same_call(pg_store: str, rig: StartRig) -> None:
    """Two daemons on one PostgreSQL database share 40 live calls' look-ups: each call is
    looked up once, by one of them (``every`` is long, so once is all a call is due)."""
    lookups = {"after": "1s", "every": "300s", "max_per_minute": 60}
    one = await rig(
        dialect="documented", store=pg_store, reconcile=lookups, faults=Faults(stuck=1.0)
    )
    two = await rig(store=pg_store, reconcile=lookups, sim=one.sim)
    numbers = [f"+1415557{i:04d}" for i in range(40)]
    for n, number in enumerate(numbers):
        await (one if n % 2 else two).queue(number)
    deadline = time.monotonic() + 30
    while True:
        attempts = [a for n in numbers for a in await _attempts(one, n)]
        if len(attempts) == 40 and all(a.checks for a in attempts):
            break
        assert time.monotonic() < deadline, [a.checks for a in attempts]
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    attempts = [a for n in numbers for a in await _attempts(one, n)]
    assert [a.checks for a in attempts] == [1] * 40
    asked = Counter(c for e, _, c in one.sim.requests if e == "get-call")
    assert all(n == 1 for n in asked.values()), asked


async def test_a_campaign_canceled_with_hangup_ends_its_live_calls_at_the_provider(
    rig: StartRig,
) -> None:
    """``POST /v1/campaigns/{id}/cancel {"hangup": true}``: the campaign's live calls are
    looked up once more and hung up at the provider; they end call.canceled, saying so."""
    numbers = [f"+1415558{i:04d}" for i in range(3)]
    r = await rig(dialect="documented", faults=Faults(stuck=1.0))
    async with r.api() as api:
        created = await api.post(
            "/v1/campaigns",
            params={"name": "stuck"},
            content="to\n" + "\n".join(numbers) + "\n",
            headers={"Content-Type": "text/csv"},
        )
        assert created.status_code == 201, created.text
        campaign = created.json()["campaign"]["id"]
        deadline = time.monotonic() + 10
        while sum(c.status == "in-progress" for c in r.sim.calls) < 3:
            assert time.monotonic() < deadline, [c.status for c in r.sim.calls]
            await asyncio.sleep(0.05)
        refused = await api.post(f"/v1/campaigns/{campaign}/pause", json={"hangup": True})
        assert refused.status_code == 400, refused.text
        canceled = await api.post(f"/v1/campaigns/{campaign}/cancel", json={"hangup": True})
        assert canceled.status_code == 200, canceled.text
        listed = (await api.get("/v1/calls", params={"campaign": campaign})).json()["calls"]
    for call in listed:
        final, _, events = await r.final(call["id"])
        assert final.status == "canceled" and final.reason == "CAMPAIGN_CANCELED"
        assert "hung up at the provider" in events[-1].error["message"]
    assert all(c.hung_up and c.terminal for c in r.sim.calls)
    assert await r.store.live_count() == 0


async def test_a_reconciler_out_of_budget_waits_instead_of_spinning(rig: StartRig) -> None:
    """With the budget spent for the next two minutes, the reconciler gives its claims back
    due when the budget allows and waits: a few rounds a second at most, and the daemon stays
    responsive (it used to claim and give back in a tight loop)."""
    r = await rig(
        dialect="documented",
        faults=Faults(stuck=1.0),
        reconcile={"after": "0.2s", "every": "0.2s", "max_per_minute": 1},
    )
    rounds = 0
    claim = r.store.claim_checks

    async def counted(**kwargs: Any) -> Any:
        nonlocal rounds
        rounds += 1
        return await claim(**kwargs)

    r.store.claim_checks = counted  # counts the rounds; the store underneath is the real one
    for n in range(5):
        await r.queue(f"+1415559{n:04d}")
    started = time.monotonic()
    slowest = 0.0
    async with httpx.AsyncClient(base_url=r.daemon.urls["api"]) as http:
        while time.monotonic() - started < 3.0:
            asked = time.monotonic()
            assert (await http.get("/healthz")).status_code == 200
            slowest = max(slowest, time.monotonic() - asked)
            await asyncio.sleep(0.1)
    lookups = [e for e, _, _ in r.sim.requests if e != "initiate-bridged-call"]
    assert len(lookups) == 1, lookups  # the budget's one request, then nothing
    assert rounds <= 10, rounds
    assert slowest < 1.0


async def test_hang_ups_are_tried_again_until_the_provider_answers(rig: StartRig) -> None:
    """Half the record requests fail (500): the last look-up or the hang-up may fail, and is
    tried again, until the call is hung up at the provider; it ends HUNG_UP."""
    numbers = [f"+1415559{n:04d}" for n in range(100, 106)]
    r = await rig(
        dialect="documented",
        faults=Faults(stuck=1.0, records_error=0.5),
        reconcile={**FAST_LOOKUPS, "every": "60s"},
        dialer={"max_call_duration": "1s"},
    )
    ids = [await r.queue(n) for n in numbers]
    for call_id in ids:
        call, _, events = await r.final(call_id, timeout=30)
        assert (call.status, call.reason) == ("timed_out", "HUNG_UP"), events[-1]
    assert all(c.hung_up and c.terminal for c in r.sim.calls)
    failed = r.sim.stats()["rejected"]
    assert failed > 0, "the records_error fault did not strike"
