"""The handler plugin contract and the registry of installed plugin types.

A plugin type is a class with a ``type_name``, an ``options_model`` (a pydantic model of its
options) and ``async def handle(event, ctx)``; ``start``/``stop`` are optional. Types are found
through the ``orchestrator.plugins`` entry-point group; the built-ins in ``plugins/`` register
there exactly as a third-party package does::

    [project.entry-points."orchestrator.plugins"]
    teams = "my_package.teams:TeamsHandler"

Configured instances (``plugins: {ops: {use: slack, ...}}``) are built once with their options;
each rule's ``with`` values are rendered against the event, merged over the instance's options
and validated by the same model, and reach ``handle`` as ``ctx.options``.

This module is also the plugin kit: everything the built-in plugins use is here (and in
``orchestrator``), so a third-party plugin can do what they do. Option types (:data:`Duration`,
:data:`OptionalSecret`), a call's statuses (:class:`CallStatus`), the options a delivery runs
with (:func:`effective`), and for handlers
that speak HTTP: :func:`check_url`, :func:`post`, :func:`check`, :func:`snippet`,
:func:`retry_after`; for messages: :func:`iso`, :func:`finite`, :func:`human_duration`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator import exceptions
from orchestrator.config import Duration, OptionalSecret
from orchestrator.exceptions import DeliveryError, HandlerGone
from orchestrator.model import CallStatus, Event, NewCall, finite, iso
from orchestrator.provider.client import retry_after

_retry_after = retry_after  # ``check`` has a parameter of that name

__all__ = [
    "ENTRY_POINT_GROUP",
    "RETRYABLE_4XX",
    "CallActions",
    "CallStatus",
    "Context",
    "DeliveryError",
    "Duration",
    "Emitter",
    "Handler",
    "HandlerGone",
    "KeyValue",
    "OptionalSecret",
    "Options",
    "PluginType",
    "build",
    "check",
    "check_url",
    "effective",
    "finite",
    "human_duration",
    "installed",
    "iso",
    "options_of",
    "post",
    "retry_after",
    "snippet",
]

ENTRY_POINT_GROUP = "orchestrator.plugins"


class Options(BaseModel):
    """Base of every plugin's options model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CallActions(Protocol):
    """What a handler may do to calls. Every action is durable and idempotent per delivery:
    a redelivered event repeating an action does not repeat its effect."""

    async def queue(self, new: NewCall, *, key: str | None = None) -> str:
        """Queue a new call; return its id. ``key`` makes a repeat return the same call."""
        ...

    async def retry(self, *, at: float, reason: str | None = None) -> Event | None:
        """Schedule the next attempt of this event's call at epoch ``at``; the
        ``call.retry_scheduled`` event, or None if the call already moved on (its latest
        attempt is not this event's, or is not finished)."""
        ...

    async def give_up(self, reason: str) -> Event | None:
        """Say no more attempts will be made: emits ``call.retries_exhausted`` (once)."""
        ...

    async def cancel(self, reason: str) -> bool:
        """Cancel this event's call if an attempt is still queued or scheduled (a live call
        is left to finish); True if something was canceled."""
        ...

    async def attempts(self) -> list[Mapping[str, Any]]:
        """This call's attempts so far (number, status, created/placed/ended times)."""
        ...


class KeyValue(Protocol):
    """A small durable key-value store private to one plugin instance (JSON values)."""

    async def get(self, key: str) -> Any:
        """The value stored under ``key``, or None."""
        ...

    async def set(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable ``value`` under ``key``."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key`` (no error if absent)."""
        ...


class Emitter(Protocol):
    """Emits custom events ``plugin.<instance>.<name>`` that rules can route."""

    async def __call__(self, name: str, data: Mapping[str, Any] | None = None) -> Event | None:
        """Emit ``plugin.<instance>.<name>`` about this event's call (once per delivery)."""
        ...


@dataclass(frozen=True, kw_only=True)
class Context:
    """What a handler gets besides the event.

    ``handler`` is the instance name, ``rule`` the rule that routed the event, ``attempt`` which
    try of this delivery this is (1 first), ``options`` the instance's options merged with the
    rule's rendered ``with``; ``log`` is bound to the call and event; ``http`` is the daemon's
    shared client; ``calls``, ``kv`` and ``emit`` act durably.
    """

    handler: str
    rule: str
    delivery_id: str
    attempt: int
    options: Options
    log: structlog.typing.FilteringBoundLogger
    http: httpx.AsyncClient
    calls: CallActions
    kv: KeyValue
    emit: Emitter


@runtime_checkable
class Handler(Protocol):
    """A plugin instance: ``async def handle(event, ctx)``. Raising means "try again later"
    (see :class:`DeliveryError` for how to say more)."""

    async def handle(self, event: Event, ctx: Context) -> None:
        """Act on one event; raise to have it retried on the delivery schedule."""
        ...


class PluginType(Protocol):
    """A plugin type: a class with a type name and an options model, built per instance as
    ``PluginType(name, options)``. Instances may also define ``async def start()`` and
    ``async def stop()``, run when the daemon (or a reload) starts and stops them."""

    type_name: ClassVar[str]
    options_model: ClassVar[type[Options]]

    def __call__(self, name: str, options: Any) -> Handler: ...


def installed() -> dict[str, PluginType]:
    """Every plugin type registered in the entry-point group, by type name."""
    found: dict[str, PluginType] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[entry.name] = entry.load()
        except Exception as exc:  # a broken third-party plugin must not stop the others
            structlog.get_logger(__name__).error(
                "plugin.load_failed", plugin=entry.name, error=repr(exc)
            )
    return found


def options_of(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The plugin options in an instance's config (everything but ``use`` and ``delivery``)."""
    return {k: v for k, v in spec.items() if k not in ("use", "delivery")}


def build(name: str, spec: Mapping[str, Any], types: Mapping[str, PluginType]) -> Handler:
    """Instantiate the handler ``name`` from its config (``use`` + the plugin's options)."""
    kind = spec.get("use")
    if not isinstance(kind, str) or kind not in types:
        known = ", ".join(sorted(types)) or "none"
        raise exceptions.ConfigError(
            f"plugins.{name}.use: unknown plugin type {kind!r} (installed: {known})", plugin=name
        )
    plugin_type = types[kind]
    try:
        parsed = plugin_type.options_model.model_validate(options_of(spec))
    except ValidationError as exc:
        problems = "; ".join(
            f"plugins.{name}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise exceptions.ConfigError(problems, plugin=name) from None
    return plugin_type(name, parsed)


# -- the kit: what handlers that speak HTTP share -------------------------------------------

#: 4xx answers that say "try again" rather than "this request is wrong".
RETRYABLE_4XX = frozenset({408, 409, 425, 429})

OptionsT = TypeVar("OptionsT", bound=Options)


def effective(given: Options, own: OptionsT) -> OptionsT:
    """The options a delivery runs with: the route's (instance options merged with the rule's
    rendered ``with``) when it supplies them, else the instance's own."""
    return given if isinstance(given, type(own)) else own


def check_url(value: str) -> str:
    """``value`` if it is an absolute http(s) URL, else ValueError (never echoing the URL,
    which may carry a secret)."""
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, TypeError):
        raise ValueError("not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


async def post(
    ctx: Context, url: str, *, plugin: str, service: str, within: float, **kwargs: Any
) -> httpx.Response:
    """POST with the daemon's shared client, within ``within`` seconds; a transport failure
    (refused, reset, timed out) becomes a retryable DeliveryError that names the service,
    never the URL."""
    try:
        return await ctx.http.post(url, timeout=within, **kwargs)
    except httpx.TransportError as exc:
        raise DeliveryError(f"{type(exc).__name__} reaching {service}", plugin=plugin) from exc


def check(
    response: httpx.Response,
    *,
    plugin: str,
    service: str,
    detail: str = "",
    retry_after: float | None = None,
) -> None:
    """Return on 2xx; otherwise raise what the status calls for.

    410 is :class:`HandlerGone`; 429, 5xx and 408/409/425 are retried (after Retry-After, or
    ``retry_after`` when the header is missing); any other answer (a 3xx redirect, a 4xx) is
    permanent: sending the same request again cannot help.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"{service} answered HTTP {status}" + (f": {detail}" if detail else "")
    if status == 410:
        raise HandlerGone(message, plugin=plugin)
    if status in RETRYABLE_4XX or status >= 500:
        wait = _retry_after(response.headers.get("retry-after"))
        raise DeliveryError(
            message, retry_after=wait if wait is not None else retry_after, plugin=plugin
        )
    raise DeliveryError(message, permanent=True, plugin=plugin)


def snippet(response: httpx.Response, limit: int = 200) -> str:
    """The start of a response body, for an error message."""
    return response.content[:limit].decode("utf-8", "replace").strip()


def human_duration(seconds: float) -> str:
    """``42s``, ``2m 05s``, ``1h 02m``."""
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    return f"{total // 3600}h {total % 3600 // 60:02d}m"
