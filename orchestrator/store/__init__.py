"""The store: every durable change of a call, one transaction each, over a connector.

The store is the source of truth for our work. :class:`Store` is assembled from parts, each one
concept (a newcomer looking for a method finds it by what it does):

- :mod:`orchestrator.store.ledger`: how a change is written (attempt, call, event and outbox
  rows, one lock order), the one place events come from;
- :mod:`orchestrator.store.claims`: claims under the fleet's limits, and what became of a
  placement (placed, requeued, ambiguous, refused);
- :mod:`orchestrator.store.lookups`: look-ups at the provider (when due, what a finding does);
- :mod:`orchestrator.store.campaigns`: campaigns and their imports;
- :mod:`orchestrator.store.outbox`: deliveries (claimed with leases, retried, dead-lettered);
- :mod:`orchestrator.store.facade`: the assembled :class:`Store`: calls, webhooks, timers;
- :mod:`orchestrator.store.actions`: what a handler may do, backed by the store.

None of them writes SQL: they run the named queries of :mod:`orchestrator.connectors`.
"""

from __future__ import annotations

from orchestrator.store.claims import (
    DIAL_BUCKET,
    Claim,
    ClaimBatch,
    ClaimRules,
    Pacing,
    Throttled,
)
from orchestrator.store.facade import Ingest, IngestResult, Store, Webhook
from orchestrator.store.ledger import WATCHDOG, CheckTiming, Clock, Router
from orchestrator.store.lookups import LOOKUP_BUCKET, Applied, Finding
from orchestrator.store.outbox import EXHAUSTED, Delivery
from orchestrator.store.rows import Attempt, Call, DeliveryRecord

__all__ = [
    "DIAL_BUCKET",
    "EXHAUSTED",
    "LOOKUP_BUCKET",
    "WATCHDOG",
    "Applied",
    "Attempt",
    "Call",
    "CheckTiming",
    "Claim",
    "ClaimBatch",
    "ClaimRules",
    "Clock",
    "Delivery",
    "DeliveryRecord",
    "Finding",
    "Ingest",
    "IngestResult",
    "Pacing",
    "Router",
    "Store",
    "Throttled",
    "Webhook",
]
