"""Campaigns in the store, on every connector: bulk imports, fair share, caller-id pools, the
daily cap, the screen (windows, do-not-call), budgets, pause/resume/cancel and the attempt cap."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from orchestrator import exceptions
from orchestrator.model import CallStatus, NewCall
from orchestrator.store import Claim, Store, Webhook
from orchestrator.store.campaigns import CampaignSettings, RowError
from orchestrator.store.claims import Admit, ClaimRules, Defer, Refuse, Screening
from tests.stores import T0, FakeClock

POOL = ("+16045551234", "+16045551235")


def calls(n: int, start: int = 0) -> list[NewCall]:
    return [NewCall(to=f"+1415555{start + i:04d}", from_="", metadata={"row": i}) for i in range(n)]


def rules(**kw: Any) -> ClaimRules:
    return ClaimRules(max_live=kw.pop("max_live", 100), lease=30, watchdog_after=600, **kw)


async def finish(store: Store, claim: Claim, status: CallStatus = CallStatus.COMPLETED,
                 duration: float | None = None) -> None:  # fmt: skip
    raw = f"{claim.attempt_id}:{status}".encode()
    await store.ingest(
        Webhook(raw=raw, status=status, duration=duration), token=claim.attempt.webhook_token
    )


async def test_import_queues_rows_in_bulk_and_records_bad_rows(store: Store) -> None:
    campaign = await store.create_campaign(
        "spring", CampaignSettings(from_numbers=POOL, purpose="reminder", agent_id="agent-1")
    )
    await store.import_rows(
        campaign["id"], calls(3), [RowError(line=4, reason="invalid number: +1")]
    )
    await store.import_rows(campaign["id"], calls(2, start=10))
    row = await store.campaign(campaign["id"])
    assert row is not None and (row["rows_total"], row["rows_invalid"]) == (6, 1)
    assert await store.campaign_progress(campaign["id"]) == {
        "calls": 5,
        "by_status": {"queued": 5},
        "by_state": {"queued": 5},
        "attempts": 0,  # none made yet: a queued attempt is not one
    }
    [error] = await store.campaign_errors(campaign["id"])
    assert (error["line"], error["reason"]) == (4, "invalid number: +1")
    batch = await store.claim_batch("w", rules(), limit=10)
    assert len(batch.claims) == 5
    claim = batch.claims[0]
    assert claim.call.purpose == "reminder" and claim.call.agent_id == "agent-1"
    assert claim.call.campaign == campaign["id"] and claim.attempt.from_number in POOL


async def test_each_import_keeps_its_own_refused_lines(store: Store) -> None:
    campaign = await store.create_campaign("twice", CampaignSettings(from_numbers=POOL))
    first = await store.begin_import(campaign["id"])
    await store.import_rows(
        campaign["id"], calls(1), [RowError(line=3, reason="first file")], import_no=first
    )
    second = await store.begin_import(campaign["id"])
    await store.import_rows(
        campaign["id"],
        calls(1, start=10),
        [RowError(line=3, reason="second file"), RowError(line=5, reason="second file")],
        import_no=second,
    )
    assert (first, second) == (1, 2)
    errors = await store.campaign_errors(campaign["id"])
    assert [(e["import_no"], e["line"], e["reason"]) for e in errors] == [
        (1, 3, "first file"),
        (2, 3, "second file"),
        (2, 5, "second file"),
    ]
    page = await store.campaign_errors(campaign["id"], after=(2, 3))
    assert [(e["import_no"], e["line"]) for e in page] == [(2, 5)]
    with pytest.raises(exceptions.InputError):
        await store.begin_import("no-such-campaign")


async def test_campaigns_share_the_dialer_by_weight(store: Store) -> None:
    big = await store.create_campaign("big", CampaignSettings(from_numbers=POOL, share=3))
    small = await store.create_campaign("small", CampaignSettings(from_numbers=POOL, share=1))
    await store.import_rows(big["id"], calls(40))
    await store.import_rows(small["id"], calls(40, start=100))
    batch = await store.claim_batch("w", rules(), limit=20)
    share = Counter(c.call.campaign for c in batch.claims)
    assert share == {big["id"]: 15, small["id"]: 5}


async def test_priority_first_then_fairness(store: Store) -> None:
    urgent = await store.create_campaign("urgent", CampaignSettings(from_numbers=POOL, priority=5))
    normal = await store.create_campaign("normal", CampaignSettings(from_numbers=POOL))
    await store.import_rows(normal["id"], calls(5))
    await store.import_rows(urgent["id"], calls(3, start=50))
    batch = await store.claim_batch("w", rules(), limit=4)
    assert [c.call.campaign for c in batch.claims] == [urgent["id"]] * 3 + [normal["id"]]


async def test_caller_id_pool_spreads_and_caps_live_calls(store: Store) -> None:
    campaign = await store.create_campaign("pool", CampaignSettings(from_numbers=POOL))
    await store.import_rows(campaign["id"], calls(10))
    batch = await store.claim_batch("w", rules(per_from=2), limit=10)
    assert Counter(c.attempt.from_number for c in batch.claims) == {POOL[0]: 2, POOL[1]: 2}
    assert all(c.call.from_number == c.attempt.from_number for c in batch.claims)
    assert (await store.claim_batch("w", rules(per_from=2), limit=10)).claims == []
    await finish(store, batch.claims[0])
    again = await store.claim_batch("w", rules(per_from=2), limit=10)
    assert [c.attempt.from_number for c in again.claims] == [batch.claims[0].attempt.from_number]


async def test_daily_cap_per_person_defers(store: Store, clock: FakeClock) -> None:
    await store.create_call(NewCall(to="+14155550100", from_=POOL[0]))
    first = await store.claim_batch("w", rules(daily_cap=1), limit=1)
    await finish(store, first.claims[0], CallStatus.BUSY)
    await store.create_call(NewCall(to="+14155550100", from_=POOL[0]))
    clock.advance(60)
    assert (await store.claim_batch("w", rules(daily_cap=1), limit=1)).claims == []
    clock.advance(86400)
    assert len((await store.claim_batch("w", rules(daily_cap=1), limit=1)).claims) == 1


async def test_screen_defers_and_refuses(store: Store, clock: FakeClock) -> None:
    for n in range(3):
        await store.create_call(NewCall(to=f"+141555501{n:02d}", from_=POOL[0]))
    decided: dict[str, Screening] = {
        "+14155550100": Defer(until=T0 + 3600, reason="window closed"),
        "+14155550101": Refuse(code="DO_NOT_CALL", message="listed"),
    }

    def screen(call: Any, attempt: Any, campaign: Any, now: float) -> Screening:
        return decided.get(attempt.to_number, Admit())

    batch = await store.claim_batch("w", rules(screen=screen), limit=10)
    assert [c.call.to_number for c in batch.claims] == ["+14155550102"]
    assert [(e.type, (e.error or {}).get("code")) for e in batch.events] == [
        ("call.rejected", "DO_NOT_CALL")
    ]
    assert (await store.claim_batch("w", rules(screen=screen), limit=10)).claims == []
    clock.advance(3600)
    decided.clear()
    later = await store.claim_batch("w", rules(screen=screen), limit=10)
    assert [c.call.to_number for c in later.claims] == ["+14155550100"]


async def test_do_not_call_table_refuses_at_claim(store: Store) -> None:
    assert await store.add_do_not_call("+14155550100", reason="asked not to be called")
    assert not await store.add_do_not_call("+14155550100")
    await store.create_call(NewCall(to="+14155550100", from_=POOL[0]))
    batch = await store.claim_batch("w", rules(), limit=1)
    assert batch.claims == [] and batch.events[0].error == {
        "code": "DO_NOT_CALL",
        "message": "+14155550100 is on the do-not-call list",
    }
    assert await store.remove_do_not_call("+14155550100")


async def test_budget_pauses_the_campaign(store: Store) -> None:
    settings = CampaignSettings(from_numbers=POOL, budget=1.0, price_per_minute=0.5)
    campaign = await store.create_campaign("capped", settings)
    await store.import_rows(campaign["id"], calls(5))
    [first] = (await store.claim_batch("w", rules(), limit=1)).claims
    await finish(store, first, duration=150.0)  # 2.5 min x 0.5 = 1.25 > 1.0
    row = await store.campaign(campaign["id"])
    assert row is not None and row["spent"] == 1.25
    assert (await store.claim_batch("w", rules(), limit=5)).claims == []
    row = await store.campaign(campaign["id"])
    assert row is not None and row["status"] == "paused" and "budget" in row["reason"]


async def test_pause_resume_cancel(store: Store) -> None:
    campaign = await store.create_campaign("flow", CampaignSettings(from_numbers=POOL))
    await store.import_rows(campaign["id"], calls(4))
    [live] = (await store.claim_batch("w", rules(), limit=1)).claims
    assert await store.pause_campaign(campaign["id"], reason="operator") is not None
    assert await store.pause_campaign(campaign["id"], reason="again") is None
    assert (await store.claim_batch("w", rules(), limit=5)).claims == []
    assert await store.resume_campaign(campaign["id"]) is not None
    assert len((await store.claim_batch("w", rules(), limit=1)).claims) == 1
    assert await store.cancel_campaign(campaign["id"], reason="done early") is not None
    assert await store.resume_campaign(campaign["id"]) is None  # canceled is final
    progress = await store.campaign_progress(campaign["id"])
    assert progress["by_status"] == {"dialing": 2, "canceled": 2}
    await finish(store, live)  # a live call still finishes
    progress = await store.campaign_progress(campaign["id"])
    assert progress["by_status"] == {"dialing": 1, "completed": 1, "canceled": 2}


async def test_campaign_attempt_cap_ends_retries(store: Store) -> None:
    campaign = await store.create_campaign(
        "twice", CampaignSettings(from_numbers=POOL, max_attempts=2)
    )
    await store.import_rows(campaign["id"], calls(1))
    [claim] = (await store.claim_batch("w", rules(), limit=1)).claims
    raw = f"{claim.attempt_id}:busy".encode()
    [busy] = (
        await store.ingest(
            Webhook(raw=raw, status=CallStatus.BUSY), token=claim.attempt.webhook_token
        )
    ).events
    second = await store.schedule_retry(busy, at=busy.occurred_at)
    assert second is not None and second.data["attempt"] == 2
    [again] = (await store.claim_batch("w", rules(), limit=1)).claims
    raw = f"{again.attempt_id}:busy".encode()
    [busy2] = (
        await store.ingest(
            Webhook(raw=raw, status=CallStatus.BUSY), token=again.attempt.webhook_token
        )
    ).events
    assert await store.schedule_retry(busy2, at=busy2.occurred_at) is None
    found = await store.get_call(claim.call.id)
    assert found is not None
    assert [e.type for e in found[2]][-1] == "call.retries_exhausted"
