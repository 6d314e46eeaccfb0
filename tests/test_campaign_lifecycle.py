"""A campaign's life in the store, on every connector: a budget that holds (live calls count at
their expected cost), settings changed in place (a raised budget resumes it), completion once
every call is final and its handlers are done, and progress in states that add up."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from orchestrator.model import CallStatus
from orchestrator.store import Store
from orchestrator.store.campaigns import CampaignSettings, budget_allows, call_cost
from tests.stores import FakeClock
from tests.test_campaigns import POOL, calls, finish, rules


def priced(**kw: object) -> CampaignSettings:
    """A minute costs 1.0 and a call is expected to last a minute until calls tell."""
    base: dict[str, object] = {
        "from_numbers": POOL,
        "price_per_minute": 1.0,
        "expected_call_minutes": 1.0,
    }
    return CampaignSettings.model_validate(base | kw)


async def test_live_calls_count_against_the_budget(store: Store) -> None:
    campaign = await store.create_campaign("capped", priced(budget=2.5))
    await store.import_rows(campaign["id"], calls(10))
    batch = await store.claim_batch("w", rules(), limit=10)
    # 0 spent + 2 live x 1.0 fits 2.5; a third would make 3.0.
    assert len(batch.claims) == 2
    assert (await store.claim_batch("w", rules(), limit=10)).claims == []
    row = await store.campaign(campaign["id"])
    assert row is not None and row["status"] == "active"  # waiting: live calls may end cheap
    for claim in batch.claims:
        await finish(store, claim, duration=60.0)
    claimed = await store.claim_batch("w", rules(), limit=10)
    assert claimed.claims == []  # 2.0 spent + one more call (1.0) would pass 2.5
    row = await store.campaign(campaign["id"])
    assert row is not None and row["status"] == "paused"
    assert row["reason"] == "budget reached: 2.00 of 2.5 spent"
    assert float(row["spent"]) <= 2.5
    [event] = claimed.events
    assert event.type == "campaign.budget_reached"
    assert event.data["campaign"] == campaign["id"] and event.data["spent"] == 2.0


async def test_the_expected_cost_is_the_campaigns_own_average(store: Store) -> None:
    campaign = await store.create_campaign("avg", priced(budget=100.0))
    assert call_cost(campaign) == 1.0  # the estimate, before any call ended
    await store.import_rows(campaign["id"], calls(3))
    first, second, third = (await store.claim_batch("w", rules(), limit=3)).claims
    await finish(store, first, duration=180.0)
    await finish(store, second, CallStatus.NO_ANSWER)  # no talk, no cost: still a call made
    await finish(store, third, CallStatus.BUSY, duration=0.0)
    row = await store.campaign(campaign["id"])
    assert row is not None and float(row["spent"]) == 3.0
    assert call_cost(row) == 1.0  # 180 s over three calls made
    assert budget_allows(row, live=96) and not budget_allows(row, live=97)


async def test_raising_the_budget_resumes_a_campaign_paused_for_it(store: Store) -> None:
    campaign = await store.create_campaign("raise", priced(budget=1.0))
    await store.import_rows(campaign["id"], calls(4))
    [claim] = (await store.claim_batch("w", rules(), limit=4)).claims
    await finish(store, claim, duration=60.0)
    assert (await store.claim_batch("w", rules(), limit=4)).claims == []
    row = await store.campaign(campaign["id"])
    assert row is not None and row["status"] == "paused"
    # A resume alone would be paused again at the next claim; a raised budget resumes it.
    changed = await store.set_campaign(campaign["id"], {"budget": 3.0, "priority": 5})
    assert changed is not None and changed["status"] == "active" and changed["reason"] is None
    assert float(changed["budget"]) == 3.0 and changed["priority"] == 5
    resumed = (await store.claim_batch("w", rules(), limit=4)).claims
    assert len(resumed) == 2  # 1.0 spent + 2 x 1.0 fits 3.0
    assert {c.attempt.priority for c in resumed} == {5}  # queued calls took the new priority


async def test_a_change_that_does_not_pay_for_a_call_leaves_it_paused(store: Store) -> None:
    campaign = await store.create_campaign("still", priced(budget=1.0))
    await store.import_rows(campaign["id"], calls(2))
    [claim] = (await store.claim_batch("w", rules(), limit=2)).claims
    await finish(store, claim, duration=60.0)
    await store.claim_batch("w", rules(), limit=2)
    changed = await store.set_campaign(campaign["id"], {"budget": 1.5})
    assert changed is not None and changed["status"] == "paused"
    assert await store.cancel_campaign(campaign["id"], reason="enough") is not None
    assert await store.set_campaign(campaign["id"], {"budget": 9.0}) is None


async def test_a_campaign_completes_when_every_call_is_final(store: Store) -> None:
    store.router = lambda event: []  # no handlers: nothing is left to deliver
    campaign = await store.create_campaign("done", CampaignSettings(from_numbers=POOL))
    assert await store.finish_campaigns() == []  # no rows yet: it waits for them
    await store.begin_import(campaign["id"])
    await store.import_rows(campaign["id"], calls(2))
    claims = (await store.claim_batch("w", rules(), limit=2)).claims
    for claim in claims:
        await finish(store, claim, duration=30.0)
    assert await store.finish_campaigns() == []  # the import is still under way
    await store.end_import(campaign["id"])
    [completed] = await store.finish_campaigns()
    assert completed.type == "campaign.completed"
    assert completed.data["campaign"] == campaign["id"]
    assert completed.data["calls"] == {"completed": 2}
    row = await store.campaign(campaign["id"])
    assert row is not None and row["status"] == "completed"
    assert await store.finish_campaigns() == []  # once
    # New rows make it active again.
    await store.import_rows(campaign["id"], calls(1, start=50))
    row = await store.campaign(campaign["id"])
    assert row is not None and row["status"] == "active"


async def test_a_call_not_final_or_a_pending_delivery_keeps_it_open(
    store: Store, clock: FakeClock
) -> None:
    store.router = lambda event: []
    campaign = await store.create_campaign("open", CampaignSettings(from_numbers=POOL))
    await store.import_rows(campaign["id"], calls(2))
    clock.advance(600)  # the import's lease has passed (it never said it ended)
    first, second = (await store.claim_batch("w", rules(), limit=2)).claims
    await finish(store, first, CallStatus.BUSY)
    assert await store.finish_campaigns() == []  # the second is live
    store.router = lambda event: ["retry"]  # a route: the events now wait for a handler
    await finish(store, second, CallStatus.BUSY)
    assert await store.finish_campaigns() == []  # a retry handler may queue it again
    for delivery in await store.claim_deliveries("retry", "w", limit=10, lease=30):
        await store.finish_delivery(delivery, "w")
    [completed] = await store.finish_campaigns()
    assert completed.data["calls"] == {"busy": 2}


async def test_progress_adds_up(store: Store, clock: FakeClock) -> None:
    campaign = await store.create_campaign("count", CampaignSettings(from_numbers=POOL))
    await store.import_rows(campaign["id"], calls(5))
    first, second, third = (await store.claim_batch("w", rules(), limit=3)).claims
    [busy] = [e for e in await _ended(store, first, CallStatus.BUSY)]
    await store.schedule_retry(busy, at=clock.now + 3600)
    await finish(store, second, duration=30.0)
    progress = await store.campaign_progress(campaign["id"])
    assert progress["by_state"] == {"queued": 2, "waiting_retry": 1, "live": 1, "completed": 1}
    assert sum(progress["by_state"].values()) == progress["calls"] == 5
    assert progress["attempts"] == 3  # made: the retry and the two never dialed are not
    holds = await store.queue_holds()
    assert holds == {"ready": 2, "paused_campaign": 0, "later": 1, "dead_letters": 0}
    await store.pause_campaign(campaign["id"], reason="lunch")
    holds = await store.queue_holds()
    assert holds["paused_campaign"] == 3 and holds["ready"] == 0
    await finish(store, third)


async def _ended(store: Store, claim: object, status: CallStatus) -> list[object]:
    from orchestrator.store import Claim, Webhook

    assert isinstance(claim, Claim)
    raw = f"{claim.attempt_id}:{status}".encode()
    result = await store.ingest(Webhook(raw=raw, status=status), token=claim.attempt.webhook_token)
    return [e for e in result.events if e.type == status.event_type]


async def test_a_change_is_a_merge_patch_validated_as_at_creation(store: Store) -> None:
    window = {"start": "09:00", "end": "17:00", "days": ["mon", "tue"]}
    campaign = await store.create_campaign("merge", priced(window=window, budget=5.0))
    changed = await store.set_campaign(campaign["id"], {"window": {"end": "18:00"}})
    assert changed is not None
    settings = json.loads(changed["settings"])
    assert settings["window"]["days"] == ["mon", "tue"]  # kept: nested objects merge
    assert settings["window"]["end"] == "18:00"
    changed = await store.set_campaign(campaign["id"], {"budget": None})
    assert changed is not None and changed["budget"] is None  # null removes it: no limit
    with pytest.raises(ValidationError):
        await store.set_campaign(campaign["id"], {"price_per_minute": 1e308})
    with pytest.raises(ValidationError):
        await store.set_campaign(campaign["id"], {"no_such_setting": 1})
    row = await store.campaign(campaign["id"])
    assert row is not None and json.loads(row["settings"])["window"]["end"] == "18:00"


async def test_an_operators_pause_outlives_the_last_call(store: Store) -> None:
    store.router = lambda event: []
    campaign = await store.create_campaign("hold", CampaignSettings(from_numbers=POOL))
    await store.import_rows(campaign["id"], calls(1))
    await store.end_import(campaign["id"])
    [claim] = (await store.claim_batch("w", rules(), limit=1)).claims
    await store.pause_campaign(campaign["id"], reason="legal hold")
    await finish(store, claim)
    assert await store.finish_campaigns() == []
    row = await store.campaign(campaign["id"])
    assert row is not None and (row["status"], row["reason"]) == ("paused", "legal hold")


async def test_a_late_retry_reopens_a_completed_campaign(store: Store) -> None:
    store.router = lambda event: []
    campaign = await store.create_campaign("late", CampaignSettings(from_numbers=POOL))
    await store.import_rows(campaign["id"], calls(1))
    await store.end_import(campaign["id"])
    [claim] = (await store.claim_batch("w", rules(), limit=1)).claims
    [busy] = await _ended(store, claim, CallStatus.BUSY)
    assert len(await store.finish_campaigns()) == 1
    # A retry delivery that went dead is replayed after the campaign completed.
    assert await store.schedule_retry(busy, at=0.0) is not None
    row = await store.campaign(campaign["id"])
    assert row is not None and row["status"] == "active"
    assert len((await store.claim_batch("w", rules(), limit=1)).claims) == 1


async def test_one_import_ending_leaves_another_under_way(store: Store) -> None:
    store.router = lambda event: []
    campaign = await store.create_campaign("two", CampaignSettings(from_numbers=POOL))
    await store.begin_import(campaign["id"])
    await store.begin_import(campaign["id"])
    await store.import_rows(campaign["id"], calls(1))
    [claim] = (await store.claim_batch("w", rules(), limit=1)).claims
    await finish(store, claim)
    await store.end_import(campaign["id"])
    assert await store.finish_campaigns() == []  # the second import may still send rows
    await store.end_import(campaign["id"])
    assert len(await store.finish_campaigns()) == 1
