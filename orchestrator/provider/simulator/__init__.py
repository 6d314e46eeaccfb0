"""A Magpipe simulator that imitates the provider faithfully, quirks included: the server
(:mod:`.server`), its pure model of calls, outcomes and faults (:mod:`.model`), the record routes
(:mod:`.records`), the provider-shaped answers (:mod:`.answers`) and its command line
(:mod:`.cli`). When the simulator and the real provider differ, the provider is right."""

from orchestrator.provider.simulator.model import (
    DEFAULT_OUTCOME_MIX,
    CallRecord,
    Dialect,
    Faults,
    Outcome,
    RawAnswer,
    Script,
    SimulatorConfig,
    WebhookRecord,
)
from orchestrator.provider.simulator.server import (
    GET_CALL_PATH,
    LIST_CALLS_PATH,
    PLACE_CALL_PATH,
    SIGNATURE_HEADER,
    TERMINATE_CALL_PATH,
    Simulator,
    build_app,
    is_valid_e164,
    sign,
)

__all__ = [
    "DEFAULT_OUTCOME_MIX",
    "GET_CALL_PATH",
    "LIST_CALLS_PATH",
    "PLACE_CALL_PATH",
    "SIGNATURE_HEADER",
    "TERMINATE_CALL_PATH",
    "CallRecord",
    "Dialect",
    "Faults",
    "Outcome",
    "RawAnswer",
    "Script",
    "Simulator",
    "SimulatorConfig",
    "WebhookRecord",
    "build_app",
    "is_valid_e164",
    "sign",
]
