"""magpipe-orchestrator: places outbound AI-agent calls through Magpipe and follows them.

The public API is what ``__all__`` names; everything else is internal and may change. The names
are imported when first used (PEP 562), so that ``import orchestrator`` (and the command line's
``--help``) does not import pydantic, httpx and the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.exceptions import (
        AmbiguousPlacement,
        ConfigError,
        DeliveryError,
        HandlerGone,
        InputError,
        MagpipeError,
        OrchestratorError,
        ProviderRefused,
        ProviderUnavailable,
        Retry,
    )
    from orchestrator.model import CallRef, Event, NewCall
    from orchestrator.plugin import Context, Handler, Options
    from orchestrator.provider.client import CallRequest, MagpipeClient, PlacedCall

__version__ = "0.1.0"

#: Where each public name lives.
_HOMES = {
    "Config": "orchestrator.config",
    "AmbiguousPlacement": "orchestrator.exceptions",
    "ConfigError": "orchestrator.exceptions",
    "InputError": "orchestrator.exceptions",
    "MagpipeError": "orchestrator.exceptions",
    "OrchestratorError": "orchestrator.exceptions",
    "ProviderRefused": "orchestrator.exceptions",
    "ProviderUnavailable": "orchestrator.exceptions",
    "Retry": "orchestrator.exceptions",
    "CallRef": "orchestrator.model",
    "Event": "orchestrator.model",
    "NewCall": "orchestrator.model",
    "Context": "orchestrator.plugin",
    "DeliveryError": "orchestrator.exceptions",
    "Handler": "orchestrator.plugin",
    "HandlerGone": "orchestrator.exceptions",
    "Options": "orchestrator.plugin",
    "CallRequest": "orchestrator.provider.client",
    "MagpipeClient": "orchestrator.provider.client",
    "PlacedCall": "orchestrator.provider.client",
}

__all__ = [
    "AmbiguousPlacement",
    "CallRef",
    "CallRequest",
    "Config",
    "ConfigError",
    "Context",
    "DeliveryError",
    "Event",
    "Handler",
    "HandlerGone",
    "InputError",
    "MagpipeClient",
    "MagpipeError",
    "NewCall",
    "Options",
    "OrchestratorError",
    "PlacedCall",
    "ProviderRefused",
    "ProviderUnavailable",
    "Retry",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
