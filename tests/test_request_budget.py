"""The provider key's request budget, end to end: the simulator enforces N requests a minute
(429 past it), the daemon dials a few hundred calls of the deployed provider (unanswered calls
send no webhook, so look-ups run busy) under ``magpipe.rate_limit`` of the same N. The
provider never has to refuse a request, the budget is used, and placements keep their share
while look-ups are busy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemons import (
    DaemonConfig,
    dialed_once,
    queue_calls,
    reap_fixture,
    start_daemon_async,
    start_simulator,
    wait_all_terminal,
)

pytestmark = pytest.mark.slow

_reap = reap_fixture()

PER_MINUTE = 240
PLACEMENTS = 0.6
SECRET = "whsec_budget_test"


def busiest(times: list[float], window: float = 60.0) -> int:
    """The most of ``times`` in any ``window`` seconds."""
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while times[start] <= at - window:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_the_budget_holds_and_placements_keep_their_share(tmp_path: Path) -> None:
    cfg = DaemonConfig(
        simulator_url="",
        store_path=tmp_path / "state.db",
        webhook_secret=SECRET,
        max_live_calls=30,
        calls_per_second=100.0,
        max_call_duration="20s",
        rate_limit={"per_minute": PER_MINUTE, "per_hour": 100_000, "placements": PLACEMENTS},
        # Look-ups as eager as can be: only the budget holds them back.
        reconcile={"after": "0.5s", "every": "0.5s", "ambiguous_grace": "2s",
                   "max_per_minute": 100_000},
    )  # fmt: skip
    sim = start_simulator(
        tmp_path,
        dialect="deployed",
        webhook_url=f"http://127.0.0.1:{cfg.webhook_port}/webhooks/magpipe",
        webhook_secret=SECRET,
        time_scale=0.01,
        max_concurrent=60,
        rate_limit=PER_MINUTE,
        seed=21,
    )
    cfg.simulator_url = sim.url
    daemon = await start_daemon_async(tmp_path, cfg)
    # More than the placements' share of a minute: the run lasts long enough to test it.
    numbers = [f"+1415555{5000 + n:04d}" for n in range(200)]
    async with daemon.async_api() as api:
        queued = await queue_calls(api, numbers)
        calls = await wait_all_terminal(api, queued, daemon, timeout=240)
    stats = sim.stats()
    requests = sim.requests()
    placed = [r["at"] for r in requests if r["endpoint"] == "initiate-bridged-call"]
    lookups = [r["at"] for r in requests if r["endpoint"] != "initiate-bridged-call"]

    assert stats["rate_limited"] == 0, stats  # the provider never had to refuse one
    assert stats["busiest_minute"] <= PER_MINUTE
    assert busiest(placed + lookups) <= PER_MINUTE
    # The budget was used (not a test that cannot fail), and each kind kept to its share.
    assert busiest(placed + lookups) >= PER_MINUTE * 0.6, busiest(placed + lookups)
    assert busiest(lookups) <= PER_MINUTE * (1 - PLACEMENTS) + 1
    assert busiest(placed) <= PER_MINUTE * PLACEMENTS + 1
    # Placements kept their share while look-ups were busy.
    assert busiest(placed) >= PER_MINUTE * PLACEMENTS * 0.6, busiest(placed)
    # And every call ended, each person dialed once.
    assert set(dialed_once(sim.calls())) == set(numbers)
    final = {c["status"] for c in calls.values()}
    assert final <= {"completed", "busy", "no_answer", "failed", "canceled"}, final
