"""The control API (``api.listen``): queue and follow calls, run campaigns, keep the
do-not-call list, replay dead letters and read the fleet's status. The application and its
authentication are in :mod:`.server`; the routes, by resource, in :mod:`.calls`,
:mod:`.campaigns` and :mod:`.operations`; what they share in :mod:`.common`."""

from orchestrator.api.calls import call_json
from orchestrator.api.server import ControlApi

__all__ = ["ControlApi", "call_json"]
