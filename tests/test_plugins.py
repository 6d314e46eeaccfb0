"""The built-in plugins (http, slack, hubspot, log) against real loopback servers that answer
as the services do (tests/fakes.py).

Unit-level checks call ``handle(event, ctx)`` with a Context of real pieces over an in-memory
store; the delivery outcomes (retries, Retry-After, dead letters, ``handler.disabled``) run
end to end: a config through ``rules.subscriptions`` and the installed entry points, the event
bus and its workers, a real SQLite store.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from orchestrator_plugins import hubspot, slack
from orchestrator_plugins.http import HttpHandler
from orchestrator_plugins.log import LogHandler
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from structlog.testing import capture_logs

from orchestrator import bus, exceptions, plugin, rules
from orchestrator.connectors.memory import MemoryConnector
from orchestrator.connectors.sqlite import SQLiteConnector
from orchestrator.daemon import delivery
from orchestrator.model import CallRef, CallStatus, Event, NewCall, new_id
from orchestrator.store import Claim, Store, actions
from orchestrator.store import Webhook as StatusHook
from orchestrator.store.rows import DeliveryRecord
from tests.fakes import (
    Answer,
    HubSpotFake,
    Receiver,
    SlackFake,
    hubspot_error,
    hubspot_rate_limited,
    slack_api_error,
    slack_rate_limited,
    webhook_error,
)

TO = "+14155550123"
FROM = "+16045551234"
TRANSCRIPT = (
    "Agent: Hi, this is Robin calling from Acme Dental about your cleaning next Tuesday. "
    "Customer: Oh yes, thanks for calling. Agent: Can you still make it at 3pm? "
    "Customer: Actually could we move it to 4pm? Agent: Of course, 4pm on Tuesday works. "
    "Customer: Great <3 & thanks. Agent: You're welcome, see you then. " * 3
)
RECORDING = "https://recordings.example.com/r/abc123.mp3"
FAST = {"schedule": ["50ms"], "max_attempts": 4, "jitter": 0, "timeout": "5s"}


# -- pieces ------------------------------------------------------------------------------------


@pytest.fixture
async def memory() -> AsyncIterator[Store]:
    s = Store(MemoryConnector())
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(SQLiteConnector(f"sqlite://{tmp_path}/plugins.db"))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make_event(status: str = "completed", **overrides: Any) -> Event:
    metadata = overrides.pop("metadata", {"name": "Ada Lovelace", "hubspot_contact_id": "901"})
    call = CallRef(
        id=new_id(),
        to=TO,
        from_=FROM,
        agent_id="agent-1",
        campaign="spring-recall",
        metadata=metadata,
        attempt=2,
        provider_call_id="prov-1",
    )
    fields: dict[str, Any] = {
        "id": new_id(),
        "type": f"call.{status}",
        "occurred_at": time.time(),
        "call": call,
        "status": status,
        "duration": 125.4,
        "recording_url": RECORDING,
        "transcript": TRANSCRIPT,
    }
    fields.update(overrides)
    return Event(**fields)


def build(name: str, spec: Mapping[str, Any]) -> Any:
    """An instance built from config through the installed entry points."""
    return plugin.build(name, spec, plugin.installed())


def context(
    store: Store,
    http: httpx.AsyncClient,
    event: Event,
    handler: Any,
    *,
    attempt: int = 1,
    **with_: Any,
) -> plugin.Context:
    """A Context of real pieces; ``with_`` is merged over the instance's options as a rule's
    ``with`` would be."""
    options = handler.options
    if with_:
        options = type(options).model_validate({**options.model_dump(), **with_})
    return plugin.Context(
        handler=handler.name,
        rule="rule",
        delivery_id=f"delivery-{event.id}",
        attempt=attempt,
        options=options,
        log=structlog.get_logger("test").bind(event_id=event.id),
        http=http,
        calls=actions.StoreCallActions(store, event, delivery_id="d", handler=handler.name),
        kv=actions.StoreKeyValue(store, handler.name),
        emit=actions.StoreEmitter(store, event, delivery_id="d", handler=handler.name),
    )


async def outcome(handler: Any, event: Event, ctx: plugin.Context) -> str:
    """``ok``, ``gone``, ``permanent`` or ``retry after=<s>``."""
    try:
        await handler.handle(event, ctx)
    except plugin.HandlerGone:
        return "gone"
    except plugin.DeliveryError as exc:
        return "permanent" if exc.permanent else f"retry after={exc.retry_after}"
    return "ok"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- end to end: config -> rules -> bus -> workers -> SQLite --------------------------------


@dataclasses.dataclass
class Run:
    bus: bus.EventBus
    call_id: str
    store: Store

    async def deliveries(self) -> list[DeliveryRecord]:
        return await self.store.list_deliveries(handler="rule")

    async def events(self) -> list[Event]:
        found = await self.store.get_call(self.call_id)
        assert found is not None
        return found[2]


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def finish_call(
    store: Store,
    *,
    status: CallStatus = CallStatus.COMPLETED,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """A call that goes queued, initiated and then ends with ``status``."""
    new = NewCall(
        to=TO,
        from_=FROM,
        campaign="spring-recall",
        metadata=dict(metadata if metadata is not None else {"name": "Ada Lovelace"}),
    )
    call, _ = await store.create_call(new)
    claim = await store.claim_attempt("test", max_live=10, lease=60, watchdog_after=60)
    assert isinstance(claim, Claim)
    provider_id = f"prov-{uuid.uuid4().hex[:8]}"
    await store.placed(claim.attempt_id, provider_call_id=provider_id, provider_status="initiated")
    await store.ingest(
        StatusHook(
            raw=provider_id.encode(),
            status=status,
            provider_call_id=provider_id,
            duration=125.4,
            recording_url=RECORDING,
            transcript=TRANSCRIPT,
        )
    )
    return str(call.id)


async def run(
    store: Store,
    spec: Mapping[str, Any],
    until: Callable[[Run], Awaitable[bool]],
    *,
    with_: Mapping[str, Any] | None = None,
    wrap: Callable[[plugin.Handler], plugin.Handler] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Run:
    """Route ``call.completed`` to the instance ``inst`` (``spec``, with a fast retry
    schedule) by the rule ``rule``, finish one call, and run the bus until ``until``."""
    config = {"inst": {**spec, "delivery": FAST}}
    rule = {"name": "rule", "on": "call.completed", "do": "inst", "with": dict(with_ or {})}
    subs, problems = rules.subscriptions(config, [rule], plugin.installed())
    assert not problems
    if wrap is not None:
        subs = [dataclasses.replace(s, handler=wrap(s.handler)) for s in subs]
    event_bus = bus.EventBus(subs)
    store.router = event_bus.route
    async with httpx.AsyncClient() as client:
        workers = delivery.workers(event_bus, store, "test-owner", client)
        for worker in workers:
            worker.poll = 0.02
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            state = Run(
                bus=event_bus, call_id=await finish_call(store, metadata=metadata), store=store
            )
            await wait_for(lambda: until(state))
        finally:
            await asyncio.gather(*(w.stop(time.monotonic() + 1) for w in workers))
            await asyncio.wait(tasks, timeout=2)
    return state


async def done(state: Run) -> bool:
    rows = await state.deliveries()
    return bool(rows) and rows[0].state == "done"


async def dead(state: Run) -> bool:
    rows = await state.deliveries()
    return bool(rows) and rows[0].state == "dead"


async def disabled(state: Run) -> bool:
    return any(e.type == "handler.disabled" for e in await state.events())


def exhausted(events: list[Event]) -> list[Event]:
    return [e for e in events if e.type == "delivery.exhausted"]


# -- registration --------------------------------------------------------------------------


def test_the_builtins_are_registered_as_entry_points() -> None:
    installed = plugin.installed()
    assert installed["log"] is LogHandler
    assert installed["http"] is HttpHandler
    assert installed["slack"] is slack.SlackHandler
    assert installed["hubspot"] is hubspot.HubSpotHandler
    for name in ("log", "http", "slack", "hubspot"):
        assert installed[name].type_name == name


# -- http ----------------------------------------------------------------------------------


def whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


async def test_http_signature_verifies_with_the_standard_webhooks_library(
    memory: Store, http: httpx.AsyncClient
) -> None:
    secret = whsec()
    async with Receiver() as receiver:
        handler = build("audit", {"use": "http", "url": receiver.endpoint, "secret": secret})
        event = make_event()
        await handler.handle(event, context(memory, http, event, handler))
    [request] = receiver.requests
    assert request.headers["webhook-id"] == event.id
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5
    assert request.headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(request.raw, request.headers) == event.to_json()
    # Unpadded base64, as some providers print their secrets, is the same key.
    assert Webhook(secret.rstrip("=")).verify(request.raw, request.headers) == event.to_json()
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec()).verify(request.raw, request.headers)
    with pytest.raises(WebhookVerificationError):  # the body is covered
        Webhook(secret).verify(request.raw.replace(b"completed", b"failed__"), request.headers)


async def test_http_plain_secret_is_its_utf8_bytes(memory: Store, http: httpx.AsyncClient) -> None:
    secret = "correct horse battery staple ✓"
    async with Receiver() as receiver:
        handler = build("audit", {"use": "http", "url": receiver.endpoint, "secret": secret})
        event = make_event()
        await handler.handle(event, context(memory, http, event, handler))
    [request] = receiver.requests
    # The library base64-decodes every *string* secret; a raw key is given to it as bytes.
    assert Webhook(secret.encode()).verify(request.raw, request.headers) == event.to_json()


async def test_http_without_a_secret_is_unsigned_but_keeps_the_ids(
    memory: Store, http: httpx.AsyncClient
) -> None:
    async with Receiver() as receiver:
        # ``secret: "${AUDIT_SECRET:-}"`` with the variable unset: no signing.
        handler = build(
            "audit",
            {"use": "http", "url": receiver.endpoint, "secret": "", "headers": {"X-Team": "ops"}},
        )
        event = make_event()
        await handler.handle(event, context(memory, http, event, handler))
    [request] = receiver.requests
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == request.headers["idempotency-key"] == event.id
    assert request.headers["x-team"] == "ops"
    assert request.headers["content-type"] == "application/json"
    assert request.json == event.to_json()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"url": "http://x/y", "secret": "whsec_not*base64!"}, "standard base64"),
        ({"url": "http://x/y", "secret": "whsec_"}, "empty"),
        ({"url": "ftp://x/y"}, "http"),
        ({"url": "/relative"}, "absolute"),
        ({"url": "http://x/y", "retries": 3}, "retries"),
    ],
)
def test_http_options_are_checked_at_config_time(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(exceptions.ConfigError) as caught:
        build("audit", {"use": "http", **spec})
    assert problem in str(caught.value)
    assert "not*base64" not in str(caught.value)  # a secret is never echoed


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Answer(200), "ok"),
        (Answer(204), "ok"),
        (Answer(400, {"error": "bad"}), "permanent"),
        (Answer(401), "permanent"),
        (Answer(404), "permanent"),
        (Answer(422), "permanent"),
        (Answer(301, headers={"Location": "http://elsewhere/"}), "permanent"),
        (Answer(410), "gone"),
        (Answer(408), "retry after=None"),
        (Answer(409), "retry after=None"),
        (Answer(425), "retry after=None"),
        (Answer(429, headers={"Retry-After": "7"}), "retry after=7.0"),
        (Answer(500), "retry after=None"),
        (Answer(503, headers={"Retry-After": "120"}), "retry after=120.0"),
    ],
)
async def test_http_maps_each_answer_to_a_delivery_outcome(
    memory: Store, http: httpx.AsyncClient, answer: Answer, expected: str
) -> None:
    async with Receiver() as receiver:
        receiver.script("events", answer)
        handler = build("audit", {"use": "http", "url": receiver.endpoint})
        event = make_event()
        assert await outcome(handler, event, context(memory, http, event, handler)) == expected


async def test_http_transport_error_is_retried(memory: Store, http: httpx.AsyncClient) -> None:
    handler = build("audit", {"use": "http", "url": f"http://127.0.0.1:{closed_port()}/x"})
    event = make_event()
    assert await outcome(handler, event, context(memory, http, event, handler)) == (
        "retry after=None"
    )


async def test_http_rule_options_override_the_instance(
    memory: Store, http: httpx.AsyncClient
) -> None:
    async with Receiver() as receiver, Receiver() as other:
        handler = build("audit", {"use": "http", "url": receiver.endpoint})
        event = make_event()
        ctx = context(memory, http, event, handler, url=other.endpoint, headers={"x-rule": "1"})
        await handler.handle(event, ctx)
    assert not receiver.requests
    assert other.requests[0].headers["x-rule"] == "1"


async def test_http_end_to_end_retry_after_then_success_each_try_signed(store: Store) -> None:
    secret = whsec()
    async with Receiver() as receiver:
        receiver.script("events", Answer(429, headers={"Retry-After": "1"}))
        state = await run(
            store, {"use": "http", "url": receiver.endpoint, "secret": secret}, until=done
        )
    first, second = receiver.requests
    assert (first.answered, second.answered) == (429, 200)
    assert second.at - first.at >= 0.95  # Retry-After, not the 50 ms schedule
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    for request in (first, second):
        Webhook(secret).verify(request.raw, request.headers)
    [row] = await state.deliveries()
    assert row.tries == 2


async def test_http_end_to_end_400_is_dead_at_once_with_delivery_exhausted(store: Store) -> None:
    async with Receiver() as receiver:
        receiver.script("events", Answer(400, {"error": "unknown field"}))
        state = await run(store, {"use": "http", "url": receiver.endpoint}, until=dead)
    assert len(receiver.requests) == 1
    [row] = await state.deliveries()
    assert row.tries == 1 and "HTTP 400" in row.last_error
    [event] = exhausted(await state.events())
    assert event.data["handler"] == "inst" and event.data["event_type"] == "call.completed"


async def test_http_end_to_end_410_disables_the_instance(store: Store) -> None:
    async with Receiver() as receiver:
        receiver.script("events", Answer(410))
        state = await run(store, {"use": "http", "url": receiver.endpoint}, until=disabled)
    assert "inst" in state.bus.disabled
    [row] = await state.deliveries()
    assert row.state == "pending"  # waits for the instance to be enabled again, not lost
    [gone] = [e for e in await state.events() if e.type == "handler.disabled"]
    assert gone.data["handler"] == "inst"


# -- slack ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({}, "exactly one of the two"),
        ({"webhook_url": "", "token": ""}, "exactly one of the two"),
        ({"webhook_url": "https://hooks.example/x", "token": "xoxb-1"}, "exactly one"),
        ({"token": "xoxb-1"}, "token needs a channel"),
        ({"webhook_url": "https://hooks.example/x", "channel": "C1"}, "channel is for token"),
        ({"webhook_url": "not a url"}, "URL"),
    ],
)
def test_slack_options_need_exactly_one_mode(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(exceptions.ConfigError) as caught:
        build("ops", {"use": "slack", **spec})
    assert problem in str(caught.value)


def test_slack_secrets_stay_out_of_reprs() -> None:
    handler = build("ops", {"use": "slack", "token": "xoxb-very-secret", "channel": "C1"})
    assert "xoxb-very-secret" not in repr(handler.options)
    handler = build("ops", {"use": "slack", "webhook_url": "https://hooks.example/T/B/sekrit"})
    assert "sekrit" not in repr(handler.options)


def blocks_text(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload["blocks"], ensure_ascii=False)


async def test_slack_webhook_posts_a_readable_block_kit_summary(
    memory: Store, http: httpx.AsyncClient
) -> None:
    async with SlackFake() as fake:
        handler = build("ops", {"use": "slack", "webhook_url": fake.webhook_url})
        event = make_event()
        await handler.handle(event, context(memory, http, event, handler))
    [payload] = fake.messages
    assert payload["text"] == (
        ":white_check_mark: Call to +14155550123 (Ada Lovelace): completed after 2m 05s"
    )
    text = blocks_text(payload)
    for expected in (
        "+14155550123 (Ada Lovelace)",
        "spring-recall",
        ":white_check_mark: completed",
        "2m 05s",
        "*Attempt*\\n2",
        f"<{RECORDING}|",
        event.call.id,
    ):
        assert expected in text, expected
    [transcript] = [
        b["text"]["text"]
        for b in payload["blocks"]
        if "Transcript" in b.get("text", {}).get("text", "")
    ]
    body = transcript.removeprefix("*Transcript*\n>")
    unescaped = body.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert body.endswith("…") and len(unescaped) <= 301
    assert "&lt;3 &amp; thanks" in transcript  # mrkdwn control characters are escaped
    # Block Kit limits: a header of 150, section texts of 3000, at most 10 fields.
    for block in payload["blocks"]:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            assert len(block.get("fields", [])) <= 10
            assert len(block.get("text", {}).get("text", "")) <= 3000


async def test_slack_uses_the_rules_rendered_text(memory: Store, http: httpx.AsyncClient) -> None:
    async with SlackFake() as fake:
        handler = build("ops", {"use": "slack", "webhook_url": fake.webhook_url})
        event = make_event("no_answer", duration=None, recording_url=None, transcript=None)
        ctx = context(memory, http, event, handler, text="No answer from *Ada*, retrying at 5pm")
        await handler.handle(event, ctx)
    [payload] = fake.messages
    assert payload["text"] == "No answer from *Ada*, retrying at 5pm"
    assert payload["blocks"][0]["text"]["text"] == "No answer from *Ada*, retrying at 5pm"
    assert ":telephone_receiver: no_answer" in blocks_text(payload)
    assert "Duration" not in blocks_text(payload) and "Recording" not in blocks_text(payload)


def test_slack_message_for_an_operational_event() -> None:
    event = dataclasses.replace(
        make_event(),
        type="delivery.exhausted",
        status=None,
        duration=None,
        transcript=None,
        recording_url=None,
        error={"code": "DELIVERY_EXHAUSTED", "message": "the endpoint answered HTTP 400"},
    )
    payload = slack.message(event)
    assert payload["blocks"][0]["text"]["text"] == ":rotating_light: delivery.exhausted"
    assert "the endpoint answered HTTP 400" in blocks_text(payload)
    assert payload["text"].startswith(":rotating_light: Call to +14155550123 (Ada Lovelace)")


async def test_slack_web_api_posts_with_the_bot_token(
    memory: Store, http: httpx.AsyncClient
) -> None:
    async with SlackFake(channels={"C0CALLS", "C0SALES"}) as fake:
        handler = build(
            "ops",
            {"use": "slack", "token": fake.token, "channel": "C0CALLS", "api_url": fake.api_url},
        )
        event = make_event("busy")
        await handler.handle(event, context(memory, http, event, handler))
        await handler.handle(event, context(memory, http, event, handler, channel="C0SALES"))
    assert [m["channel"] for m in fake.messages] == ["C0CALLS", "C0SALES"]
    assert fake.of("api")[0].headers["authorization"] == f"Bearer {fake.token}"
    assert ":no_entry: busy" in blocks_text(fake.messages[0])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (webhook_error(400, "invalid_payload"), "permanent"),
        (webhook_error(400, "user_not_found"), "permanent"),
        (webhook_error(403, "action_prohibited"), "permanent"),
        (webhook_error(403, "invalid_token"), "gone"),
        (webhook_error(404, "no_service"), "gone"),
        (webhook_error(404, "channel_not_found"), "gone"),
        (webhook_error(410, "channel_is_archived"), "gone"),
        (webhook_error(429, "rate_limited", retry_after=30), "retry after=30.0"),
        (webhook_error(500, "rollup_error"), "retry after=None"),
        (webhook_error(503, "service unavailable"), "retry after=None"),
        (Answer(200, "ok"), "ok"),
    ],
)
async def test_slack_webhook_answers(
    memory: Store, http: httpx.AsyncClient, answer: Answer, expected: str
) -> None:
    async with SlackFake() as fake:
        fake.script("webhook", answer)
        handler = build("ops", {"use": "slack", "webhook_url": fake.webhook_url})
        event = make_event()
        assert await outcome(handler, event, context(memory, http, event, handler)) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (slack_rate_limited(retry_after=12), "retry after=12.0"),
        (slack_api_error("ratelimited"), "retry after=None"),
        (slack_api_error("internal_error"), "retry after=None"),
        (slack_api_error("fatal_error", 500), "retry after=None"),
        (Answer(502, "<html>Bad Gateway</html>"), "retry after=None"),
        (Answer(200, "<html>captive portal</html>"), "retry after=None"),
        (slack_api_error("invalid_auth"), "gone"),
        (slack_api_error("token_revoked"), "gone"),
        (slack_api_error("account_inactive"), "gone"),
        (slack_api_error("missing_scope"), "gone"),
        (slack_api_error("channel_not_found"), "permanent"),
        (slack_api_error("is_archived"), "permanent"),
        (slack_api_error("not_in_channel"), "permanent"),
        (slack_api_error("invalid_blocks"), "permanent"),
        (slack_api_error("msg_too_long"), "permanent"),
        (Answer(404, "not found"), "permanent"),
        (Answer(410, "gone"), "gone"),
    ],
)
async def test_slack_web_api_answers(
    memory: Store, http: httpx.AsyncClient, answer: Answer, expected: str
) -> None:
    async with SlackFake() as fake:
        fake.script("api", answer)
        handler = build(
            "ops",
            {"use": "slack", "token": fake.token, "channel": "C0CALLS", "api_url": fake.api_url},
        )
        event = make_event()
        assert await outcome(handler, event, context(memory, http, event, handler)) == expected


async def test_slack_webhook_end_to_end_rate_limited_then_posted(store: Store) -> None:
    async with SlackFake() as fake:
        fake.script("webhook", webhook_error(429, "rate_limited", retry_after=1))
        state = await run(store, {"use": "slack", "webhook_url": fake.webhook_url}, until=done)
    first, second = fake.of("webhook")
    assert (first.answered, second.answered) == (429, 200)
    assert second.at - first.at >= 0.95
    assert len(fake.messages) == 1
    assert (await state.deliveries())[0].tries == 2


async def test_slack_end_to_end_the_rules_templated_text_arrives_rendered(store: Store) -> None:
    async with SlackFake() as fake:
        await run(
            store,
            {"use": "slack", "webhook_url": fake.webhook_url},
            until=done,
            with_={"text": "Call to {{ call.to }} ({{ call.metadata.name }}): *{{ status }}*"},
        )
    [payload] = fake.messages
    assert payload["text"] == f"Call to {TO} (Ada Lovelace): *completed*"
    assert payload["blocks"][0]["text"]["text"] == payload["text"]


async def test_slack_webhook_end_to_end_a_revoked_webhook_disables_the_instance(
    store: Store,
) -> None:
    async with SlackFake() as fake:
        revoked = fake.url + "/services/T0FAKE/B0FAKE/revoked"
        state = await run(store, {"use": "slack", "webhook_url": revoked}, until=disabled)
    assert "no_service" in state.bus.disabled["inst"]
    assert (await state.deliveries())[0].state == "pending"
    assert not exhausted(await state.events())


async def test_slack_web_api_end_to_end_unknown_channel_is_dead_and_secrets_stay_secret(
    store: Store,
) -> None:
    async with SlackFake() as fake:
        spec = {"use": "slack", "token": fake.token, "channel": "C0CALLS", "api_url": fake.api_url}
        with capture_logs() as logs:
            state = await run(store, spec, until=dead, with_={"channel": "C0NOPE"})
    assert fake.of("api")[0].json["channel"] == "C0NOPE"  # the rule's channel
    [row] = await state.deliveries()
    assert row.tries == 1 and "channel_not_found" in row.last_error
    events = await state.events()
    assert exhausted(events)
    seen = json.dumps([logs, row, [e.to_json() for e in events]], default=str)
    assert fake.token not in seen
    assert "delivery.dead" in seen


async def test_slack_secrets_never_reach_logs_or_errors(store: Store) -> None:
    async with SlackFake() as fake:
        fake.script(
            "webhook", webhook_error(500, "rollup_error"), webhook_error(400, "invalid_payload")
        )
        with capture_logs() as logs:
            state = await run(store, {"use": "slack", "webhook_url": fake.webhook_url}, until=dead)
        secret_part = fake.hook_path.rsplit("/", 1)[1]
    rows = await state.deliveries()
    seen = json.dumps([logs, rows, [e.to_json() for e in await state.events()]], default=str)
    assert "rollup_error" in seen and "invalid_payload" in seen
    assert secret_part not in seen


async def test_slack_web_api_end_to_end_invalid_token_disables(store: Store) -> None:
    async with SlackFake() as fake:
        spec = {
            "use": "slack",
            "token": "xoxb-revoked",
            "channel": "C0CALLS",
            "api_url": fake.api_url,
        }
        with capture_logs() as logs:
            state = await run(store, spec, until=disabled)
    assert "invalid_auth" in state.bus.disabled["inst"]
    assert "xoxb-revoked" not in json.dumps(logs, default=str)


# -- hubspot -------------------------------------------------------------------------------


@pytest.fixture
async def crm() -> AsyncIterator[HubSpotFake]:
    contacts = [
        {"id": "901", "properties": {"phone": TO, "firstname": "Ada"}},
        {"id": "902", "properties": {"phone": "+14155550999", "mobilephone": "+14155550777"}},
        {"id": "903", "properties": {"phone": "+14155550777"}},
    ]
    async with HubSpotFake(contacts=contacts) as fake:
        yield fake


def hubspot_spec(fake: HubSpotFake, **extra: Any) -> dict[str, Any]:
    return {"use": "hubspot", "token": fake.token, "base_url": fake.url, **extra}


async def test_hubspot_logs_a_finished_call_as_an_engagement(
    memory: Store, http: httpx.AsyncClient, crm: HubSpotFake
) -> None:
    handler = build("crm", hubspot_spec(crm, owner_id="77"))
    event = make_event()
    await handler.handle(event, context(memory, http, event, handler))
    [record] = crm.calls.values()
    props = record["properties"]
    assert props["hs_call_title"] == f"AI call to {TO}: completed [{event.id}]"
    assert props["hs_call_direction"] == "OUTBOUND"
    assert props["hs_call_status"] == "COMPLETED"
    assert props["hs_call_duration"] == "125400"
    assert props["hs_call_from_number"] == FROM and props["hs_call_to_number"] == TO
    assert props["hs_call_recording_url"] == RECORDING
    assert props["hubspot_owner_id"] == "77"
    assert props["hs_timestamp"].endswith("Z")
    assert "Customer: Great &lt;3 &amp; thanks" in props["hs_call_body"]
    assert "spring-recall" in props["hs_call_body"] and "2m 05s" in props["hs_call_body"]
    assert record["associations"] == [
        {
            "to": {"id": "901"},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}],
        }
    ]
    assert crm.of("create")[0].headers["authorization"] == f"Bearer {crm.token}"
    assert not crm.of("search_calls")  # a first try has nothing to look for
    assert await memory.kv_get("crm", f"engagement:{event.id}") == {"id": record["id"]}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("busy", "BUSY"),
        ("no_answer", "NO_ANSWER"),
        ("failed", "FAILED"),
        ("canceled", "CANCELED"),
        ("rejected", "FAILED"),
        ("timed_out", "FAILED"),
    ],
)
async def test_hubspot_status_mapping(
    memory: Store, http: httpx.AsyncClient, crm: HubSpotFake, status: str, expected: str
) -> None:
    handler = build("crm", hubspot_spec(crm))
    event = make_event(status, duration=None, recording_url="http://insecure.example/r.mp3")
    await handler.handle(event, context(memory, http, event, handler))
    [record] = crm.calls.values()
    assert record["properties"]["hs_call_status"] == expected
    assert "hs_call_duration" not in record["properties"]
    assert "hs_call_recording_url" not in record["properties"]  # HubSpot takes https only


async def test_hubspot_skips_events_that_are_not_finished_calls(
    memory: Store, http: httpx.AsyncClient, crm: HubSpotFake
) -> None:
    handler = build("crm", hubspot_spec(crm))
    for event in (
        make_event("ringing"),
        make_event("in_progress"),
        dataclasses.replace(make_event(), type="call.retry_scheduled", status=None),
    ):
        await handler.handle(event, context(memory, http, event, handler))
    assert not crm.requests


async def test_hubspot_without_a_contact_id_logs_the_call_unassociated(
    memory: Store, http: httpx.AsyncClient, crm: HubSpotFake
) -> None:
    handler = build("crm", hubspot_spec(crm))
    event = make_event(metadata={"name": "Ada"})
    with capture_logs() as logs:
        await handler.handle(event, context(memory, http, event, handler))
    [record] = crm.calls.values()
    assert record["associations"] == []
    assert any(line["event"] == "hubspot.no_contact" for line in logs)
    assert not crm.of("search_contacts")


@pytest.mark.parametrize(
    ("to", "expected"),
    [(TO, "901"), ("+14155550777", None), ("+14155550000", None)],
    ids=["one match", "two matches", "no match"],
)
async def test_hubspot_matches_the_contact_by_phone_when_asked(
    memory: Store, http: httpx.AsyncClient, crm: HubSpotFake, to: str, expected: str | None
) -> None:
    handler = build("crm", hubspot_spec(crm, match_contact_by_phone=True))
    event = make_event(metadata={})
    event = dataclasses.replace(event, call=dataclasses.replace(event.call, to=to))
    await handler.handle(event, context(memory, http, event, handler))
    [record] = crm.calls.values()
    ids = [a["to"]["id"] for a in record["associations"]]
    assert ids == ([expected] if expected else [])
    assert len(crm.of("search_contacts")) == 1


async def test_hubspot_redelivery_creates_no_second_engagement(
    memory: Store, http: httpx.AsyncClient, crm: HubSpotFake
) -> None:
    handler = build("crm", hubspot_spec(crm))
    event = make_event()
    await handler.handle(event, context(memory, http, event, handler, attempt=1))
    await handler.handle(event, context(memory, http, event, handler, attempt=2))
    assert len(crm.calls) == 1
    assert len(crm.of("create")) == 1 and not crm.of("search_calls")  # the kv answered


async def test_hubspot_redelivery_after_the_kv_write_was_lost(
    memory: Store, http: httpx.AsyncClient, crm: HubSpotFake
) -> None:
    handler = build("crm", hubspot_spec(crm))
    event = make_event()
    await handler.handle(event, context(memory, http, event, handler, attempt=1))
    [engagement] = crm.calls
    await memory.kv_delete("crm", f"engagement:{event.id}")
    await handler.handle(event, context(memory, http, event, handler, attempt=2))
    assert list(crm.calls) == [engagement]
    assert len(crm.of("search_calls")) == 1
    assert await memory.kv_get("crm", f"engagement:{event.id}") == {"id": engagement}


async def test_hubspot_a_create_whose_answer_was_lost_is_found_not_repeated(
    memory: Store, http: httpx.AsyncClient, crm: HubSpotFake
) -> None:
    crm.script("create", Answer(504, "upstream timed out", apply=True))
    handler = build("crm", hubspot_spec(crm))
    event = make_event()
    assert await outcome(handler, event, context(memory, http, event, handler)) == (
        "retry after=None"
    )
    assert len(crm.calls) == 1  # HubSpot did create it
    ctx = context(memory, http, event, handler, attempt=2)
    assert await outcome(handler, event, ctx) == "ok"
    assert len(crm.calls) == 1 and len(crm.of("create")) == 1


async def test_hubspot_dedupe_property_is_the_marker_when_configured(
    memory: Store, http: httpx.AsyncClient, crm: HubSpotFake
) -> None:
    handler = build("crm", hubspot_spec(crm, dedupe_property="orchestrator_event_id"))
    event = make_event()
    await handler.handle(event, context(memory, http, event, handler))
    await memory.kv_delete("crm", f"engagement:{event.id}")
    await handler.handle(event, context(memory, http, event, handler, attempt=3))
    [record] = crm.calls.values()
    assert record["properties"]["orchestrator_event_id"] == event.id
    assert record["properties"]["hs_call_title"] == f"AI call to {TO}: completed"
    [search] = crm.of("search_calls")
    assert search.json["filterGroups"][0]["filters"][0]["propertyName"] == "orchestrator_event_id"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (hubspot_rate_limited(retry_after=3), "retry after=3.0"),
        (hubspot_rate_limited("SECONDLY", retry_after=None), "retry after=1.0"),
        (hubspot_rate_limited("DAILY", retry_after=None), "retry after=3600.0"),
        (hubspot_error(401, "INVALID_AUTHENTICATION", "expired"), "gone"),
        (hubspot_error(403, "MISSING_SCOPES", "needs crm.objects.contacts.write"), "gone"),
        (hubspot_error(400, "VALIDATION_ERROR", "Property values were not valid"), "permanent"),
        (hubspot_error(500, "INTERNAL_ERROR", "oops"), "retry after=None"),
        (Answer(502, "<html>bad gateway</html>"), "retry after=None"),
        (Answer(201, "not json"), "retry after=None"),
    ],
)
async def test_hubspot_answers(
    memory: Store, http: httpx.AsyncClient, crm: HubSpotFake, answer: Answer, expected: str
) -> None:
    crm.script("create", answer)
    handler = build("crm", hubspot_spec(crm))
    event = make_event()
    assert await outcome(handler, event, context(memory, http, event, handler)) == expected


async def test_hubspot_validation_error_carries_hubspots_message(
    memory: Store, http: httpx.AsyncClient, crm: HubSpotFake
) -> None:
    handler = build("crm", hubspot_spec(crm))
    event = make_event(metadata={"hubspot_contact_id": "424242"})
    with pytest.raises(plugin.DeliveryError) as caught:
        await handler.handle(event, context(memory, http, event, handler))
    assert caught.value.permanent
    assert "VALIDATION_ERROR: One or more associations are invalid: 424242" in str(caught.value)


class CrashAfterHandling:
    """The real handler runs; then its kv write is lost and the daemon 'dies' before the
    delivery is marked done (first try only), so the delivery is repeated."""

    def __init__(self, inner: plugin.Handler, *, lose_kv: bool) -> None:
        self.inner = inner
        self.lose_kv = lose_kv
        self.attempts: list[int] = []

    async def handle(self, event: Event, ctx: plugin.Context) -> None:
        self.attempts.append(ctx.attempt)
        await self.inner.handle(event, ctx)
        if len(self.attempts) == 1:
            if self.lose_kv:
                await ctx.kv.delete(f"engagement:{event.id}")
            raise RuntimeError("the daemon died before marking the delivery done")


@pytest.mark.parametrize("lose_kv", [False, True], ids=["kv kept", "kv lost"])
async def test_hubspot_end_to_end_redelivery_makes_exactly_one_engagement(
    store: Store, crm: HubSpotFake, lose_kv: bool
) -> None:
    wrappers: list[CrashAfterHandling] = []

    def wrap(inner: plugin.Handler) -> plugin.Handler:
        wrappers.append(CrashAfterHandling(inner, lose_kv=lose_kv))
        return wrappers[-1]

    state = await run(
        store, hubspot_spec(crm), until=done, wrap=wrap, metadata={"hubspot_contact_id": "901"}
    )
    assert wrappers[0].attempts == [1, 2]  # the handler ran, and the delivery was repeated
    assert len(crm.calls) == 1 and len(crm.of("create")) == 1
    assert len(crm.of("search_calls")) == (1 if lose_kv else 0)
    [engagement] = crm.calls
    completed = next(e for e in await state.events() if e.type == "call.completed")
    assert await store.kv_get("inst", f"engagement:{completed.id}") == {"id": engagement}


async def test_hubspot_end_to_end_rate_limited_then_logged(store: Store, crm: HubSpotFake) -> None:
    crm.script("create", hubspot_rate_limited(retry_after=1))
    state = await run(store, hubspot_spec(crm), until=done)
    first, second = crm.of("create")
    assert (first.answered, second.answered) == (429, 201)
    assert second.at - first.at >= 0.95
    assert len(crm.calls) == 1
    assert len(crm.of("search_calls")) == 1  # the second try looked first
    assert (await state.deliveries())[0].tries == 2


async def test_hubspot_end_to_end_validation_error_is_dead(store: Store, crm: HubSpotFake) -> None:
    state = await run(
        store, hubspot_spec(crm), until=dead, metadata={"hubspot_contact_id": "424242"}
    )
    [row] = await state.deliveries()
    assert row.tries == 1 and "associations are invalid" in row.last_error
    assert exhausted(await state.events())
    assert not crm.calls


async def test_hubspot_end_to_end_a_revoked_token_disables_and_stays_secret(
    store: Store, crm: HubSpotFake
) -> None:
    spec = {**hubspot_spec(crm), "token": "pat-na1-revoked-token"}
    with capture_logs() as logs:
        state = await run(store, spec, until=disabled)
    assert "INVALID_AUTHENTICATION" in state.bus.disabled["inst"]
    assert "pat-na1-revoked-token" not in json.dumps([logs, await state.deliveries()], default=str)


# -- log -----------------------------------------------------------------------------------


async def test_log_writes_one_line_with_the_outcome(memory: Store, http: httpx.AsyncClient) -> None:
    handler = build("log", {"use": "log", "level": "WARNING"})
    event = make_event("failed", error={"code": "X", "message": "carrier said no"})
    with capture_logs() as logs:
        await handler.handle(event, context(memory, http, event, handler))
        await handler.handle(event, context(memory, http, event, handler, level="error"))
    first, second = logs
    assert first["event"] == "call.failed" and first["log_level"] == "warning"
    assert first["call_id"] == event.call.id and first["campaign"] == "spring-recall"
    assert first["error"] == {"code": "X", "message": "carrier said no"}
    assert second["log_level"] == "error"  # the rule's level
