"""Plugin testing: what a plugin author needs to run a handler the way the daemon does, without
a daemon. :class:`Harness` builds the plugin from its options, runs ``handle`` against events with a
real :class:`orchestrator.plugin.Context` whose durable parts are recording fakes, and returns
a :class:`Result` saying what the daemon would make of the outcome::

    from orchestrator.testing import GaveUp, Harness, make_event

    async def test_gives_up_after_the_last_attempt() -> None:
        async with Harness(RetryHandler, {"max_attempts": 2}) as harness:
            result = await harness.run(make_event(type="call.busy", call={"attempt": 2}))
        assert result.ok
        assert result.calls == [GaveUp(reason="2 attempt(s) made, ...")]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, cast

import httpx
import structlog
from structlog.testing import LogCapture

from orchestrator import exceptions, plugin, rules, templates
from orchestrator.model import CallStatus, Event, NewCall, iso, new_id
from orchestrator.store import actions
from orchestrator.testing.events import make_event


@dataclass(frozen=True, kw_only=True)
class Queued:
    """``ctx.calls.queue(new, key=key)`` was called; it returned ``call_id``."""

    new: NewCall
    key: str | None = None
    call_id: str = field(default="", compare=False)


@dataclass(frozen=True, kw_only=True)
class Retried:
    """``ctx.calls.retry(at=at, reason=reason)`` was called; it returned ``event`` (the
    ``call.retry_scheduled`` event, or None if the call had moved on)."""

    at: float
    reason: str | None = None
    event: Event | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class GaveUp:
    """``ctx.calls.give_up(reason)`` was called; it returned ``event`` (the
    ``call.retries_exhausted`` event, or None if this attempt had already given up)."""

    reason: str
    event: Event | None = field(default=None, compare=False)


@dataclass(frozen=True, kw_only=True)
class Canceled:
    """``ctx.calls.cancel(reason)`` was called; ``canceled`` is what it returned."""

    reason: str
    canceled: bool = field(default=False, compare=False)


#: One recorded call action. The results (``call_id``, ``event``, ``canceled``) are left out of
#: ``==``, so ``result.calls == [GaveUp(reason="...")]`` compares what the plugin asked for.
CallAction = Queued | Retried | GaveUp | Canceled


@dataclass(frozen=True, kw_only=True)
class KvSet:
    """``ctx.kv.set(key, value)`` stored ``value`` (as it reads back: JSON round-tripped)."""

    key: str
    value: Any


@dataclass(frozen=True, kw_only=True)
class KvDeleted:
    """``ctx.kv.delete(key)`` was called."""

    key: str


#: One recorded key-value write.
KvWrite = KvSet | KvDeleted


@dataclass(frozen=True, kw_only=True)
class Emitted:
    """``ctx.emit(name, data)`` was called; ``event`` is the ``plugin.<instance>.<name>`` event
    it returned (None for a repeat within the same delivery)."""

    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    event: Event | None = field(default=None, compare=False)


@dataclass
class _Book:
    """What the fakes remember across deliveries, as the store does: queued calls by key, each
    call's latest attempt (number, status) and the once-only actions already taken."""

    queued: dict[str, tuple[str, NewCall]] = field(default_factory=dict)
    attempts: dict[str, tuple[int, str]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)


class RecordingCalls:
    """:class:`orchestrator.plugin.CallActions` for one delivery of ``event`` that records each
    action in :attr:`actions` and answers as the store would:

    * ``queue`` returns ``call_queued_<n>``, the same id again for the same ``key`` (default:
      the delivery), or raises IdempotencyConflict if the key was used for another call;
    * ``retry`` returns a ``call.retry_scheduled`` event for attempt ``n + 1`` if the event's
      attempt is the call's latest and has ended (its status is terminal), else None;
    * ``give_up`` returns a ``call.retries_exhausted`` event, once per call attempt;
    * ``cancel`` is True if an attempt is waiting (the event is ``call.queued``, or a retry was
      scheduled) and cancels it;
    * ``attempts`` returns ``attempts`` if given, else one row per attempt up to the event's
      (earlier ones ``failed``, the event's with its status; times are the event's).

    ``book`` is shared by the fakes of one :class:`Harness`, so a later delivery sees what an
    earlier one did.
    """

    def __init__(
        self,
        event: Event,
        *,
        delivery_id: str = "dlv_test",
        attempts: Sequence[Mapping[str, Any]] | None = None,
        book: _Book | None = None,
    ) -> None:
        self.event = event
        self.delivery_id = delivery_id
        self.actions: list[CallAction] = []
        self._attempts = attempts
        self._book = book if book is not None else _Book()
        known = self._book.attempts.get(event.call.id)
        if known is None or (event.call.attempt >= known[0] and event.status is not None):
            # A newer attempt's status event: the store has moved on to it.
            status = event.status or CallStatus.QUEUED.value
            self._book.attempts[event.call.id] = (event.call.attempt, status)

    async def queue(self, new: NewCall, *, key: str | None = None) -> str:
        """Record the call; its id (the same for the same ``key``)."""
        idempotency = key or self.delivery_id
        fresh = (f"call_queued_{len(self._book.queued) + 1}", new)
        call_id, first = self._book.queued.setdefault(idempotency, fresh)
        if first != new:
            raise exceptions.IdempotencyConflict(
                "this Idempotency-Key was used for a different request", call_id=call_id
            )
        self.actions.append(Queued(new=new, key=key, call_id=call_id))
        return call_id

    async def retry(self, *, at: float, reason: str | None = None) -> Event | None:
        """Record the retry; the ``call.retry_scheduled`` event, or None if the call moved on."""
        call = self.event.call
        number, status = self._book.attempts[call.id]
        scheduled: Event | None = None
        if number == call.attempt and status in _TERMINAL:
            self._book.attempts[call.id] = (number + 1, CallStatus.QUEUED.value)
            scheduled = make_event(
                id=new_id(),
                type="call.retry_scheduled",
                occurred_at=time.time(),
                call={**call.to_json(), "attempt": number + 1, "provider_call_id": None},
                status=None,
                data={"next_attempt_at": iso(at), "attempt": number + 1, "reason": reason},
            )
        self.actions.append(Retried(at=at, reason=reason, event=scheduled))
        return scheduled

    async def give_up(self, reason: str) -> Event | None:
        """Record giving up; the ``call.retries_exhausted`` event (None if already given up)."""
        call = self.event.call
        key = f"{call.id}:{call.attempt}:call.retries_exhausted"
        event = None
        if key not in self._book.done:
            self._book.done.add(key)
            event = _about(
                self.event, "call.retries_exhausted", {"reason": reason, "attempts": call.attempt}
            )
        self.actions.append(GaveUp(reason=reason, event=event))
        return event

    async def cancel(self, reason: str) -> bool:
        """Record the cancel; True if a waiting attempt was canceled."""
        call_id = self.event.call.id
        number, status = self._book.attempts[call_id]
        canceled = status == CallStatus.QUEUED.value
        if canceled:
            self._book.attempts[call_id] = (number, CallStatus.CANCELED.value)
        self.actions.append(Canceled(reason=reason, canceled=canceled))
        return canceled

    async def attempts(self) -> list[Mapping[str, Any]]:
        """The call's attempts (given, or made up from the event; see the class docstring)."""
        if self._attempts is not None:
            return [dict(row) for row in self._attempts]
        at = self.event.occurred_at
        latest, latest_status = self._book.attempts[self.event.call.id]
        rows: list[Mapping[str, Any]] = []
        for number in range(1, latest + 1):
            status = latest_status if number == latest else "failed"
            if number == self.event.call.attempt and number != latest:
                status = self.event.status or "failed"
            ended = status in _TERMINAL and status != CallStatus.CANCELED.value
            rows.append(
                {
                    "number": number,
                    "status": status,
                    "error_code": None,
                    "created_at": at,
                    "placed_at": at if ended else None,
                    "ended_at": at if status in _TERMINAL else None,
                }
            )
        return rows


_TERMINAL = frozenset(s.value for s in CallStatus if s.terminal)


def _about(source: Event, type_: str, data: Mapping[str, Any]) -> Event:
    """A new event of ``type_`` about ``source``'s call and attempt (as the store emits it)."""
    return make_event(
        id=new_id(),
        type=type_,
        occurred_at=time.time(),
        call=source.call.to_json(),
        status=None,
        data=dict(data),
    )


class MemoryKeyValue:
    """:class:`orchestrator.plugin.KeyValue` over a dict, recording writes in :attr:`writes`.

    Values go through JSON as in the store: a value that is not JSON-serialisable (or is NaN or
    infinite) raises :class:`orchestrator.InputError`, and what reads back is the decoded JSON
    (a tuple comes back as a list). :attr:`data` holds the stored values, decoded.
    """

    def __init__(self, scope: str = "test", data: Mapping[str, Any] | None = None) -> None:
        self.scope = scope
        self._encoded: dict[str, str] = {}
        self.writes: list[KvWrite] = []
        for key, value in (data or {}).items():
            self._encoded[key] = self._encode(key, value)

    @property
    def data(self) -> dict[str, Any]:
        """Every stored value, decoded."""
        return {key: json.loads(raw) for key, raw in self._encoded.items()}

    def _encode(self, key: str, value: Any) -> str:
        try:
            return json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise exceptions.InputError(
                f"value for {key!r} is not JSON-serialisable: {exc}", plugin=self.scope
            ) from None

    async def get(self, key: str) -> Any:
        """The value under ``key``, or None."""
        raw = self._encoded.get(key)
        return json.loads(raw) if raw is not None else None

    async def set(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON) under ``key``."""
        raw = self._encode(key, value)
        self._encoded[key] = raw
        self.writes.append(KvSet(key=key, value=json.loads(raw)))

    async def delete(self, key: str) -> None:
        """Remove ``key`` (no error if absent)."""
        self._encoded.pop(key, None)
        self.writes.append(KvDeleted(key=key))


class RecordingEmitter:
    """:class:`orchestrator.plugin.Emitter` for one delivery of ``event`` that records each
    emit in :attr:`emitted`. Names are checked as the daemon checks them (an InputError for
    ``Bad-Name``); the event is ``plugin.<handler>.<name>`` about the same call, once per
    delivery and name (a repeat returns None)."""

    def __init__(
        self,
        event: Event,
        *,
        handler: str = "test",
        delivery_id: str = "dlv_test",
        book: _Book | None = None,
    ) -> None:
        self.event = event
        self.handler = handler
        self.delivery_id = delivery_id
        self.emitted: list[Emitted] = []
        self._book = book if book is not None else _Book()

    async def __call__(self, name: str, data: Mapping[str, Any] | None = None) -> Event | None:
        """Record the emit; the event, or None if this delivery emitted it already."""
        if not actions._NAME.fullmatch(name):
            raise exceptions.InputError(
                f"custom event name {name!r}: lowercase words separated by dots",
                plugin=self.handler,
            )
        type_ = f"plugin.{self.handler}.{name}"
        key = f"{self.delivery_id}:{type_}"
        event = None
        if key not in self._book.done:
            self._book.done.add(key)
            event = _about(self.event, type_, dict(data or {}))
        self.emitted.append(Emitted(name=name, data=dict(data or {}), event=event))
        return event


#: What the daemon makes of a delivery's outcome: done, tried again later (while attempts
#: remain), dead at once (``delivery.exhausted``), or the instance disabled (410 Gone).
Outcome = Literal["ok", "retry", "dead", "gone"]


@dataclass(frozen=True, kw_only=True)
class Result:
    """One run of a handler: what it raised (``error``, None if it returned), what it did and
    what it logged. ``options`` are the options it ran with (None if they did not validate)."""

    event: Event
    options: plugin.Options | None
    error: Exception | None
    calls: list[CallAction]
    kv: list[KvWrite]
    emitted: list[Emitted]
    logs: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        """True if the handler returned without raising."""
        return self.error is None

    @property
    def outcome(self) -> Outcome:
        """What the daemon does next, judged as the event bus does: ``gone`` for
        :class:`HandlerGone`, ``dead`` for a permanent failure (``DeliveryError(permanent=
        True)``, or options that did not render), ``retry`` for any other exception or a
        timeout, else ``ok``."""
        if self.error is None:
            return "ok"
        if isinstance(self.error, plugin.HandlerGone):
            return "gone"
        return "dead" if self.permanent else "retry"

    @property
    def permanent(self) -> bool:
        """True if retrying cannot help: the failure says so, or the options did not render."""
        if self.error is None:
            return False
        return self.options is None or bool(getattr(self.error, "permanent", False))

    @property
    def retry_after(self) -> float | None:
        """The minimum wait the failure asked for (a :class:`DeliveryError`'s), if any."""
        value = getattr(self.error, "retry_after", None)
        return float(value) if value is not None else None

    @property
    def timed_out(self) -> bool:
        """True if the handler was cut off by the harness's ``timeout``."""
        return isinstance(self.error, TimeoutError)

    @property
    def messages(self) -> list[str]:
        """The event names of the log lines, in order (``retry.scheduled``...)."""
        return [str(line.get("event")) for line in self.logs]

    def raise_error(self) -> None:
        """Raise the handler's exception, if there was one (to see its traceback in pytest)."""
        if self.error is not None:
            raise self.error


class Harness:
    """Runs one plugin instance as the daemon would, recording what it does.

    ``plugin_type_or_instance`` is a plugin type (a class with ``type_name`` and
    ``options_model``), built as ``cls(name, options)`` after validating ``options`` with its
    model, as the daemon builds an instance (invalid options raise
    :class:`orchestrator.ConfigError`, as a config would fail to load); or an instance already
    built (``options`` are then only the base that :meth:`run`'s ``with_`` merges over; by
    default the instance's ``options`` attribute, if it is an :class:`Options` model).

    ``http`` is the client handlers get as ``ctx.http``; by default a real
    ``httpx.AsyncClient``, made per run, or once for the whole ``async with`` block (which also
    runs the instance's optional ``start()`` and ``stop()``). ``timeout`` cuts a run off as the
    delivery timeout does. :attr:`kv` and what calls were queued or retried persist across runs,
    as they would in the store.
    """

    def __init__(
        self,
        plugin_type_or_instance: type[plugin.Handler] | plugin.Handler,
        options: Mapping[str, Any] | None = None,
        *,
        name: str = "test",
        http: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
    ) -> None:
        base = dict(options or {})
        if isinstance(plugin_type_or_instance, type):
            plugin_type = cast(plugin.PluginType, plugin_type_or_instance)
            spec = {**base, "use": plugin_type.type_name}
            self.handler: plugin.Handler = plugin.build(
                name, spec, {plugin_type.type_name: plugin_type}
            )
            self.model: type[plugin.Options] = plugin_type.options_model
        else:
            self.handler = plugin_type_or_instance
            self.model = getattr(type(self.handler), "options_model", plugin.Options)
            own = getattr(self.handler, "options", None)
            if options is None and isinstance(own, plugin.Options):
                base = own.model_dump(by_alias=True, exclude_unset=True)
        self.name = name
        self.timeout = timeout
        self.base = base
        self.kv = MemoryKeyValue(name)
        self._book = _Book()
        self._given_http = http
        self._http: httpx.AsyncClient | None = None  # the default client of an `async with`
        self._deliveries = 0

    async def start(self) -> None:
        """Run the instance's ``start()`` if it has one (an exception propagates: the daemon
        would disable the instance)."""
        if self._given_http is None and self._http is None:
            self._http = httpx.AsyncClient()
        start = getattr(self.handler, "start", None)
        if start is not None:
            await start()

    async def stop(self) -> None:
        """Run the instance's ``stop()`` if it has one, and close the default http client."""
        try:
            stop = getattr(self.handler, "stop", None)
            if stop is not None:
                await stop()
        finally:
            if self._http is not None:
                await self._http.aclose()
                self._http = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def options(self, event: Event, with_: Mapping[str, Any] | None = None) -> plugin.Options:
        """The options a delivery of ``event`` runs with: ``with_`` (a rule's ``with``; strings
        may be templates) rendered against the event, merged over the instance's options (top-
        level keys replace) and validated by the plugin's model. Raises ConfigError."""
        return self._route(with_)(event)

    def _route(self, with_: Mapping[str, Any] | None, rule: str = "test") -> rules.RouteOptions:
        compiled = templates.compile_value(dict(with_ or {}), "with")
        return rules.RouteOptions(
            rule=rule, instance=self.name, model=self.model, base=self.base, with_=compiled
        )

    async def run(
        self,
        event: Event,
        with_: Mapping[str, Any] | None = None,
        *,
        rule: str = "test",
        attempt: int = 1,
        delivery_id: str | None = None,
        attempts: Sequence[Mapping[str, Any]] | None = None,
    ) -> Result:
        """Deliver ``event`` once and return what happened.

        ``with_`` is the rule's ``with``; values that are not templates and do not validate
        raise ConfigError (the config would not load), templated ones that fail make a
        ``dead`` result without calling the handler (the daemon fails the delivery for good).
        ``attempt`` is ``ctx.attempt``; ``delivery_id`` defaults to a new one per run (reuse
        one to play a redelivery); ``attempts`` is what ``ctx.calls.attempts()`` returns.
        """
        self._deliveries += 1
        delivery = delivery_id or f"dlv_{self._deliveries}"
        calls = RecordingCalls(event, delivery_id=delivery, attempts=attempts, book=self._book)
        emit = RecordingEmitter(event, handler=self.name, delivery_id=delivery, book=self._book)
        capture = LogCapture()
        logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
            structlog.ReturnLogger(),
            processors=[capture],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        )
        kv_before = len(self.kv.writes)
        options: plugin.Options | None = None
        error: Exception | None = None
        route = self._route(with_, rule)
        try:
            options = route(event)
        except exceptions.ConfigError as exc:
            if not route.with_.templated:
                raise
            error = exc
        if options is not None:
            async with contextlib.AsyncExitStack() as stack:
                http = self._given_http or self._http
                if http is None:  # outside `async with`: a client for this run only
                    http = await stack.enter_async_context(httpx.AsyncClient())
                ctx = plugin.Context(
                    handler=self.name,
                    rule=rule,
                    delivery_id=delivery,
                    attempt=attempt,
                    options=options,
                    log=logger.bind(
                        handler=self.name,
                        rule=rule,
                        call_id=event.call.id,
                        event_id=event.id,
                        event_type=event.type,
                    ),
                    http=http,
                    calls=calls,
                    kv=self.kv,
                    emit=emit,
                )
                try:
                    async with asyncio.timeout(self.timeout):
                        await self.handler.handle(event, ctx)
                except Exception as exc:  # the outcome under test
                    error = exc
        return Result(
            event=event,
            options=options,
            error=error,
            calls=list(calls.actions),
            kv=self.kv.writes[kv_before:],
            emitted=list(emit.emitted),
            logs=[dict(line) for line in capture.entries],
        )
