"""The client's look-ups and hang-ups (get-call, list-calls, terminate-call) against the simulator
over loopback HTTP, and every answer shape mapped to a typed result or error: the status
spellings of the provider's records, its metadata quirk, paging by time window, and the
placement's certain-failure 500s."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from orchestrator import exceptions
from orchestrator.exceptions import Retry
from orchestrator.model import CallStatus
from orchestrator.provider import client
from orchestrator.provider.simulator.model import Dialect, Outcome, Script

from .conftest import StartSimulator

TO = "+14155551234"
FROM = "+16045551234"
TOKEN = "sim-token"


def magpipe(url: str, **kw: object) -> client.MagpipeClient:
    return client.MagpipeClient(token=TOKEN, base_url=url, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spelling", "ours"),
    [
        ("in-progress", CallStatus.INITIATED),  # written with the record: nobody answered yet
        ("queued", CallStatus.INITIATED),
        ("initiated", CallStatus.INITIATED),
        ("ringing", CallStatus.RINGING),
        ("in_progress", CallStatus.IN_PROGRESS),  # underscore: answered
        ("completed", CallStatus.COMPLETED),
        ("busy", CallStatus.BUSY),
        ("no_answer", CallStatus.NO_ANSWER),
        ("no-answer", CallStatus.NO_ANSWER),
        ("failed", CallStatus.FAILED),
        ("canceled", CallStatus.CANCELED),
        ("Busy ", CallStatus.BUSY),
        ("timed_out", None),  # ours, never the provider's
        ("rejected", None),
        ("bogus", None),
    ],
)
def test_record_status_spellings(spelling: str, ours: CallStatus | None) -> None:
    assert CallStatus.from_record(spelling) is ours


async def test_get_call_reads_the_record_as_it_moves(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(
        dialect=Dialect.DEPLOYED, scripts={TO: Script(duration=30, ring=100)}, time_scale=0.01
    )
    metadata = {"orchestrator_attempt": "a-1", "_private": "dropped", "tier": "gold"}
    async with magpipe(sim.url) as c:
        placed = await c.place_call(client.CallRequest(to=TO, from_=FROM, metadata=metadata))
        first = await c.get_call(placed.call_id)
        assert first.id == placed.call_id and first.to_number == TO and first.from_number == FROM
        # Ringing lasts a scaled second, so the first look-up comes before the answer (the
        # dial itself takes only milliseconds at this scale: it may already be ringing).
        assert first.status in ("in-progress", "initiated", "ringing")
        assert first.state in (CallStatus.INITIATED, CallStatus.RINGING)
        assert not first.terminal and not first.answered
        # get-call drops metadata keys starting with "_": the correlation key must not.
        assert first.metadata == {"orchestrator_attempt": "a-1", "tier": "gold"}
        assert first.created_at is not None and first.created_at.tzinfo is not None
        await sim.wait_idle(5)
        done = await c.get_call(placed.call_id)
    assert done.state is CallStatus.COMPLETED and done.terminal and done.answered
    assert done.duration == 30
    assert done.transcript and done.recording_url


async def test_get_call_of_an_unanswered_documented_call(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(scripts={TO: Script(outcome=Outcome.NO_ANSWER)})
    async with magpipe(sim.url) as c:
        placed = await c.place_call(client.CallRequest(to=TO, from_=FROM))
        await sim.wait_idle(5)
        record = await c.get_call(placed.call_id)
    assert (record.status, record.state, record.answered) == (
        "no_answer",
        CallStatus.NO_ANSWER,
        False,
    )
    assert record.transcript is None and record.duration == 0


async def test_get_call_errors(start_simulator: StartSimulator) -> None:
    sim = await start_simulator()
    async with magpipe(sim.url) as c:
        with pytest.raises(exceptions.CallNotFound) as missing:
            await c.get_call("not-a-uuid")
    assert missing.value.status == 404 and missing.value.provider_code == "not_found"
    assert missing.value.retry is Retry.POINTLESS
    async with client.MagpipeClient(token="wrong", base_url=sim.url) as c:
        with pytest.raises(exceptions.Unauthorized):
            await c.get_call("x")


async def test_list_calls_pages_newest_first_and_by_time_window(
    start_simulator: StartSimulator,
) -> None:
    sim = await start_simulator(max_concurrent=500, time_scale=100.0)
    numbers = [f"+1415555{i:04d}" for i in range(130)]
    async with magpipe(sim.url) as c:
        placed = [await c.place_call(client.CallRequest(to=n, from_=FROM)) for n in numbers]
        page = await c.list_calls(limit=500)
        assert len(page.calls) == 100 and page.has_more and page.total == 130
        created = [r.created_at for r in page.calls]
        assert created == sorted(created, reverse=True)  # type: ignore[type-var]
        assert all(r.metadata is None for r in page.calls)  # list-calls sends no metadata
        start = datetime.now(UTC) - timedelta(minutes=1)
        end = datetime.now(UTC) + timedelta(seconds=1)
        seen: list[str] = []
        async for window in c.list_window(start, end):
            seen += [r.id for r in window.calls]
            # Calls placed while paging are after the window: they shift nothing.
            await c.place_call(client.CallRequest(to="+14155559999", from_=FROM))
        assert sorted(seen) == sorted(p.call_id for p in placed)
        mine = [
            r async for w in c.list_window(start, end, phone_number=numbers[7]) for r in w.calls
        ]
    assert [r.id for r in mine] == [placed[7].call_id]


async def test_terminate_call_ends_a_live_call_once(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(scripts={TO: Script(fault="stuck", ring=1)})
    async with magpipe(sim.url) as c:
        placed = await c.place_call(client.CallRequest(to=TO, from_=FROM))
        for _ in range(200):
            if sim.calls[0].status == "in-progress":
                break
            await asyncio.sleep(0.01)
        assert await c.terminate_call(placed.call_id) is True
        await sim.wait_idle(5)
        assert sim.calls[0].hung_up and sim.calls[0].status == "completed"
        assert await c.terminate_call(placed.call_id) is False  # nothing live: call_not_found


async def test_terminate_the_agent_leg_of_an_unanswered_deployed_call(
    start_simulator: StartSimulator,
) -> None:
    """The agent's leg of an unanswered call stays up (and would later send a misleading
    call.completed) until it is hung up by its own id."""
    sim = await start_simulator(
        dialect=Dialect.DEPLOYED, scripts={TO: Script(outcome=Outcome.BUSY)}, conference_limit=3000
    )
    async with magpipe(sim.url) as c:
        placed = await c.place_call(client.CallRequest(to=TO, from_=FROM))
        await sim.wait_idle(5)
        assert sim.calls[0].agent_leg_live and sim.calls[0].record_status == "busy"
        assert await c.terminate_call(placed.call_id) is False  # the phone leg is over
        assert placed.agent_call_sid is not None
        assert await c.terminate_call(placed.agent_call_sid) is True
        await asyncio.sleep(3.5)  # past the conference limit (3 s scaled)
        record = await c.get_call(placed.call_id)
    assert not sim.calls[0].agent_leg_live and not sim.calls[0].overwritten
    assert record.status == "busy" and sim.calls[0].webhooks == []


async def test_the_late_misleading_completed_of_an_unanswered_call(
    start_simulator: StartSimulator,
) -> None:
    sim = await start_simulator(
        dialect=Dialect.DEPLOYED,
        scripts={TO: Script(outcome=Outcome.NO_ANSWER)},
        conference_limit=500,
    )
    async with magpipe(sim.url) as c:
        placed = await c.place_call(client.CallRequest(to=TO, from_=FROM))
        await sim.wait_idle(5)
        assert (await c.get_call(placed.call_id)).state is CallStatus.NO_ANSWER
        await asyncio.sleep(1.0)  # the conference limit, 0.5 s scaled
        overwritten = await c.get_call(placed.call_id)
    assert overwritten.state is CallStatus.COMPLETED and overwritten.duration == 500
    assert sim.calls[0].overwritten


@pytest.mark.parametrize(
    "message",
    [
        "Failed to create call record",
        "Failed to configure call agent",
        "Failed to start agent SIP leg",
        "failed to start PSTN leg",
    ],
)
def test_certain_failure_500s_are_safe_to_retry(message: str) -> None:
    body = json.dumps({"error": message, "details": "carrier"}).encode()
    with pytest.raises(exceptions.PlacementFailed) as caught:
        client.parse_answer(500, {}, body)
    assert caught.value.retry is Retry.SAFE and caught.value.status == 500
    assert message in caught.value.message


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": "Failed to update something else"}',
        b'{"error": {"code": "server_error", "message": "Failed to start PSTN leg"}}',
        b"<html>500</html>",
    ],
)
def test_other_500s_stay_ambiguous(body: bytes) -> None:
    with pytest.raises(exceptions.AmbiguousPlacement):
        client.parse_answer(500, {}, body)


async def test_the_simulator_sends_certain_failures(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(
        dialect=Dialect.DEPLOYED, scripts={TO: Script(fault="carrier_error")}
    )
    async with magpipe(sim.url) as c:
        with pytest.raises(exceptions.PlacementFailed):
            await c.place_call(client.CallRequest(to=TO, from_=FROM))
    assert all(not call.rang for call in sim.calls)


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "code"),
    [
        (
            404,
            b'{"error": {"code": "not_found", "message": "Call not found"}}',
            {},
            exceptions.CallNotFound,
            "not_found",
        ),
        (
            404,
            b'{"success": false, "error": "call_not_found", "message": "No active call"}',
            {},
            exceptions.CallNotFound,
            "call_not_found",
        ),
        (200, b'{"error": {"code": "NOT_FOUND"}}', {}, exceptions.CallNotFound, "NOT_FOUND"),
        (401, b'{"error": {"code": "unauthorized"}}', {}, exceptions.Unauthorized, "unauthorized"),
        (429, b"{}", {"retry-after": "7"}, exceptions.RateLimited, None),
        (
            500,
            b'{"error": {"code": "server_error", "message": "x"}}',
            {},
            exceptions.LookupFailed,
            "server_error",
        ),
        (502, b"<html>bad gateway</html>", {}, exceptions.LookupFailed, None),
        (408, b"", {}, exceptions.LookupFailed, None),
        (200, b"[1, 2]", {}, exceptions.LookupFailed, None),
        (
            400,
            b'{"error": {"code": "missing_param", "message": "call_id"}}',
            {},
            exceptions.UnexpectedRefusal,
            "missing_param",
        ),
        (
            400,
            b'{"success": false, "error": "call_id is required"}',
            {},
            exceptions.UnexpectedRefusal,
            None,
        ),
    ],
)
def test_lookup_answers_map_to_typed_errors(
    status: int, body: bytes, headers: dict[str, str], error: type[Exception], code: str | None
) -> None:
    with pytest.raises(error) as caught:
        client.parse_lookup(status, headers, body, "get-call")
    assert isinstance(caught.value, exceptions.MagpipeError)
    assert caught.value.provider_code == code
    assert str(caught.value.message).startswith("get-call")
    if status == 429:
        assert caught.value.retry_after == 7.0
    if error in (exceptions.LookupFailed, exceptions.RateLimited):
        assert caught.value.retry is Retry.SAFE


def test_a_token_echoed_in_a_lookup_error_is_scrubbed() -> None:
    secret = client.SecretStr("tok-secret-123")
    body = b'{"error": {"code": "unauthorized", "message": "bad token tok-secret-123"}}'
    with pytest.raises(exceptions.Unauthorized) as caught:
        client.parse_lookup(401, {}, body, "list-calls", secret=secret)
    assert "tok-secret-123" not in str(caught.value)


async def test_a_lookup_that_times_out_is_safe_to_ask_again() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({})

    app = web.Application()
    app.router.add_post(client.GET_CALL_PATH, slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with magpipe(f"http://127.0.0.1:{port}", timeout=0.3) as c:
            with pytest.raises(exceptions.LookupFailed) as caught:
                await c.get_call("x")
    finally:
        await runner.cleanup()
    assert caught.value.retry is Retry.SAFE
    async with magpipe("http://127.0.0.1:1", timeout=0.3) as c:
        with pytest.raises(exceptions.ConnectFailed):
            await c.list_calls()


async def test_paging_by_window_misses_no_record_on_a_page_edge(
    start_simulator: StartSimulator,
) -> None:
    """Records a third of a millisecond apart (several in one millisecond): paging by window
    returns each exactly once (a bound cut to milliseconds used to skip the edge's neighbours)."""
    sim = await start_simulator(max_concurrent=500, time_scale=100.0)
    async with magpipe(sim.url) as c:
        for n in range(250):
            await c.place_call(client.CallRequest(to=f"+1415556{n:04d}", from_=FROM))
        base = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        for n, call in enumerate(sim.calls):
            call.created = base + timedelta(microseconds=337 * n + 123)
        seen = [
            r.id
            async for page in c.list_window(
                base - timedelta(seconds=1), base + timedelta(seconds=1)
            )
            for r in page.calls
        ]
    assert len(seen) == len(set(seen)) == 250
