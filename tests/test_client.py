"""The Magpipe client against the simulator over real loopback HTTP: both success shapes and
every error shape, each mapped to one typed exception with the right retry advice."""

from __future__ import annotations

import io
import json
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from orchestrator import exceptions, log
from orchestrator.exceptions import Retry
from orchestrator.provider import client
from orchestrator.provider.simulator.model import Dialect, Faults, Outcome, RawAnswer, Script

from .conftest import StartSimulator

TO = "+14155551234"
FROM = "+16045551234"
AGENT = "c72ea2b8-1234-5678-9abc-def012345678"
TOKEN = "sim-token-very-secret-1234"


def request(to: str = TO, **kw: object) -> client.CallRequest:
    return client.CallRequest(to=to, from_=kw.pop("from_", FROM), **kw)  # type: ignore[arg-type]


def magpipe(url: str, **kw: object) -> client.MagpipeClient:
    return client.MagpipeClient(token=kw.pop("token", TOKEN), base_url=url, **kw)  # type: ignore[arg-type]


async def test_documented_success_shape(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(token=TOKEN)
    async with magpipe(sim.url) as c:
        placed = await c.place_call(
            request(agent_id=AGENT, metadata={"customer_id": "cust_123", "n": 3}, purpose="remind")
        )
    assert placed.status == "initiated"
    assert not placed.queued
    assert placed.to_number == TO and placed.from_number == FROM and placed.agent_id == AGENT
    assert placed.created_at is not None and placed.created_at.tzinfo is not None
    [record] = sim.calls
    assert record.id == placed.call_id
    assert record.metadata == {"customer_id": "cust_123", "n": 3}
    assert record.purpose == "remind"


async def test_deployed_success_shape(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(token=TOKEN, dialect=Dialect.DEPLOYED)
    async with magpipe(sim.url) as c:
        placed = await c.place_call(request())
    assert placed.call_record_id is not None
    assert placed.call_id == placed.call_record_id
    assert placed.call_sid is not None and placed.call_sid.startswith("CA")
    assert placed.agent_call_sid is not None
    assert placed.status == "queued"
    assert "call_id" not in placed.raw


def test_the_body_carries_both_spellings_unless_told_not_to() -> None:
    both = client.MagpipeClient(token="x").body(request(purpose="p", template_id="t"))
    assert both == {
        "to": TO,
        "from": FROM,
        "phone_number": TO,
        "caller_id": FROM,
        "purpose": "p",
        "template_id": "t",
    }
    seed_only = client.MagpipeClient(token="x", send_aliases=False).body(request())
    assert seed_only == {"to": TO, "from": FROM}


async def test_queued_past_the_concurrent_limit(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(
        token=TOKEN,
        max_concurrent=1,
        time_scale=1.0,
        scripts={TO: Script(outcome=Outcome.COMPLETED, ring=30, duration=60)},
    )
    async with magpipe(sim.url) as c:
        first = await c.place_call(request())
        second = await c.place_call(request(to="+14155550199"))
    assert first.status == "initiated"
    assert second.status == "queued" and second.queued


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_bad_token_is_unauthorized(start_simulator: StartSimulator, dialect: Dialect) -> None:
    sim = await start_simulator(token=TOKEN, dialect=dialect)
    async with magpipe(sim.url, token="wrong-token") as c:
        with pytest.raises(exceptions.Unauthorized) as info:
            await c.place_call(request())
    assert info.value.status == 401
    assert info.value.retry is Retry.POINTLESS
    assert info.value.code == "UNAUTHORIZED"
    assert info.value.provider_code == (
        "UNAUTHORIZED" if dialect is Dialect.DOCUMENTED else "unauthorized"
    )
    assert sim.calls == []


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_insufficient_balance(start_simulator: StartSimulator, dialect: Dialect) -> None:
    sim = await start_simulator(token=TOKEN, dialect=dialect, balance=0.0)
    async with magpipe(sim.url) as c:
        with pytest.raises(exceptions.InsufficientBalance) as info:
            await c.place_call(request())
    assert info.value.status == 402
    assert info.value.provider_code in {"INSUFFICIENT_BALANCE", "insufficient_credits"}


@pytest.mark.parametrize(
    ("dialect", "status"), [(Dialect.DOCUMENTED, 404), (Dialect.DEPLOYED, 422)]
)
async def test_unknown_agent(
    start_simulator: StartSimulator, dialect: Dialect, status: int
) -> None:
    sim = await start_simulator(token=TOKEN, dialect=dialect)
    async with magpipe(sim.url) as c:
        with pytest.raises(exceptions.AgentNotFound) as info:
            await c.place_call(request(agent_id="00000000-0000-0000-0000-000000000000"))
    assert info.value.status == status
    assert info.value.code == "AGENT_NOT_FOUND"


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_number_not_owned(start_simulator: StartSimulator, dialect: Dialect) -> None:
    sim = await start_simulator(token=TOKEN, dialect=dialect)
    async with magpipe(sim.url) as c:
        with pytest.raises(exceptions.NumberNotOwned) as info:
            await c.place_call(request(from_="+16045550000"))
    assert info.value.retry is Retry.POINTLESS


def raw(status: int, body: object, headers: dict[str, str] | None = None) -> Script:
    text = body if isinstance(body, str) else json.dumps(body)
    return Script(answer=RawAnswer(status=status, body=text, headers=headers or {}))


ERROR_SHAPES = [
    # (status, body, headers, exception, retry)
    (
        400,
        {"error": {"code": "INVALID_PHONE_NUMBER", "message": "bad to"}},
        None,
        exceptions.InvalidPhoneNumber,
        Retry.POINTLESS,
    ),
    (
        400,
        {"error": {"code": "invalid_phone_number", "message": "bad to"}},
        None,
        exceptions.InvalidPhoneNumber,
        Retry.POINTLESS,
    ),
    (
        500,
        {"error": {"code": "Insufficient_Credits", "message": "odd status"}},
        None,
        exceptions.InsufficientBalance,
        Retry.POINTLESS,
    ),
    (
        418,
        {"error": {"code": "TEAPOT", "message": "short and stout"}},
        None,
        exceptions.UnexpectedRefusal,
        Retry.POINTLESS,
    ),
    (
        400,
        {"error": "phone_number and caller_id are required"},
        None,
        exceptions.UnexpectedRefusal,
        Retry.POINTLESS,
    ),
    (500, {"error": "Internal error"}, None, exceptions.AmbiguousPlacement, Retry.UNSAFE),
    (
        404,
        "<html><body>Not Found</body></html>",
        None,
        exceptions.UnexpectedRefusal,
        Retry.POINTLESS,
    ),
    (502, "Bad Gateway", None, exceptions.AmbiguousPlacement, Retry.UNSAFE),
    (504, "", None, exceptions.AmbiguousPlacement, Retry.UNSAFE),
    (503, "", {"Retry-After": "7"}, exceptions.ServiceUnavailable, Retry.SAFE),
    (
        429,
        {"error": {"code": "RATE_LIMITED", "message": "slow down"}},
        {"Retry-After": "12"},
        exceptions.RateLimited,
        Retry.SAFE,
    ),
    (
        200,
        {"success": True, "status": "initiated"},
        None,
        exceptions.AmbiguousPlacement,
        Retry.UNSAFE,
    ),
    (200, "not json at all", None, exceptions.AmbiguousPlacement, Retry.UNSAFE),
    (
        200,
        {"success": False, "error": {"code": "AGENT_NOT_FOUND", "message": "gone"}},
        None,
        exceptions.AgentNotFound,
        Retry.POINTLESS,
    ),
]


@pytest.mark.parametrize(("status", "body", "headers", "kind", "retry"), ERROR_SHAPES)
async def test_every_error_shape_maps_to_one_typed_error(
    start_simulator: StartSimulator,
    status: int,
    body: object,
    headers: dict[str, str] | None,
    kind: type[exceptions.MagpipeError],
    retry: Retry,
) -> None:
    sim = await start_simulator(token=TOKEN, scripts={TO: raw(status, body, headers)})
    async with magpipe(sim.url) as c:
        with pytest.raises(exceptions.MagpipeError) as info:
            await c.place_call(request())
    assert type(info.value) is kind
    assert info.value.retry is retry
    assert info.value.status == status
    assert isinstance(info.value, exceptions.OrchestratorError)
    if headers and "Retry-After" in headers:
        assert info.value.retry_after == float(headers["Retry-After"])
    if (
        isinstance(body, dict)
        and isinstance(body.get("error"), dict)
        and kind is exceptions.UnexpectedRefusal
    ):
        assert "TEAPOT" in str(info.value)


async def test_retry_after_as_an_http_date(start_simulator: StartSimulator) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    sim = await start_simulator(token=TOKEN, scripts={TO: raw(429, "", {"Retry-After": when})})
    async with magpipe(sim.url) as c:
        with pytest.raises(exceptions.RateLimited) as info:
            await c.place_call(request())
    assert info.value.retry_after is not None and 25 <= info.value.retry_after <= 31


async def test_simulated_rate_limit_and_503_are_safe(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(token=TOKEN, faults=Faults(rate_limit=1.0, retry_after=3))
    async with magpipe(sim.url) as c:
        with pytest.raises(exceptions.RateLimited) as info:
            await c.place_call(request())
    assert info.value.retry_after == 3.0
    sim2 = await start_simulator(token=TOKEN, faults=Faults(server_error=1.0))
    async with magpipe(sim2.url) as c:
        with pytest.raises(exceptions.ServiceUnavailable):
            await c.place_call(request())
    assert sim.calls == [] and sim2.calls == []


async def test_a_timeout_after_sending_is_ambiguous_and_the_call_was_placed(
    start_simulator: StartSimulator,
) -> None:
    sim = await start_simulator(token=TOKEN, faults=Faults(slow=1.0, slow_seconds=2.0))
    async with magpipe(sim.url, timeout=0.3) as c:
        with pytest.raises(exceptions.AmbiguousPlacement) as info:
            await c.place_call(request())
    assert info.value.retry is Retry.UNSAFE
    assert "may have been placed" in str(info.value)
    assert len(sim.calls) == 1


async def test_a_dropped_answer_is_ambiguous_and_the_call_was_placed(
    start_simulator: StartSimulator,
) -> None:
    sim = await start_simulator(token=TOKEN, scripts={TO: Script(fault="drop_answer")})
    async with magpipe(sim.url) as c:
        with pytest.raises(exceptions.AmbiguousPlacement):
            await c.place_call(request())
    assert [r.to for r in sim.calls] == [TO]


async def test_a_refused_connection_is_safe_to_retry() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with magpipe(f"http://127.0.0.1:{port}") as c:
        with pytest.raises(exceptions.ConnectFailed) as info:
            await c.place_call(request())
    assert info.value.retry is Retry.SAFE


@pytest.mark.parametrize(
    "bad",
    [
        {"to": "4155551234"},
        {"to": "+1 415 555 1234"},
        {"to": "+15555555555"},
        {"to": "+1415555123"},
        {"from_": "+1604"},
        {"metadata": {"nested": {"a": 1}}},
    ],
)
async def test_invalid_input_sends_nothing(
    start_simulator: StartSimulator, bad: dict[str, object]
) -> None:
    sim = await start_simulator(token=TOKEN)
    async with magpipe(sim.url) as c:
        with pytest.raises(exceptions.InputError):
            await c.place_call(request(**bad))  # type: ignore[arg-type]
    assert sim.stats()["requests"] == 0
    assert sim.calls == []


async def test_the_token_never_reaches_logs_reprs_or_errors(
    start_simulator: StartSimulator,
) -> None:
    stream = io.StringIO()
    log.configure(level="debug", json=True, stream=stream)
    echo = {"error": {"code": "UNAUTHORIZED", "message": f"token {TOKEN} is expired"}}
    sim = await start_simulator(
        token=TOKEN,
        scripts={"+14155550100": raw(401, echo), "+14155550101": raw(500, f"boom {TOKEN}")},
    )
    errors: list[BaseException] = []
    async with magpipe(sim.url) as c:
        assert TOKEN not in repr(c)
        await c.place_call(request())
        for to in ("+14155550100", "+14155550101"):
            with pytest.raises(exceptions.MagpipeError) as info:
                await c.place_call(request(to=to))
            errors.append(info.value)
    async with magpipe(sim.url, token="wrong-token-abcdef") as c:
        with pytest.raises(exceptions.Unauthorized) as info2:
            await c.place_call(request())
        errors.append(info2.value)
    output = stream.getvalue()
    assert "magpipe.place_call" in output  # the logs were captured at all
    assert TOKEN not in output and "wrong-token-abcdef" not in output
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            assert TOKEN not in str(chain) and TOKEN not in repr(chain)
            chain = chain.__cause__
    assert "**********" in str(errors[0])
