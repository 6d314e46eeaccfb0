"""The provider's limits in the store, on every connector: the key's request budget spent by
claims and look-ups alike, each within its share, and a placement the provider certainly failed
(its carrier overrun) tried again a bounded number of times, never lost."""

from __future__ import annotations

from orchestrator import exceptions
from orchestrator.model import CallStatus
from orchestrator.store import Pacing, Store
from orchestrator.store.ledger import RequestBudget
from tests.stores import FakeClock
from tests.test_campaigns import calls, rules

FREE = Pacing(rate=1000.0, burst=1000.0)  # the look-ups' own pace: out of the way


async def test_claims_spend_the_placements_share_of_the_budget(
    store: Store, clock: FakeClock
) -> None:
    store.budget = RequestBudget(per_minute=100, per_hour=100_000, placements=0.6)
    for new in calls(80):
        await store.create_call(new)
    claimed = 0
    for _ in range(60):  # a minute, a second at a time
        batch = await store.claim_batch("w", rules(max_live=1000), limit=100)
        claimed += len(batch.claims)
        clock.advance(1.0)
    # 60 a minute for placements: a full bucket (6) plus what refills in 60 s (54).
    assert 55 <= claimed <= 60, claimed
    left = await store.request_budget()
    assert set(left) == {"placements", "lookups"} and left["lookups"]["minute"] == 4.0


async def test_look_ups_spend_theirs_and_leave_the_placements_alone(
    store: Store, clock: FakeClock
) -> None:
    store.budget = RequestBudget(per_minute=100, per_hour=100_000, placements=0.6)
    taken = 0
    for _ in range(100):
        if await store.take_lookup(FREE) is None:
            taken += 1
    assert taken == 4  # the look-ups' burst: a tenth of their 40 a minute
    wait = await store.take_lookup(FREE)
    assert wait is not None and 0 < wait <= 60 / 36
    for new in calls(6):
        await store.create_call(new)
    batch = await store.claim_batch("w", rules(max_live=100), limit=10)
    assert len(batch.claims) == 6  # the placements' burst is untouched


async def test_no_budget_no_limit(store: Store) -> None:
    assert store.budget is None and await store.request_budget() == {}


async def test_a_carrier_failure_is_tried_again_and_ends_only_after_the_bound(
    store: Store, clock: FakeClock
) -> None:
    call, _ = await store.create_call(calls(1)[0])
    error = exceptions.PlacementFailed("Failed to start PSTN leg")
    waits = []
    for _ in range(3):
        [claim] = (await store.claim_batch("w", rules(), limit=1)).claims
        wait, events = await store.placement_failed(
            claim.attempt_id, error, backoff=2.0, max_failures=4
        )
        assert events == [] and wait is not None
        waits.append(wait)
        clock.advance(wait)
    assert waits == [2.0, 4.0, 8.0]  # doubling
    found = await store.get_call(call.id)
    assert found is not None and found[0].status is CallStatus.QUEUED
    [attempt] = found[1]
    assert attempt.failures == 3 and not attempt.ambiguous and attempt.number == 1
    [claim] = (await store.claim_batch("w", rules(), limit=1)).claims
    wait, events = await store.placement_failed(
        claim.attempt_id, error, backoff=2.0, max_failures=4
    )
    assert wait is None
    [failed] = events
    assert failed.type == "call.failed" and failed.error is not None
    assert failed.error["code"] == "PLACEMENT_FAILED" and "4 times" in failed.error["message"]
    found = await store.get_call(call.id)
    assert found is not None and found[0].status is CallStatus.FAILED
    assert found[0].reason == "PLACEMENT_FAILED"
    assert await store.live_count() == 0  # its slot is free


async def test_a_placement_after_failures_clears_the_error_and_keeps_the_count(
    store: Store, clock: FakeClock
) -> None:
    call, _ = await store.create_call(calls(1)[0])
    [claim] = (await store.claim_batch("w", rules(), limit=1)).claims
    error = exceptions.PlacementFailed("Failed to start PSTN leg")
    wait, _ = await store.placement_failed(claim.attempt_id, error, backoff=1.0, max_failures=5)
    assert wait is not None
    clock.advance(wait)
    [claim] = (await store.claim_batch("w", rules(), limit=1)).claims
    await store.placed(claim.attempt_id, provider_call_id="P1", provider_status="initiated")
    [attempt] = await store.attempts_of(call.id)
    assert attempt.error_code is None and attempt.failures == 1
