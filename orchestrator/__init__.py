"""magpipe-orchestrator: places outbound AI-agent calls through Magpipe and follows them.

The public API is what ``__all__`` names; everything else is internal and may change.
"""

from __future__ import annotations

from orchestrator.config import Config
from orchestrator.exceptions import (
    AmbiguousPlacement,
    ConfigError,
    InputError,
    MagpipeError,
    OrchestratorError,
    ProviderRefused,
    ProviderUnavailable,
    Retry,
)
from orchestrator.model import CallRef, Event, NewCall
from orchestrator.plugin import Context, DeliveryError, Handler, HandlerGone, Options
from orchestrator.provider.client import CallRequest, MagpipeClient, PlacedCall

__version__ = "0.1.0"

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
