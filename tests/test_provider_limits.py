"""The provider's limits, part by part: what a request budget lets through in any window, the
``X-RateLimit-*`` headers read, and the simulator enforcing a budget when asked."""

from __future__ import annotations

import httpx

from orchestrator.provider import client
from orchestrator.provider.simulator.limits import KeyBudget
from orchestrator.store.ledger import RequestBudget
from tests.conftest import StartSimulator

FROM = "+16045551234"


def test_each_window_never_lets_more_than_its_share_through() -> None:
    budget = RequestBudget(per_minute=100, per_hour=1000, placements=0.6)
    for kind, share in (("dial", 0.6), ("lookup", 0.4)):
        minute, hour = budget.windows(kind)
        assert minute.name == f"budget:{kind}:minute" and hour.name == f"budget:{kind}:hour"
        # A full bucket at the start of a window plus what refills in it: the share, no more.
        assert abs(minute.burst + minute.rate * 60 - 100 * share) < 1e-9
        assert abs(hour.burst + hour.rate * 3600 - 1000 * share) < 1e-9
        assert minute.burst >= 1 and hour.burst >= 1


def test_the_budget_reset_is_read_only_when_it_is_spent() -> None:
    now = 1_000_000_000.0
    spent = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(now + 30)}
    assert client.budget_reset(spent, now=now) == now + 30
    assert client.budget_reset({**spent, "x-ratelimit-reset": "12"}, now=now) == now + 12
    assert client.budget_reset({**spent, "x-ratelimit-remaining": "3"}, now=now) is None
    assert client.budget_reset({}, now=now) is None  # as deployed: no such headers
    assert client.budget_reset({**spent, "x-ratelimit-reset": "soon"}, now=now) is None
    assert client.budget_reset({**spent, "x-ratelimit-reset": "inf"}, now=now) is None
    assert client.budget_reset({**spent, "x-ratelimit-reset": str(now + 10**6)}, now=now) == (
        now + 3600
    )  # a reset absurdly far: an hour at most


def test_the_simulators_budget_is_a_sliding_minute() -> None:
    clock = [100.0]
    budget = KeyBudget(2, clock=lambda: clock[0])
    assert budget.take() is None and budget.take() is None
    assert budget.take() == 60.0 and budget.limited == 1
    assert budget.headers()["X-RateLimit-Remaining"] == "0"
    clock[0] = 160.5
    assert budget.take() is None and budget.busiest == 2


async def test_the_simulator_answers_429_past_its_budget(start_simulator: StartSimulator) -> None:
    sim = await start_simulator(rate_limit=2)
    async with client.MagpipeClient(token="sim-token", base_url=sim.url) as magpipe:
        await magpipe.place_call(client.CallRequest(to="+14155550101", from_=FROM))
        assert magpipe.exhausted_until is None
        await magpipe.place_call(client.CallRequest(to="+14155550102", from_=FROM))
        assert magpipe.exhausted_until is not None  # the answer said: none left
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            sim.url + client.PLACE_CALL_PATH,
            json={"phone_number": "+14155550103", "caller_number": FROM},
            headers={"Authorization": "Bearer sim-token"},
        )
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
    assert answer.headers["X-RateLimit-Remaining"] == "0"
    assert sim.stats()["rate_limited"] == 1
