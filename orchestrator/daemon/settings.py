"""Every daemon part's settings, built from the config in one place.

The config (:mod:`orchestrator.config`) is what a user writes; the classes here are what each
part is handed, with values the config leaves to the daemon resolved (the webhook URL the
intake bound, the do-not-call list it loaded, the lease it holds work for). Nothing else reads
the config to set a part up, so a setting added to the config is wired in here or nowhere.
"""

from __future__ import annotations

from orchestrator import config, dnc
from orchestrator.api.dry_run import Plan
from orchestrator.daemon.dialer import DialerParams
from orchestrator.daemon.reconciler import ReconcilerParams
from orchestrator.estimate import Limits
from orchestrator.provider.client import MagpipeClient
from orchestrator.store.ledger import CheckTiming, RequestBudget

__all__ = [
    "check_timing",
    "dialer_params",
    "estimate_plan",
    "magpipe_client",
    "reconciler_params",
    "request_budget",
]


def check_timing(cfg: config.Config) -> CheckTiming | None:
    """When the store schedules look-ups at the provider, or None when they are off."""
    lookups = cfg.magpipe.reconcile
    if not lookups.enabled:
        return None
    return CheckTiming(
        after=lookups.after,
        every=lookups.every,
        # A placement's answer may take the client's whole timeout to come back.
        ambiguous_grace=max(lookups.ambiguous_grace, cfg.magpipe.timeout),
        # The last look-up (and hang-up) before the watchdog ends a call regardless.
        final_grace=max(30.0, 4 * cfg.magpipe.timeout),
    )


def request_budget(cfg: config.Config) -> RequestBudget:
    """The provider key's request budget the store keeps for the fleet."""
    limit = cfg.magpipe.rate_limit
    return RequestBudget(
        per_minute=limit.per_minute, per_hour=limit.per_hour, placements=limit.placements
    )


def estimate_plan(cfg: config.Config) -> Plan:
    """What a dry-run import's estimate applies: the pace, the placements' share of the request
    budget in the long run (the hour's), the live-call cap, the default window and zone."""
    budget = request_budget(cfg).long_run_rate("dial")
    return Plan(
        limits=Limits(
            calls_per_second=cfg.dialer.calls_per_second,
            max_live_calls=cfg.dialer.max_live_calls,
            budget_per_second=budget,
        ),
        window=cfg.dialer.window,
        default_time_zone=cfg.dialer.default_time_zone,
    )


def magpipe_client(cfg: config.Config) -> MagpipeClient:
    """The provider's client, with the config's token, address and timeout."""
    return MagpipeClient(
        token=cfg.magpipe.token,
        base_url=cfg.magpipe.base_url,
        timeout=cfg.magpipe.timeout,
        send_aliases=cfg.magpipe.send_aliases,
    )


def dialer_params(
    cfg: config.Config, *, webhook_base: str, lease: float, do_not_call: dnc.DoNotCall | None
) -> DialerParams:
    """The dialer's settings; ``webhook_base`` is where the provider reaches our intake."""
    dialer = cfg.dialer
    return DialerParams(
        max_live_calls=dialer.max_live_calls,
        calls_per_second=dialer.calls_per_second,
        max_call_duration=dialer.max_call_duration,
        webhook_base=webhook_base,
        agent_id=cfg.defaults.agent_id,
        lease=lease,
        max_live_per_caller_id=dialer.max_live_per_caller_id,
        max_attempts_per_person_per_day=dialer.max_attempts_per_person_per_day,
        window=dialer.window,
        default_time_zone=dialer.default_time_zone,
        do_not_call=do_not_call,
        balance_probe=dialer.balance_probe,
        unauthorized_probe=dialer.unauthorized_probe,
        max_placement_failures=dialer.max_placement_failures,
        placement_failure_backoff=dialer.placement_failure_backoff,
    )


def reconciler_params(cfg: config.Config) -> ReconcilerParams:
    """The reconciler's budget and whether it hangs up overdue calls."""
    return ReconcilerParams(
        max_per_minute=cfg.magpipe.reconcile.max_per_minute,
        hangup_on_timeout=cfg.dialer.hangup_on_timeout,
    )
