"""Calling windows through the claim, with a frozen clock: the dialer's screen defers each call
to its recipient's next opening, across time zones and across a DST change, on every
connector. (The window arithmetic itself is tested in test_windows.py.)"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from orchestrator import windows
from orchestrator.daemon import dialer
from orchestrator.model import NewCall
from orchestrator.provider import client
from orchestrator.store import Store
from orchestrator.store.campaigns import CampaignSettings
from tests.stores import FakeClock

NEW_YORK, LOS_ANGELES, LONDON, SYDNEY = (
    "+12125550123",
    "+13105550123",
    "+442079460000",
    "+61291234567",
)
OFFICE = windows.CallingWindow.model_validate(
    {"start": "09:00", "end": "17:00", "days": ["mon", "tue", "wed", "thu", "fri"]}
)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def make_dialer(store: Store, window: windows.CallingWindow | None = OFFICE) -> dialer.Dialer:
    settings = dialer.DialerParams(
        max_live_calls=100,
        calls_per_second=1000,
        max_call_duration=600,
        webhook_base="http://127.0.0.1:9/webhooks/magpipe",
        window=window,
    )
    magpipe = client.MagpipeClient(token="unused", http=httpx.AsyncClient())
    return dialer.Dialer(store, magpipe, settings, owner="w", publish=lambda events: None)


async def claimed(store: Store, the_dialer: dialer.Dialer) -> set[str]:
    batch = await store.claim_batch("w", the_dialer.rules, limit=100)
    return {c.call.to_number for c in batch.claims}


async def test_each_recipient_is_called_in_their_own_office_hours(
    store: Store, clock: FakeClock
) -> None:
    # Monday 9 March 2026, 14:00 UTC: New York has been on EDT since Sunday (10:00 there),
    # London is still on GMT (14:00), Los Angeles is at 07:00, Sydney at 01:00 on Tuesday.
    clock.now = at("2026-03-09T14:00:00")
    for number in (NEW_YORK, LOS_ANGELES, LONDON, SYDNEY):
        await store.create_call(NewCall(to=number, from_="+16045551234"))
    the_dialer = make_dialer(store)
    assert await claimed(store, the_dialer) == {NEW_YORK, LONDON}
    waiting = {
        a.to_number: a.not_before
        for call in await store.list_calls(status="queued")
        for a in await store.attempts_of(call.id)
    }
    assert waiting == {
        LOS_ANGELES: at("2026-03-09T16:00:00"),  # 09:00 PDT
        SYDNEY: at("2026-03-09T22:00:00"),  # 09:00 AEDT on Tuesday
    }
    clock.now = at("2026-03-09T16:00:00")
    assert await claimed(store, the_dialer) == {LOS_ANGELES}
    clock.now = at("2026-03-09T22:00:00")
    assert await claimed(store, the_dialer) == {SYDNEY}


async def test_the_same_utc_time_differs_across_a_dst_change(
    store: Store, clock: FakeClock
) -> None:
    the_dialer = make_dialer(store)
    # 13:30 UTC is 08:30 EST on Monday 2 March (closed) but 09:30 EDT on Monday 9 March.
    clock.now = at("2026-03-02T13:30:00")
    await store.create_call(NewCall(to=NEW_YORK, from_="+16045551234"))
    assert await claimed(store, the_dialer) == set()
    [call] = await store.list_calls(status="queued")
    [attempt] = await store.attempts_of(call.id)
    assert attempt.not_before == at("2026-03-02T14:00:00")  # 09:00 EST
    clock.now = at("2026-03-09T13:30:00")
    await store.create_call(NewCall(to="+12125550124", from_="+16045551234"))
    assert await claimed(store, the_dialer) == {NEW_YORK, "+12125550124"}


async def test_weekends_wait_for_monday_and_campaign_windows_win(
    store: Store, clock: FakeClock
) -> None:
    clock.now = at("2026-03-14T15:00:00")  # Saturday, 11:00 in New York
    the_dialer = make_dialer(store)
    await store.create_call(NewCall(to=NEW_YORK, from_="+16045551234"))
    weekend = CampaignSettings.model_validate(
        {"from_numbers": ["+16045551234"], "window": {"start": "10:00", "end": "12:00"}}
    )
    campaign = await store.create_campaign("weekend", weekend)
    await store.import_rows(campaign["id"], [NewCall(to="+12125550125", from_="")])
    assert await claimed(store, the_dialer) == {"+12125550125"}  # its own window: any day
    [call] = await store.list_calls(status="queued")
    [attempt] = await store.attempts_of(call.id)
    assert attempt.not_before == at("2026-03-16T13:00:00")  # Monday 09:00 EDT
