"""orchestrator.testing's plugin harness: the built-in ``retry`` and ``log`` plugins run through
it, and small handlers written here check what it records and how it judges outcomes."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from aiohttp import web
from orchestrator_plugins.log import LogHandler
from orchestrator_plugins.retry import RetryHandler, RetryOptions

from orchestrator import (
    ConfigError,
    Context,
    DeliveryError,
    Event,
    HandlerGone,
    InputError,
    NewCall,
    Options,
    OrchestratorError,
)
from orchestrator.model import iso
from orchestrator.testing import (
    Canceled,
    Emitted,
    GaveUp,
    Harness,
    KvDeleted,
    KvSet,
    MemoryKeyValue,
    Queued,
    RecordingCalls,
    RecordingEmitter,
    Retried,
    make_event,
)

T0 = 1_704_067_200.0


# -- the retry plugin --------------------------------------------------------------------------


async def test_retry_schedules_the_next_attempt_from_the_event() -> None:
    harness = Harness(RetryHandler, {"delay": "10m", "backoff": 2, "max_attempts": 3})
    result = await harness.run(make_event(type="call.busy", occurred_at=T0))
    assert result.ok
    assert result.outcome == "ok"
    assert result.calls == [Retried(at=T0 + 600, reason="call.busy")]
    [retried] = result.calls
    assert isinstance(retried, Retried)
    scheduled = retried.event
    assert scheduled is not None
    assert scheduled.type == "call.retry_scheduled"
    assert scheduled.call.attempt == 2
    assert scheduled.data == {"next_attempt_at": iso(T0 + 600), "attempt": 2, "reason": "call.busy"}
    assert result.messages == ["retry.scheduled"]
    assert result.logs[0]["attempt"] == 2
    assert result.logs[0]["call_id"] == "call_test"


async def test_retry_backs_off_and_honours_min_gap_from_the_rules_with() -> None:
    harness = Harness(RetryHandler, {"delay": "10m", "max_attempts": 5})
    event = make_event(type="call.no_answer", occurred_at=T0, call={"attempt": 3})
    result = await harness.run(event, with_={"delay": "1m", "backoff": 3})
    assert result.calls == [Retried(at=T0 + 60 * 3**2, reason="call.no_answer")]
    # A wait below min_gap is raised to it.
    result = await Harness(RetryHandler).run(
        make_event(type="call.busy", occurred_at=T0), with_={"delay": "5s", "min_gap": "2m"}
    )
    assert result.calls == [Retried(at=T0 + 120, reason="call.busy")]


async def test_retry_gives_up_when_max_attempts_is_reached() -> None:
    harness = Harness(RetryHandler, {"max_attempts": 2})
    result = await harness.run(make_event(type="call.failed", call={"attempt": 2}))
    assert result.ok
    assert result.calls == [
        GaveUp(reason="2 attempt(s) made, the most max_attempts=2 allows"),
    ]
    [gave_up] = result.calls
    assert isinstance(gave_up, GaveUp)
    assert gave_up.event is not None
    assert gave_up.event.type == "call.retries_exhausted"
    assert gave_up.event.data == {"reason": gave_up.reason, "attempts": 2}
    assert result.messages == ["retry.exhausted"]


async def test_retry_ignores_an_event_that_is_not_an_outcome() -> None:
    result = await Harness(RetryHandler).run(make_event(type="call.ringing"))
    assert result.ok
    assert result.calls == []
    assert result.logs[0]["event"] == "retry.not_an_outcome"
    assert result.logs[0]["log_level"] == "warning"


async def test_a_redelivered_event_finds_the_call_moved_on() -> None:
    harness = Harness(RetryHandler)
    event = make_event(type="call.busy", occurred_at=T0)
    first = await harness.run(event, delivery_id="d1")
    again = await harness.run(event, delivery_id="d1", attempt=2)
    assert first.messages == ["retry.scheduled"]
    assert len(again.calls) == 1
    assert isinstance(again.calls[0], Retried)
    assert again.calls[0].event is None  # the store schedules it only once
    assert again.messages == []
    # The next attempt's own outcome is a new event: it can be retried in turn.
    later = make_event(type="call.busy", occurred_at=T0 + 600, call={"attempt": 2})
    third = await harness.run(later)
    assert third.calls == [Retried(at=T0 + 600 + 1200, reason="call.busy")]


async def test_templated_with_values_are_rendered_per_event() -> None:
    harness = Harness(RetryHandler, {"max_attempts": 5})
    event = make_event(type="call.busy", call={"attempt": 2, "metadata": {"tries": 2}})
    result = await harness.run(event, with_={"max_attempts": "{{ call.metadata.tries }}"})
    assert result.options is not None
    assert getattr(result.options, "max_attempts", None) == 2
    assert [type(a) for a in result.calls] == [GaveUp]


async def test_with_values_that_cannot_render_fail_the_delivery_for_good() -> None:
    harness = Harness(RetryHandler)
    result = await harness.run(make_event(), with_={"max_attempts": "{{ call.metadata }}"})
    assert not result.ok
    assert result.outcome == "dead"
    assert result.permanent
    assert isinstance(result.error, ConfigError)
    assert result.options is None
    assert result.calls == []


async def test_static_options_that_do_not_validate_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.test\.max_attempts"):
        Harness(RetryHandler, {"max_attempts": 0})
    with pytest.raises(ConfigError, match="unknown_key"):
        Harness(RetryHandler, {"unknown_key": 1})
    with pytest.raises(ConfigError, match=r"with\.backoff"):
        await Harness(RetryHandler).run(make_event(), with_={"backoff": 0.5})


# -- the log plugin ----------------------------------------------------------------------------


async def test_log_writes_one_line_at_the_configured_level() -> None:
    harness = Harness(LogHandler, name="audit")
    event = make_event(type="call.completed", duration=42.0, call={"campaign": "spring"})
    result = await harness.run(event, rule="audit everything")
    assert result.ok
    assert result.calls == [] and result.kv == [] and result.emitted == []
    [line] = result.logs
    assert line["event"] == "call.completed"
    assert line["log_level"] == "info"
    assert line["handler"] == "audit"
    assert line["rule"] == "audit everything"
    assert line["call_id"] == "call_test"
    assert line["duration"] == 42.0
    assert line["campaign"] == "spring"


async def test_log_level_from_the_rule_overrides_the_instance() -> None:
    harness = Harness(LogHandler, {"level": "debug"})
    assert (await harness.run(make_event())).logs[0]["log_level"] == "debug"
    result = await harness.run(make_event(type="call.failed"), with_={"level": "WARNING"})
    assert result.logs[0]["log_level"] == "warning"


# -- outcomes ----------------------------------------------------------------------------------


class RaiseOptions(Options):
    """What :class:`Raiser` raises."""

    raise_: str = "nothing"
    sleep: float = 0.0


class Raiser:
    """Raises what its options say."""

    type_name: ClassVar[str] = "raiser"
    options_model: ClassVar[type[Options]] = RaiseOptions

    def __init__(self, name: str, options: RaiseOptions) -> None:
        self.name = name

    async def handle(self, event: Event, ctx: Context) -> None:
        options = ctx.options
        assert isinstance(options, RaiseOptions)
        await asyncio.sleep(options.sleep)
        if options.raise_ == "retry_after":
            raise DeliveryError("busy", retry_after=7.5, plugin=self.name)
        if options.raise_ == "permanent":
            raise DeliveryError("bad request", permanent=True, plugin=self.name)
        if options.raise_ == "gone":
            raise HandlerGone("410", plugin=self.name)
        if options.raise_ == "bug":
            raise KeyError("oops")


@pytest.mark.parametrize(
    ("raise_", "outcome", "retry_after", "permanent"),
    [
        ("nothing", "ok", None, False),
        ("retry_after", "retry", 7.5, False),
        ("permanent", "dead", None, True),
        ("gone", "gone", None, True),
        ("bug", "retry", None, False),
    ],
)
async def test_outcomes_are_judged_as_the_bus_judges_them(
    raise_: str, outcome: str, retry_after: float | None, permanent: bool
) -> None:
    result = await Harness(Raiser).run(make_event(), with_={"raise_": raise_})
    assert result.outcome == outcome
    assert result.retry_after == retry_after
    assert result.permanent is permanent
    assert result.ok is (outcome == "ok")
    if outcome == "ok":
        result.raise_error()
    else:
        with pytest.raises(Exception, match=r".") as caught:
            result.raise_error()
        assert caught.value is result.error


async def test_a_handler_that_runs_too_long_is_cut_off() -> None:
    result = await Harness(Raiser, {"sleep": 5}, timeout=0.05).run(make_event())
    assert result.timed_out
    assert result.outcome == "retry"


# -- what a handler does -----------------------------------------------------------------------


class Busy:
    """Uses every part of the context, as its options say."""

    type_name: ClassVar[str] = "busy"
    options_model: ClassVar[type[Options]] = Options

    def __init__(self, name: str = "busy", options: Any = None) -> None:
        self.started = self.stopped = 0
        self.results: list[Any] = []

    async def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        self.stopped += 1

    async def handle(self, event: Event, ctx: Context) -> None:
        new = NewCall(to=event.call.to, from_=event.call.from_, purpose="follow up")
        self.results = [
            await ctx.calls.queue(new),
            await ctx.calls.queue(new, key="follow-up"),
            await ctx.calls.cancel("not needed"),
            await ctx.emit("followed_up", {"call": event.call.id}),
            await ctx.emit("followed_up"),
            await ctx.calls.attempts(),
        ]
        count = await ctx.kv.get("count") or 0
        await ctx.kv.set("count", count + 1)
        await ctx.kv.set("last", (event.id, ctx.attempt, ctx.delivery_id))
        await ctx.kv.delete("gone")


async def test_actions_are_recorded_with_plausible_results() -> None:
    handler = Busy()
    async with Harness(handler, name="crm") as harness:
        assert handler.started == 1
        event = make_event(type="call.queued", call={"attempt": 2})
        result = await harness.run(event, attempt=3, delivery_id="dlv_x")
        first = list(handler.results)
        again = await harness.run(make_event(type="call.completed"))
    assert handler.stopped == 1
    new = NewCall(to="+14155550100", from_="+16045550100", purpose="follow up")
    assert result.calls == [
        Queued(new=new),
        Queued(new=new, key="follow-up"),
        Canceled(reason="not needed"),
    ]
    assert result.emitted == [
        Emitted(name="followed_up", data={"call": "call_test"}),
        Emitted(name="followed_up"),
    ]
    first_id, keyed_id, canceled, emitted, repeat, attempts = first
    assert canceled is True  # the event is call.queued: an attempt was waiting
    assert isinstance(emitted, Event)
    assert emitted.type == "plugin.crm.followed_up"
    assert emitted.call.id == "call_test"
    assert repeat is None  # once per delivery and name
    assert [row["number"] for row in attempts] == [1, 2]
    assert result.kv == [
        KvSet(key="count", value=1),
        KvSet(key="last", value=["evt_test", 3, "dlv_x"]),  # JSON: the tuple reads back a list
        KvDeleted(key="gone"),
    ]
    # A later delivery: a new delivery queues a new call, a key repeats its call, the key-value
    # store kept its data, and this delivery's emit is new.
    second_id, second_keyed, canceled_again, emitted_again = handler.results[:4]
    assert second_id != first_id
    assert second_keyed == keyed_id
    assert canceled_again is False  # a completed call has nothing waiting
    assert emitted_again is not None
    assert again.kv[0] == KvSet(key="count", value=2)
    assert harness.kv.data["count"] == 2


async def test_memory_key_value_fails_like_the_store() -> None:
    kv = MemoryKeyValue("crm", {"seed": {"a": 1}})
    assert await kv.get("seed") == {"a": 1}
    assert await kv.get("missing") is None
    with pytest.raises(InputError, match="not JSON-serialisable"):
        await kv.set("x", object())
    with pytest.raises(InputError, match="not JSON-serialisable"):
        await kv.set("x", math.nan)
    assert kv.writes == []
    await kv.delete("missing")
    assert kv.writes == [KvDeleted(key="missing")]


async def test_recording_emitter_checks_names() -> None:
    emit = RecordingEmitter(make_event(), handler="crm")
    with pytest.raises(InputError, match="lowercase words"):
        await emit("Bad-Name")
    event = await emit("note.added", {"n": 1})
    assert event is not None
    assert event.type == "plugin.crm.note.added"
    assert event.data == {"n": 1}


async def test_recording_calls_without_a_harness() -> None:
    calls = RecordingCalls(make_event(type="call.in_progress"))
    assert await calls.retry(at=T0) is None  # the attempt has not ended
    assert await calls.give_up("no") is not None
    assert await calls.give_up("no") is None  # once per attempt
    assert await calls.attempts() == [
        {
            "number": 1,
            "status": "in_progress",
            "error_code": None,
            "created_at": T0,
            "placed_at": None,
            "ended_at": None,
        }
    ]
    given = [{"number": 1, "status": "busy"}]
    assert await RecordingCalls(make_event(), attempts=given).attempts() == given


class FailingStart(Busy):
    async def start(self) -> None:
        raise RuntimeError("no credentials")


async def test_a_failing_start_propagates() -> None:
    with pytest.raises(RuntimeError, match="no credentials"):
        async with Harness(FailingStart()):
            pass


# -- ctx.http is a real client -----------------------------------------------------------------


class Fetch:
    """GETs ``url`` and stores the answer."""

    type_name: ClassVar[str] = "fetch"
    options_model: ClassVar[type[Options]] = Options

    def __init__(self, name: str, options: Options) -> None:
        self.url = ""

    async def handle(self, event: Event, ctx: Context) -> None:
        response = await ctx.http.get(self.url)
        await ctx.kv.set("answer", response.text)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.query.get('to', '')}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/"
    await runner.cleanup()


async def test_ctx_http_reaches_a_loopback_server(server: str) -> None:
    harness = Harness(Fetch)
    assert isinstance(harness.handler, Fetch)
    harness.handler.url = server + "?to=test"
    await harness.run(make_event())  # a client made for the run
    assert harness.kv.data == {"answer": "hello test"}
    async with harness:  # one client for the block
        result = await harness.run(make_event())
    assert result.ok


async def test_a_queue_key_reused_for_another_call_conflicts() -> None:
    calls = RecordingCalls(make_event())
    first = NewCall(to="+14155550100", from_="+16045550100")
    assert await calls.queue(first, key="k") == await calls.queue(first, key="k")
    with pytest.raises(OrchestratorError, match="different request"):
        await calls.queue(NewCall(to="+14155550199", from_="+16045550100"), key="k")


async def test_an_instance_built_already_keeps_its_options() -> None:
    harness = Harness(RetryHandler("retry", RetryOptions(max_attempts=1)), name="retry")
    result = await harness.run(make_event(type="call.busy"))
    assert [type(a) for a in result.calls] == [GaveUp]
    result = await harness.run(make_event(type="call.busy"), with_={"max_attempts": 2})
    assert [type(a) for a in result.calls] == [Retried]
