"""Tests for the Magpipe simulator, over real loopback HTTP with a real webhook receiver."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from aiohttp import web

from orchestrator.provider.simulator import (
    PLACE_CALL_PATH,
    Dialect,
    Faults,
    Outcome,
    RawAnswer,
    Script,
    Simulator,
    SimulatorConfig,
)
from orchestrator.provider.simulator.cli import add_arguments, config_from_args

TOKEN = "test-token"
FROM = "+16045551234"
AGENT = "c72ea2b8-1234-5678-9abc-def012345678"
TO = "+14155551234"
SECRET = "whsec_test"
FAST = 0.001
ANSWERED_ORDER = ["initiated", "ringing", "in-progress", "completed"]


@dataclass
class Hit:
    """One webhook the receiver got."""

    raw: bytes
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    """A tiny real aiohttp server recording every webhook POSTed to it."""

    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    on_hit: Callable[[Hit], None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        hit = Hit(
            raw=await request.read(),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.json(),
        )
        self.hits.append(hit)
        if self.on_hit is not None:
            self.on_hit(hit)
        self._changed.set()
        return web.Response(text="ok")

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Hit]:
        async with asyncio.timeout(timeout):
            while len(self.hits) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.hits

    def statuses(self, call_id: str | None = None) -> list[str]:
        return [
            h.body["status"] for h in self.hits if call_id is None or h.body["call_id"] == call_id
        ]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as c:
        yield c


def config(**overrides: Any) -> SimulatorConfig:
    values: dict[str, Any] = {
        "token": TOKEN,
        "time_scale": FAST,
        "seed": 1,
        "webhook_secret": SECRET,
    }
    values.update(overrides)
    return SimulatorConfig(**values)


async def place(
    client: httpx.AsyncClient, sim: Simulator, token: str = TOKEN, **body: Any
) -> httpx.Response:
    payload: dict[str, Any] = {"to": TO, "from": FROM, "agent_id": AGENT}
    payload.update(body)
    payload = {k: v for k, v in payload.items() if v is not None}
    return await client.post(
        sim.url + PLACE_CALL_PATH, json=payload, headers={"Authorization": f"Bearer {token}"}
    )


def is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def verify(hit: Hit, secret: str = SECRET) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), hit.raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(hit.headers.get("x-magpipe-signature", ""), expected)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- authentication and errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "code"), [(Dialect.DOCUMENTED, "UNAUTHORIZED"), (Dialect.DEPLOYED, "unauthorized")]
)
async def test_auth_failure(client: httpx.AsyncClient, dialect: Dialect, code: str) -> None:
    async with Simulator(config(dialect=dialect)) as sim:
        wrong = await place(client, sim, token="nope")
        missing = await client.post(sim.url + PLACE_CALL_PATH, json={"to": TO, "from": FROM})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == code
        assert missing.status_code == 401
        assert sim.stats()["placed"] == 0
        assert sim.stats()["rejected"] == 2
        assert sim.stats()["requests"] == 2


@pytest.mark.parametrize(
    ("body", "balance", "status", "code"),
    [
        ({"to": "4155551234"}, 100.0, 400, "INVALID_PHONE_NUMBER"),
        ({"to": "+1415555123"}, 100.0, 400, "INVALID_PHONE_NUMBER"),
        ({"to": "+10005551234"}, 100.0, 400, "INVALID_PHONE_NUMBER"),
        ({"to": None}, 100.0, 400, "INVALID_PHONE_NUMBER"),
        ({"from": "+16045550000"}, 100.0, 403, "NUMBER_NOT_OWNED"),
        ({"agent_id": str(uuid.uuid4())}, 100.0, 404, "AGENT_NOT_FOUND"),
        ({}, 0.0, 402, "INSUFFICIENT_BALANCE"),
    ],
)
async def test_documented_errors(
    client: httpx.AsyncClient, body: dict[str, Any], balance: float, status: int, code: str
) -> None:
    async with Simulator(config(balance=balance)) as sim:
        response = await place(client, sim, **body)
        assert response.status_code == status
        error = response.json()["error"]
        assert error["code"] == code
        assert isinstance(error["message"], str)
        assert error["message"]
        assert sim.calls == []
        assert sim.stats()["rejected"] == 1


async def test_non_json_body_is_rejected(client: httpx.AsyncClient) -> None:
    async with Simulator(config()) as sim:
        response = await client.post(
            sim.url + PLACE_CALL_PATH,
            content=b"not json",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "INVALID_REQUEST"
        assert sim.calls == []


@pytest.mark.parametrize(
    ("body", "balance", "status", "expected"),
    [
        ({"to": None}, 100.0, 400, "phone_number and caller_id are required"),
        ({"from": None}, 100.0, 400, "phone_number and caller_id are required"),
        ({"to": "+1415555123"}, 100.0, 400, str),
        ({"from": "+16045550000"}, 100.0, 422, "NUMBER_NOT_OWNED"),
        ({"agent_id": str(uuid.uuid4())}, 100.0, 422, "no_agent_assigned"),
        ({}, 0.0, 402, "insufficient_credits"),
    ],
)
async def test_deployed_errors(
    client: httpx.AsyncClient, body: dict[str, Any], balance: float, status: int, expected: Any
) -> None:
    async with Simulator(config(dialect=Dialect.DEPLOYED, balance=balance)) as sim:
        response = await place(client, sim, **body)
        assert response.status_code == status
        error = response.json()["error"]
        if expected is str:
            # A plain string body, not {code, message}.
            assert isinstance(error, str)
            assert error
        elif status == 400:
            assert error == expected
        else:
            assert error["code"] == expected
        assert sim.calls == []


async def test_scripted_raw_answer_is_sent_verbatim(client: httpx.AsyncClient) -> None:
    script = Script(answer=RawAnswer(status=500, body="boom", headers={"X-Test": "1"}))
    async with Simulator(config(scripts={TO: script})) as sim:
        response = await place(client, sim)
        assert response.status_code == 500
        assert response.text == "boom"
        assert response.headers["x-test"] == "1"
        assert sim.stats()["placed"] == 0
        assert sim.stats()["rejected"] == 1


# -- success shapes --------------------------------------------------------------------------


async def test_documented_success_shape(client: httpx.AsyncClient) -> None:
    async with Simulator(config()) as sim:
        response = await place(client, sim, metadata={"k": "v"})
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {
            "success",
            "call_id",
            "status",
            "from_number",
            "to_number",
            "agent_id",
            "created_at",
        }
        assert body["success"] is True
        assert is_uuid(body["call_id"])
        assert body["status"] == "initiated"
        assert (body["from_number"], body["to_number"], body["agent_id"]) == (FROM, TO, AGENT)
        assert body["created_at"].endswith("Z")
        datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
        assert [c.id for c in sim.calls] == [body["call_id"]]


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_either_spelling_of_the_numbers_is_accepted(
    client: httpx.AsyncClient, dialect: Dialect
) -> None:
    renamed: dict[str, Any] = {"to": None, "from": None, "phone_number": TO, "caller_id": FROM}
    async with Simulator(config(dialect=dialect)) as sim:
        response = await place(client, sim, **renamed)
        assert response.status_code == 200
        both = await place(client, sim, phone_number=TO, caller_id=FROM)
        assert both.status_code == 200
        assert [(c.to, c.from_) for c in sim.calls] == [(TO, FROM), (TO, FROM)]


async def test_deployed_success_shape_and_ignored_webhook_url(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    cfg = config(dialect=Dialect.DEPLOYED, webhook_url=receiver.url, scripts={TO: Script()})
    async with Simulator(cfg) as sim:
        response = await place(client, sim, webhook_url="http://127.0.0.1:1/never")
        assert response.status_code == 200
        body = response.json()
        assert "call_id" not in body
        assert body["success"] is True
        assert body["status"] == "queued"
        assert re.fullmatch(r"CA[0-9a-f]{32}", body["call_sid"])
        assert re.fullmatch(r"CA[0-9a-f]{32}", body["agent_call_sid"])
        assert is_uuid(body["call_record_id"])
        assert isinstance(body["message"], str)
        await sim.wait_idle(5)
        # The body's webhook_url is ignored: the account URL got the webhook.
        assert len(receiver.hits) == 1
        assert receiver.hits[0].body["data"]["call_record_id"] == body["call_record_id"]


# -- concurrency -----------------------------------------------------------------------------


async def test_queued_past_max_concurrent(client: httpx.AsyncClient, receiver: Receiver) -> None:
    cfg = config(
        max_concurrent=2,
        time_scale=0.005,
        webhook_url=receiver.url,
        scripts={TO: Script(duration=60, ring=5)},
    )
    async with Simulator(cfg) as sim:
        answers = [(await place(client, sim)).json() for _ in range(5)]
        assert [a["status"] for a in answers] == [
            "initiated",
            "initiated",
            "queued",
            "queued",
            "queued",
        ]
        assert sim.stats()["live"] == 2
        await sim.wait_idle(10)
        stats = sim.stats()
        assert stats["max_live_seen"] == 2
        assert stats["live"] == 0
        assert stats["placed"] == 5
        assert [c.status for c in sim.calls] == ["completed"] * 5
        # Queued calls start in the order they were placed.
        first_initiated = [
            next(i for i, h in enumerate(receiver.hits) if h.body["call_id"] == a["call_id"])
            for a in answers
        ]
        assert first_initiated == sorted(first_initiated)


# -- lifecycle -------------------------------------------------------------------------------


async def test_full_lifecycle_echoes_metadata(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    metadata = {"customer_id": "cust_123", "n": 7, "vip": True}
    cfg = config(webhook_url="http://127.0.0.1:1/account", scripts={TO: Script(duration=125.4)})
    async with Simulator(cfg) as sim:
        response = await place(
            client, sim, metadata=metadata, webhook_url=receiver.url, purpose="renewal", goal="book"
        )
        call_id = response.json()["call_id"]
        await sim.wait_idle(5)
        assert receiver.statuses() == ANSWERED_ORDER
        for hit in receiver.hits:
            assert hit.body["event"] == "call.status_changed"
            assert hit.body["call_id"] == call_id
            assert hit.body["metadata"] == metadata
            assert hit.body["timestamp"].endswith("Z")
            assert verify(hit)
        assert "duration" not in receiver.hits[0].body
        final = receiver.hits[-1].body
        assert final["duration"] == 125
        assert final["recording_url"].startswith("https://")
        assert "renewal" in final["transcript"]
        calls = (await client.get(sim.url + "/_simulator/calls")).json()
        assert len(calls) == 1
        record = calls[0]
        assert record["id"] == call_id
        assert (record["to"], record["from"], record["agent_id"]) == (TO, FROM, AGENT)
        assert (record["purpose"], record["goal"]) == ("renewal", "book")
        assert record["metadata"] == metadata
        assert record["status"] == record["outcome"] == "completed"
        assert record["duration"] == 125
        assert record["ended_at"] is not None
        assert [w["http_status"] for w in record["webhooks"]] == [200] * 4


@pytest.mark.parametrize(
    "outcome", [Outcome.BUSY, Outcome.NO_ANSWER, Outcome.FAILED, Outcome.CANCELED]
)
async def test_unanswered_outcomes(
    client: httpx.AsyncClient, receiver: Receiver, outcome: Outcome
) -> None:
    cfg = config(webhook_url=receiver.url, scripts={TO: Script(outcome=outcome)})
    async with Simulator(cfg) as sim:
        await place(client, sim)
        await sim.wait_idle(5)
        assert receiver.statuses() == ["initiated", "ringing", outcome.value]
        final = receiver.hits[-1].body
        assert final["duration"] == 0
        assert final["recording_url"] is None
        assert final["transcript"] is None
        assert sim.calls[0].status == outcome.value
        assert sim.stats()["balance"] == 100.0


async def test_seeded_runs_are_reproducible(client: httpx.AsyncClient) -> None:
    async def outcomes(seed: int) -> list[str]:
        async with Simulator(config(seed=seed, time_scale=0.0002)) as sim:
            numbers = [f"+1415555{1000 + i}" for i in range(30)]
            for number in numbers:
                assert (await place(client, sim, to=number)).status_code == 200
            await sim.wait_idle(10)
            return [c.status for c in sim.calls]

    first, second, other = await outcomes(42), await outcomes(42), await outcomes(7)
    assert first == second
    assert first != other
    assert len(set(first)) > 1


async def test_deployed_sends_one_signed_completed_and_nothing_for_busy(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    busy = "+14155550100"
    cfg = config(
        dialect=Dialect.DEPLOYED,
        webhook_url=receiver.url,
        scripts={TO: Script(duration=90), busy: Script(outcome=Outcome.BUSY)},
    )
    async with Simulator(cfg) as sim:
        answered = (await place(client, sim, metadata={"a": "b"})).json()
        await place(client, sim, to=busy)
        await sim.wait_idle(5)
        assert len(receiver.hits) == 1
        hit = receiver.hits[0]
        assert verify(hit)
        assert not verify(hit, "whsec_other")
        assert hit.body["event"] == "call.completed"
        data = hit.body["data"]
        assert data["call_record_id"] == answered["call_record_id"]
        assert data["direction"] == "outbound"
        assert (data["caller_number"], data["service_number"]) == (TO, FROM)
        assert data["duration_seconds"] == 90
        assert data["status"] == "completed"
        assert data["extracted_data"] == {}
        assert sim.calls[1].status == "busy"


# -- faults ----------------------------------------------------------------------------------


async def test_rate_limit_fault(client: httpx.AsyncClient) -> None:
    async with Simulator(config(faults=Faults(rate_limit=1.0, retry_after=7))) as sim:
        response = await place(client, sim)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert sim.stats()["placed"] == 0
        assert sim.stats()["rejected"] == 1


async def test_server_error_fault(client: httpx.AsyncClient) -> None:
    async with Simulator(config(faults=Faults(server_error=1.0))) as sim:
        response = await place(client, sim)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert sim.calls == []


async def test_slow_fault_places_the_call(client: httpx.AsyncClient) -> None:
    async with Simulator(config(faults=Faults(slow=1.0, slow_seconds=0.3))) as sim:
        started = time.monotonic()
        response = await place(client, sim)
        assert time.monotonic() - started >= 0.3
        assert response.status_code == 200
        assert len(sim.calls) == 1


async def test_drop_answer_places_the_call(client: httpx.AsyncClient, receiver: Receiver) -> None:
    cfg = config(webhook_url=receiver.url, scripts={TO: Script(fault="drop_answer")})
    async with Simulator(cfg) as sim:
        with pytest.raises(httpx.RemoteProtocolError):
            await place(client, sim, metadata={"corr": "x1"})
        calls = (await client.get(sim.url + "/_simulator/calls")).json()
        assert len(calls) == 1
        assert calls[0]["metadata"] == {"corr": "x1"}
        await sim.wait_idle(5)
        assert receiver.statuses() == ANSWERED_ORDER
        assert receiver.hits[0].body["metadata"] == {"corr": "x1"}
        # The simulator still serves afterwards.
        assert (await place(client, sim, to="+14155550100")).status_code == 200


async def test_early_webhook_arrives_before_the_answer(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    answered = False
    seen_before_answer: list[tuple[str, bool]] = []
    receiver.on_hit = lambda hit: seen_before_answer.append((hit.body["status"], answered))
    cfg = config(webhook_url=receiver.url, scripts={TO: Script(fault="early_webhook")})
    async with Simulator(cfg) as sim:
        response = await place(client, sim)
        answered = True
        assert seen_before_answer == [("initiated", False)]
        assert receiver.hits[0].body["call_id"] == response.json()["call_id"]
        await sim.wait_idle(5)
        assert receiver.statuses() == ANSWERED_ORDER


async def test_duplicate_webhooks(client: httpx.AsyncClient, receiver: Receiver) -> None:
    cfg = config(webhook_url=receiver.url, faults=Faults(duplicate_webhooks=1.0))
    async with Simulator(cfg) as sim:
        await place(client, sim)
        await sim.wait_idle(5)
        statuses = receiver.statuses()
        assert len(statuses) % 2 == 0
        assert statuses[::2] == statuses[1::2]
        assert len(sim.calls[0].webhooks) == len(statuses)


async def test_out_of_order_webhooks(client: httpx.AsyncClient, receiver: Receiver) -> None:
    cfg = config(webhook_url=receiver.url, scripts={TO: Script(fault="out_of_order")})
    async with Simulator(cfg) as sim:
        await place(client, sim)
        await sim.wait_idle(5)
        statuses = receiver.statuses()
        assert sorted(statuses) == sorted(ANSWERED_ORDER)
        assert statuses != ANSWERED_ORDER


async def test_lost_webhooks(client: httpx.AsyncClient, receiver: Receiver) -> None:
    lossy = "+14155550100"
    cfg = config(webhook_url=receiver.url, scripts={lossy: Script(fault="lose_webhooks")})
    async with Simulator(cfg) as sim:
        lost_id = (await place(client, sim, to=lossy)).json()["call_id"]
        await sim.wait_idle(5)
        assert receiver.hits == []
        assert sim.calls[0].status == "completed"
        assert [w.lost for w in sim.calls[0].webhooks] == [True] * 4
        calls = (await client.get(sim.url + "/_simulator/calls")).json()
        assert calls[0]["id"] == lost_id
        assert calls[0]["webhooks"][-1]["lost"] is True


async def test_lose_some_webhooks_by_probability(
    client: httpx.AsyncClient, receiver: Receiver
) -> None:
    cfg = config(seed=3, webhook_url=receiver.url, faults=Faults(lose_webhooks=0.5))
    async with Simulator(cfg) as sim:
        for i in range(10):
            await place(client, sim, to=f"+1415555{2000 + i}")
        await sim.wait_idle(10)
        records = [w for c in sim.calls for w in c.webhooks]
        lost = sum(w.lost for w in records)
        assert 0 < lost < len(records)
        assert len(receiver.hits) == len(records) - lost


# -- billing ---------------------------------------------------------------------------------


async def test_balance_is_charged_then_runs_out(client: httpx.AsyncClient) -> None:
    # 600 s at 0.10 per minute costs exactly 1.00.
    cfg = config(
        balance=1.0, price_per_minute=0.10, time_scale=0.0002, scripts={TO: Script(duration=600)}
    )
    async with Simulator(cfg) as sim:
        assert (await place(client, sim)).status_code == 200
        await sim.wait_idle(5)
        stats = (await client.get(sim.url + "/_simulator/stats")).json()
        assert stats["balance"] == pytest.approx(0.0)
        refused = await place(client, sim)
        assert refused.status_code == 402
        assert refused.json()["error"]["code"] == "INSUFFICIENT_BALANCE"
        topped = await client.post(sim.url + "/_simulator/account", json={"balance": 5})
        assert topped.json() == {"balance": 5.0}
        assert (await place(client, sim)).status_code == 200
        await sim.wait_idle(5)
        stats = (await client.get(sim.url + "/_simulator/stats")).json()
        assert stats == {
            "placed": 2,
            "live": 0,
            "max_live_seen": 1,
            "requests": 3,
            "requests_by_endpoint": {"initiate-bridged-call": 3},
            "rejected": 1,
            "rate_limited": 0,  # no budget enforced unless asked
            "busiest_minute": None,
            "balance": pytest.approx(4.0),
        }


async def test_account_route_rejects_bad_balance(client: httpx.AsyncClient) -> None:
    async with Simulator(config()) as sim:
        response = await client.post(sim.url + "/_simulator/account", json={"balance": "lots"})
        assert response.status_code == 400
        assert sim.balance == 100.0


# -- robustness ------------------------------------------------------------------------------


async def test_unreachable_receiver_does_not_break_the_simulator(
    client: httpx.AsyncClient,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    async with Simulator(config(webhook_url=dead)) as sim:
        for i in range(3):
            assert (await place(client, sim, to=f"+1415555{3000 + i}")).status_code == 200
        await sim.wait_idle(10)
        assert all(c.terminal for c in sim.calls)
        errors = [w.error for c in sim.calls for w in c.webhooks]
        assert errors
        assert all(e is not None for e in errors)
        assert (await client.get(sim.url + "/_simulator/stats")).json()["live"] == 0


async def test_stop_cancels_running_lifecycles(client: httpx.AsyncClient) -> None:
    sim = Simulator(config(time_scale=1.0))
    await sim.start()
    await place(client, sim)
    with pytest.raises(TimeoutError):
        await sim.wait_idle(0.05)
    await sim.stop()
    await sim.wait_idle(1)
    assert sim.calls[0].status in {"initiated", "ringing"}


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="probability"):
        Faults(rate_limit=1.5)
    with pytest.raises(ValueError, match="unknown fault"):
        Script(fault="explode")
    with pytest.raises(ValueError, match="max_concurrent"):
        SimulatorConfig(max_concurrent=0)


# -- CLI helpers -----------------------------------------------------------------------------


def test_cli_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGPIPE_TOKEN", "env-token")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(
        [
            "--seed",
            "5",
            "--dialect",
            "deployed",
            "--number",
            "+16045550001",
            "--number",
            "+16045550002",
            "--fault",
            "rate_limit=0.1",
            "--fault",
            "retry_after=3",
            "--time-scale",
            "0.5",
        ]
    )
    assert (ns.host, ns.port) == ("127.0.0.1", 8700)
    cfg = config_from_args(ns)
    assert cfg.token == "env-token"
    assert cfg.seed == 5
    assert cfg.dialect is Dialect.DEPLOYED
    assert cfg.numbers == ("+16045550001", "+16045550002")
    assert cfg.agents == SimulatorConfig().agents
    assert cfg.faults == Faults(rate_limit=0.1, retry_after=3)
    assert cfg.time_scale == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["--fault", "explode=0.5"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--fault", "rate_limit=2"])


async def test_inspection_json_is_serialisable(client: httpx.AsyncClient) -> None:
    async with Simulator(config()) as sim:
        await place(client, sim)
        calls = (await client.get(sim.url + "/_simulator/calls")).json()
        assert json.loads(json.dumps(calls)) == calls
        assert calls[0]["status"] in {"initiated", "ringing", "in-progress", "completed"}
        assert calls[0]["webhooks"] == []
