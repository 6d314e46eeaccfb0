"""How a campaign will go, before it runs (``--dry-run``) or for what remains of it: when it
would finish and what it would cost.

The model is the dialer's own limits, whichever binds at each moment: the pace
(``calls_per_second``), the placements' share of the provider key's request budget, and the
live-call cap over the average length of a call (ring plus talk). Calls are dialled only while
their calling window is open where the person is, so the numbers are grouped by time zone and
time is walked forward a minute at a time, each open group sharing the throughput by its size.
First attempts only: retries (busy, no answer) come on top.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from orchestrator import windows
from orchestrator.windows import CallingWindow

__all__ = ["Estimate", "Limits", "estimate"]

#: How far ahead the walk looks before it says "not within".
HORIZON = timedelta(days=60)
STEP = timedelta(minutes=1)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The fleet's dialing limits the estimate applies."""

    calls_per_second: float
    max_live_calls: int
    #: Placements a second the key's request budget allows in the long run (None: no budget).
    budget_per_second: float | None = None


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """When the calls would all have been dialled and ended, and what they would cost."""

    calls: int
    calls_per_second: float
    #: Which limit sets the pace: ``pace``, ``budget`` or ``live_calls``.
    bound_by: str
    seconds: float | None
    finishes_at: datetime | None
    cost: float

    def to_json(self) -> dict[str, object]:
        """The JSON form the API answers with."""
        return {
            "calls": self.calls,
            "calls_per_second": round(self.calls_per_second, 4),
            "bound_by": self.bound_by,
            "seconds": None if self.seconds is None else round(self.seconds, 1),
            "finishes_at": None if self.finishes_at is None else self.finishes_at.isoformat(),
            "cost": round(self.cost, 2),
        }


def throughput(limits: Limits, call_seconds: float) -> tuple[float, str]:
    """Calls a second the fleet can start and finish, and the limit that sets it."""
    candidates = [("pace", limits.calls_per_second)]
    if limits.budget_per_second is not None:
        candidates.append(("budget", limits.budget_per_second))
    candidates.append(("live_calls", limits.max_live_calls / max(call_seconds, 1e-3)))
    bound, rate = min(candidates, key=lambda c: c[1])
    return rate, bound


def estimate(
    zones: Mapping[tuple[str, ...], int],
    *,
    limits: Limits,
    call_seconds: float,
    talk_seconds: float,
    price_per_minute: float,
    window: CallingWindow | None,
    start: datetime | None = None,
) -> Estimate:
    """The estimate for calls counted by their recipients' time zones (``zones``)."""
    calls = sum(zones.values())
    rate, bound = throughput(limits, call_seconds)
    cost = calls * talk_seconds / 60.0 * price_per_minute
    start = start or datetime.now(UTC)
    if calls == 0:
        return Estimate(
            calls=0, calls_per_second=rate, bound_by=bound, seconds=0.0, finishes_at=start,
            cost=0.0,
        )  # fmt: skip
    if window is None:
        seconds = calls / rate + call_seconds
        return Estimate(
            calls=calls, calls_per_second=rate, bound_by=bound, seconds=seconds,
            finishes_at=start + timedelta(seconds=seconds), cost=cost,
        )  # fmt: skip
    left = {group: float(n) for group, n in zones.items() if n and _knowable(window, group)}
    if not left:  # nobody's local time can be told: the window never opens for them
        return Estimate(
            calls=calls, calls_per_second=rate, bound_by=bound, seconds=None, finishes_at=None,
            cost=cost,
        )  # fmt: skip
    at = start
    step = STEP.total_seconds()
    while left and at - start < HORIZON:
        open_groups = [g for g in left if windows.is_open(window, g, at)]
        if open_groups:
            waiting = sum(left[g] for g in open_groups)
            budget = rate * step
            for group in open_groups:
                share = budget * left[group] / waiting
                if share >= left[group]:
                    # Done within this minute: the time it took, not the whole minute.
                    del left[group]
                else:
                    left[group] -= share
            if not left:
                done = waiting / rate
                finish = at + timedelta(seconds=min(done, step) + call_seconds)
                return Estimate(
                    calls=calls, calls_per_second=rate, bound_by=bound,
                    seconds=(finish - start).total_seconds(), finishes_at=finish, cost=cost,
                )  # fmt: skip
        at += STEP
    return Estimate(
        calls=calls, calls_per_second=rate, bound_by=bound, seconds=None, finishes_at=None,
        cost=cost,
    )  # fmt: skip


def _knowable(window: CallingWindow, group: tuple[str, ...]) -> bool:
    """Whether the window can be checked for numbers in ``group`` (zones known, or its own)."""
    return bool(group) or window.time_zone is not None


def zones_of(
    numbers: Mapping[str, int] | Counter[str], *, default: str | None
) -> Counter[tuple[str, ...]]:
    """Numbers (with how many calls each) counted by their time zones."""
    out: Counter[tuple[str, ...]] = Counter()
    for number, count in numbers.items():
        out[windows.zones_for(number, default=default)] += count
    return out
