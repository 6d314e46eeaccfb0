"""Prometheus metrics of one daemon, on ``GET /metrics`` of the control API.

Counters and histograms are kept by the parts that see the events (dialer, intake, delivery
workers); the gauges that describe the whole store (live calls, queue depth, paused dialing)
are read from it at scrape time, so every daemon of a fleet reports the fleet's state. Each
daemon has its own registry: nothing is global.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# Provider answers take tens of ms to seconds; handlers from ms to their timeout.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The daemon's metrics and the registry that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events = Counter(
            "orchestrator_events_total",
            "Events this daemon wrote and published (intake, dialer, timers), by type",
            ["type"],
            registry=r,
        )
        self.placements = Counter(
            "orchestrator_placements_total",
            "Placement requests to the provider, by outcome (placed or the error code)",
            ["outcome"],
            registry=r,
        )
        self.provider_latency = Histogram(
            "orchestrator_provider_request_seconds",
            "Time the provider took to answer a placement",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.webhooks = Counter(
            "orchestrator_webhooks_total",
            "Webhook deliveries received, by HTTP status answered",
            ["status"],
            registry=r,
        )
        self.handler_latency = Histogram(
            "orchestrator_handler_seconds",
            "Time a handler took per delivery",
            ["handler"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.handler_failures = Counter(
            "orchestrator_handler_failures_total",
            "Failed deliveries, by handler and what became of them (retry, dead, gone)",
            ["handler", "outcome"],
            registry=r,
        )
        self.lookups = Counter(
            "orchestrator_lookups_total",
            "Requests about calls to the provider's records, by endpoint (get-call, "
            "list-calls, terminate-call) and outcome",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.settled = Counter(
            "orchestrator_calls_settled_total",
            "Calls brought to a terminal status, by what told us (webhook, lookup, watchdog, "
            "dialer, cancel)",
            ["source"],
            registry=r,
        )
        self.hangups = Counter(
            "orchestrator_hangups_total",
            "Calls hung up at the provider (watchdog, campaign cancel), by outcome",
            ["outcome"],
            registry=r,
        )
        self.redials = Counter(
            "orchestrator_redials_total",
            "Ambiguous placements the provider had no record of, queued to be dialed again",
            registry=r,
        )
        self.webhook_mismatches = Counter(
            "orchestrator_webhook_mismatches_total",
            "Deployed webhooks whose call record and number name different calls (settled by "
            "look-ups instead)",
            registry=r,
        )
        self.live_calls = Gauge(
            "orchestrator_live_calls", "Calls holding a concurrency slot (fleet)", registry=r
        )
        self.queue_depth = Gauge(
            "orchestrator_queue_depth", "Attempts waiting to be dialled (fleet)", registry=r
        )
        self.dialing_paused = Gauge(
            "orchestrator_dialing_paused",
            "1 while the fleet's dialing is paused (rate limit, balance, credentials)",
            registry=r,
        )
        self.request_budget = Gauge(
            "orchestrator_request_budget_left",
            "Requests left of the provider key's budget (fleet), by kind and window",
            ["kind", "window"],
            registry=r,
        )
        self.pace_factor = Gauge(
            "orchestrator_pace_factor",
            "How far the pace is slowed after the provider's 429s (1: full speed)",
            registry=r,
        )

    async def render(self, state: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
        """The exposition text, after reading the store's gauges through ``state``."""
        current = await state()
        self.live_calls.set(current.get("live", 0))
        self.queue_depth.set(current.get("queued", 0))
        self.dialing_paused.set(1 if current.get("paused") else 0)
        self.pace_factor.set(current.get("factor", 1.0))
        for kind, windows in (current.get("budget") or {}).items():
            for window, left in windows.items():
                self.request_budget.labels(kind, window).set(left)
        return bytes(generate_latest(self.registry))
