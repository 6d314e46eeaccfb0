"""The handler plugin contract and the registry of installed plugin types.

Plugin types are found through the ``orchestrator.plugins`` entry-point group; the built-ins in
``plugins/`` register there exactly as a third-party package does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar, Protocol, runtime_checkable

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from orchestrator import exceptions
from orchestrator.model import Event

ENTRY_POINT_GROUP = "orchestrator.plugins"


@dataclass(frozen=True, kw_only=True)
class Context:
    """What a handler gets besides the event: who it is, which try this is, a logger bound
    to the call and event, and the daemon's shared HTTP client."""

    handler: str
    delivery_id: str
    attempt: int
    log: structlog.typing.FilteringBoundLogger
    http: httpx.AsyncClient


@runtime_checkable
class Handler(Protocol):
    """Anything with ``async def handle(event, ctx)``. Raising means "try again later"."""

    async def handle(self, event: Event, ctx: Context) -> None:
        """Act on one event; raise to have it retried with backoff."""
        ...


class Options(BaseModel):
    """Base of every plugin's options model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginType(Protocol):
    """A plugin type: a class with a type name and an options model, built per instance."""

    type_name: ClassVar[str]
    options_model: ClassVar[type[Options]]

    def __call__(self, name: str, options: Any) -> Handler: ...


class DeliveryError(exceptions.OrchestratorError):
    """A handler's delivery failed; ``retry_after`` asks for a minimum wait before retrying."""

    code = "DELIVERY_FAILED"

    def __init__(
        self, message: str, *, retry_after: float | None = None, plugin: str | None = None
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.retry_after = retry_after


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


def build(name: str, spec: Mapping[str, Any], types: Mapping[str, PluginType]) -> Handler:
    """Instantiate the handler ``name`` from its config (``use`` + the plugin's options)."""
    kind = spec.get("use")
    if not isinstance(kind, str) or kind not in types:
        known = ", ".join(sorted(types)) or "none"
        raise exceptions.ConfigError(
            f"plugins.{name}.use: unknown plugin type {kind!r} (installed: {known})", plugin=name
        )
    plugin_type = types[kind]
    options = {k: v for k, v in spec.items() if k not in ("use", "delivery")}
    try:
        parsed = plugin_type.options_model.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(
            f"plugins.{name}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise exceptions.ConfigError(problems, plugin=name) from None
    return plugin_type(name, parsed)
