"""Look-ups in the store, on every connector with a hand-moved clock: when each live attempt is
due a look-up, and exactly what each kind of finding does to it (the same event a webhook would
have given, the first terminal status winning, adoption, redial, the watchdog's last look-up)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import exceptions
from orchestrator.model import CallStatus
from orchestrator.provider.client import ProviderCall
from orchestrator.store import Ingest, Store
from orchestrator.store.campaigns import CampaignSettings
from orchestrator.store.claims import Pacing
from orchestrator.store.ledger import CheckTiming
from orchestrator.store.lookups import Finding
from tests.stores import T0, Env, FakeClock
from tests.test_store import attempt_of, call_row, dialing, events_of, hook

TIMING = CheckTiming(after=5.0, every=10.0, ambiguous_grace=30.0, final_grace=20.0)


@pytest.fixture
def checked(env: Env) -> Store:
    """The store with look-ups scheduled (``TIMING``)."""
    env.store.checks = TIMING
    return env.store


def record(status: str, id: str = "P1", **fields: Any) -> ProviderCall:
    """A provider record with ``status`` as the provider spells it."""
    return ProviderCall(
        id=id,
        status=status,
        state=CallStatus.from_record(status),
        to_number=fields.pop("to_number", "+15550000001"),
        from_number=fields.pop("from_number", "+15559990000"),
        **fields,
    )


async def placed(store: Store, to: str = "+15550000001", pid: str = "P1") -> tuple[str, str]:
    call_id, got = await dialing(store, to)
    await store.placed(got.attempt_id, provider_call_id=pid, provider_status="queued")
    return call_id, got.attempt_id


async def test_a_placement_is_due_a_look_up_after_the_set_delay(
    checked: Store, clock: FakeClock
) -> None:
    _, attempt_id = await placed(checked)
    assert await checked.claim_checks(limit=10, lease=60) == []
    clock.advance(TIMING.after)
    (due,) = await checked.claim_checks(limit=10, lease=60)
    assert due.id == attempt_id
    # Taken: no other daemon gets it within its lease; after the lease it is due again.
    assert await checked.claim_checks(limit=10, lease=60) == []
    clock.advance(59)
    assert await checked.claim_checks(limit=10, lease=60) == []
    clock.advance(1)
    assert [r.id for r in await checked.claim_checks(limit=10, lease=60)] == [attempt_id]


async def test_without_check_timing_nothing_is_ever_due(store: Store, clock: FakeClock) -> None:
    await placed(store)
    clock.advance(10_000)
    assert await store.claim_checks(limit=10, lease=60) == []


async def test_a_terminal_record_ends_the_call_as_its_webhook_would(
    checked: Store, clock: FakeClock
) -> None:
    call_id, attempt_id = await placed(checked)
    clock.advance(6)
    applied = await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", record=record("no_answer"))
    )
    (event,) = applied.events
    assert (event.type, event.status) == ("call.no_answer", "no_answer")
    assert event.data == {"source": "lookup", "endpoint": "get-call"}
    row = await attempt_of(checked, call_id)
    assert (row.status, row.live, row.settled_by, row.check_at) == (
        "no_answer", 0, "lookup", None,
    )  # fmt: skip
    assert (row.checks, row.checked_at, row.provider_status) == (1, T0 + 6, "no_answer")
    assert (await call_row(checked, call_id)).status == "no_answer"
    # The record later overwritten to completed (the deployed quirk), the webhook that says so,
    # or the same finding again: nothing changes, no second terminal event.
    again = await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", record=record("completed", duration=5400))
    )
    assert again.events == []
    late = await checked.ingest(hook(CallStatus.COMPLETED, provider_call_id="P1", duration=5400))
    assert late.outcome is Ingest.STALE
    assert await events_of(checked, call_id) == ["call.queued", "call.no_answer"]


async def test_a_terminal_webhook_after_a_look_up_is_stale(checked: Store) -> None:
    call_id, attempt_id = await placed(checked)
    await checked.apply_finding(attempt_id, Finding(endpoint="list-calls", record=record("busy")))
    result = await checked.ingest(hook(CallStatus.BUSY, provider_call_id="P1"))
    assert result.outcome is Ingest.STALE
    assert (await events_of(checked, call_id)).count("call.busy") == 1


async def test_a_live_record_moves_the_call_forward_and_schedules_the_next(
    checked: Store, clock: FakeClock
) -> None:
    call_id, attempt_id = await placed(checked)
    # in-progress with a hyphen is a record not yet answered: initiated, not in_progress.
    first = await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", record=record("in-progress"))
    )
    assert [e.type for e in first.events] == ["call.initiated"]
    row = await attempt_of(checked, call_id)
    assert (row.status, row.check_at, row.provider_status) == (
        "initiated", T0 + TIMING.every, "in-progress",
    )  # fmt: skip
    same = await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", record=record("initiated"))
    )
    assert same.events == [] and same.hang_up is None
    answered = await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", record=record("in_progress"))
    )
    assert [e.type for e in answered.events] == ["call.in_progress"]
    assert (await attempt_of(checked, call_id)).checks == 3


async def test_errors_and_missing_records_are_noted_and_asked_again(
    checked: Store, clock: FakeClock
) -> None:
    call_id, attempt_id = await placed(checked)
    failed = await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", error="LOOKUP_FAILED: 503")
    )
    assert failed.events == []
    row = await attempt_of(checked, call_id)
    assert row.check_result == "error (get-call): LOOKUP_FAILED: 503"
    assert row.check_at == T0 + TIMING.every and row.live == 1
    await checked.apply_finding(attempt_id, Finding(endpoint="get-call", missing=True))
    row = await attempt_of(checked, call_id)
    assert row.check_result == "no record (get-call)" and row.status == "dialing"


async def test_an_ambiguous_placement_adopts_its_one_record(
    checked: Store, clock: FakeClock
) -> None:
    call_id, got = await dialing(checked)
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("dropped"))
    row = await attempt_of(checked, call_id)
    assert (row.ambiguous, row.check_at) == (1, T0 + TIMING.ambiguous_grace)
    applied = await checked.apply_finding(
        got.attempt_id, Finding(endpoint="list-calls", record=record("ringing", id="R9"))
    )
    assert [e.type for e in applied.events] == ["call.ringing"]
    row = await attempt_of(checked, call_id)
    assert (row.ambiguous, row.provider_call_id, row.status) == (0, "R9", "ringing")


async def test_a_record_of_another_attempt_is_never_adopted(checked: Store) -> None:
    await placed(checked, "+15550000002", pid="TAKEN")
    call_id, got = await dialing(checked, "+15550000001")
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("dropped"))
    applied = await checked.apply_finding(
        got.attempt_id, Finding(endpoint="list-calls", record=record("busy", id="TAKEN"))
    )
    assert applied.events == []
    row = await attempt_of(checked, call_id)
    assert (row.ambiguous, row.provider_call_id, row.status) == (1, None, "dialing")
    assert row.check_result == "record TAKEN is another call's"


async def test_a_placement_never_created_goes_back_to_the_queue_once(
    checked: Store, clock: FakeClock
) -> None:
    call_id, got = await dialing(checked)
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("timed out"))
    clock.advance(30)
    applied = await checked.apply_finding(
        got.attempt_id, Finding(endpoint="list-calls", missing=True)
    )
    assert applied.redialed
    (event,) = applied.events
    assert event.type == "call.requeued" and event.status is None
    assert event.error is not None and event.error["code"] == "NOT_PLACED"
    row = await attempt_of(checked, call_id)
    assert (row.status, row.live, row.ambiguous, row.not_before) == (
        "queued", 0, 0, T0 + 30,
    )  # fmt: skip
    assert (await call_row(checked, call_id)).status == "queued"
    assert await checked.next_timer() is None  # its watchdog went with it
    # The same finding again (a second daemon's stale look-up) does nothing: not live.
    again = await checked.apply_finding(
        got.attempt_id, Finding(endpoint="list-calls", missing=True)
    )
    assert again.events == [] and not again.redialed
    redial = await checked.claim_attempt("w2", max_live=5, lease=30, watchdog_after=600)
    assert redial is not None and not isinstance(redial, type(None))
    assert getattr(redial, "attempt_id", None) == got.attempt_id


async def test_several_candidates_stay_ambiguous_until_the_watchdog(
    checked: Store, clock: FakeClock
) -> None:
    call_id, got = await dialing(checked)
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("timed out"))
    applied = await checked.apply_finding(
        got.attempt_id, Finding(endpoint="list-calls", candidates=2)
    )
    assert applied.events == [] and not applied.redialed
    row = await attempt_of(checked, call_id)
    assert (row.ambiguous, row.live, row.check_at) == (1, 1, None)
    clock.advance(600)  # the watchdog: the last look-up is due at once, before ending it
    assert await checked.fire_next() == []
    row = await attempt_of(checked, call_id)
    assert (row.ending, row.check_at, row.live) == ("watchdog", 0.0, 1)
    final = await checked.apply_finding(
        got.attempt_id, Finding(endpoint="list-calls", candidates=2)
    )
    (event,) = final.events
    assert event.type == "call.timed_out" and event.error is not None
    assert event.error["code"] == "AMBIGUOUS"
    assert "2 of the provider's records could be it" in event.error["message"]
    assert "not dialed again" in event.error["message"]


async def test_the_watchdog_ends_the_call_if_its_last_look_up_never_comes(
    checked: Store, clock: FakeClock
) -> None:
    call_id, attempt_id = await placed(checked)
    await checked.apply_finding(attempt_id, Finding(endpoint="get-call", record=record("ringing")))
    clock.advance(600)
    assert await checked.fire_next() == []
    assert await checked.fire_next() is None  # the second firing waits final_grace
    clock.advance(TIMING.final_grace)
    (event,) = await checked.fire_next() or []
    assert event.type == "call.timed_out" and event.error is not None
    assert event.error["code"] == "NO_TERMINAL_WEBHOOK"
    assert "last look-up: ringing (get-call)" in event.error["message"]
    assert (await attempt_of(checked, call_id)).settled_by == "watchdog"


async def test_a_call_live_at_the_provider_when_it_must_end_is_hung_up(
    checked: Store, clock: FakeClock
) -> None:
    call_id, attempt_id = await placed(checked)
    clock.advance(600)
    await checked.fire_next()
    applied = await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", record=record("in_progress"))
    )
    assert applied.events == [] and applied.hang_up is not None
    assert applied.hang_up.provider_status == "in_progress"
    (event,) = await checked.end_attempt(attempt_id, CallStatus.TIMED_OUT, "HUNG_UP", "hung up")
    assert (event.type, event.error) == (
        "call.timed_out",
        {"code": "HUNG_UP", "message": "hung up"},
    )
    assert await checked.end_attempt(attempt_id, CallStatus.TIMED_OUT, "X", "again") == []
    assert await checked.fire_next() is None and await checked.live_count() == 0
    assert (await call_row(checked, call_id)).reason == "HUNG_UP"


async def test_a_terminal_record_found_at_the_end_wins_over_the_watchdog(
    checked: Store, clock: FakeClock
) -> None:
    _call_id, attempt_id = await placed(checked)
    clock.advance(600)
    await checked.fire_next()
    applied = await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", record=record("busy"))
    )
    assert [e.type for e in applied.events] == ["call.busy"]
    clock.advance(TIMING.final_grace)
    assert await checked.fire_next() is None  # the watchdog went with the terminal status


async def test_an_unreachable_provider_at_the_end_means_a_blind_hang_up(
    checked: Store, clock: FakeClock
) -> None:
    """The call must end and the provider cannot say whether it still rings: it is hung up
    anyway (a call already over is not found), and the look-up's error is kept as the why."""
    _, attempt_id = await placed(checked)
    clock.advance(600)
    await checked.fire_next()
    applied = await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", error="CONNECT_FAILED: down")
    )
    assert applied.events == [] and applied.hang_up is not None
    assert applied.hang_up.check_result == "error (get-call): CONNECT_FAILED: down"


async def test_look_ups_spend_a_fleet_wide_budget(checked: Store, clock: FakeClock) -> None:
    pacing = Pacing(rate=1.0, burst=2.0)
    assert await checked.take_lookup(pacing) is None
    assert await checked.take_lookup(pacing) is None
    wait = await checked.take_lookup(pacing)
    assert wait == pytest.approx(1.0)
    clock.advance(0.5)
    assert await checked.take_lookup(pacing) == pytest.approx(0.5)
    clock.advance(0.5)
    assert await checked.take_lookup(pacing) is None
    await checked.pause_lookups(T0 + 61, pacing)
    clock.advance(5)
    assert await checked.take_lookup(pacing) == pytest.approx(55.0)
    # The dialer's bucket is another row: placements are not starved by look-ups.
    state = await checked.dialing_state()
    assert state["reason"] is None


async def test_a_webhook_naming_another_calls_record_is_applied_to_neither(
    checked: Store, clock: FakeClock
) -> None:
    first_id, first = await placed(checked, "+15550000001", pid="P1")
    second_id, second = await placed(checked, "+15550000002", pid="P2")
    clock.advance(2)
    # The record of the first call, the number of the second (the deployed agent's mistake).
    result = await checked.ingest(
        hook(CallStatus.COMPLETED, provider_call_id="P1", to="+15550000002", duration=30.0)
    )
    assert result.outcome is Ingest.MISMATCH and result.events == ()
    for call_id in (first_id, second_id):
        row = await attempt_of(checked, call_id)
        assert (row.status, row.check_at) == ("dialing", T0 + 2)
    due = {r.id for r in await checked.claim_checks(limit=10, lease=60)}
    assert due == {first, second}


async def test_a_canceled_campaigns_calls_are_ended_not_redialed(
    checked: Store, clock: FakeClock
) -> None:
    campaign = await checked.create_campaign("spring", CampaignSettings())
    call_id, got = await dialing(checked, campaign=campaign["id"])
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("timed out"))
    assert await checked.cancel_campaign(campaign["id"], reason="stop", hangup=True)
    (due,) = await checked.claim_checks(limit=10, lease=60)
    assert (due.ending, due.id) == ("canceled", got.attempt_id)
    applied = await checked.apply_finding(
        got.attempt_id, Finding(endpoint="list-calls", missing=True)
    )
    assert not applied.redialed
    (event,) = applied.events
    assert event.type == "call.canceled" and event.error is not None
    assert event.error["code"] == "CAMPAIGN_CANCELED"
    assert (await call_row(checked, call_id)).status == "canceled"


# -- what the mutation run of checks.py showed the tests did not pin ----------------------------


async def test_a_look_up_settling_the_call_carries_what_the_record_says(checked: Store) -> None:
    call_id, got = await dialing(checked)
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("dropped"))
    found = record(
        "completed", id="R1", duration=42.0, transcript="hi", recording_url="https://r/1.mp3"
    )
    (event,) = (
        await checked.apply_finding(got.attempt_id, Finding(endpoint="get-call", record=found))
    ).events
    assert (event.duration, event.transcript, event.recording_url) == (
        42.0, "hi", "https://r/1.mp3",
    )  # fmt: skip
    row = await attempt_of(checked, call_id)
    # The lost answer's error is history once the provider's record has spoken.
    assert (row.error_code, row.error_message, row.duration) == (None, None, 42.0)
    assert (await call_row(checked, call_id)).reason is None


async def test_a_record_in_an_unknown_spelling_is_noted_not_applied(checked: Store) -> None:
    call_id, attempt_id = await placed(checked)
    applied = await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", record=record("paused"))
    )
    assert applied.events == [] and applied.hang_up is None
    row = await attempt_of(checked, call_id)
    assert (row.status, row.provider_status, row.checks) == ("dialing", "paused", 1)


async def test_a_same_status_record_updates_what_the_provider_said(checked: Store) -> None:
    call_id, attempt_id = await placed(checked)
    first = await checked.apply_finding(
        attempt_id, Finding(endpoint="list-calls", record=record("ringing"))
    )
    assert first.events[0].data == {"source": "lookup", "endpoint": "list-calls"}
    await checked.apply_finding(attempt_id, Finding(endpoint="get-call", record=record("ringing ")))
    row = await attempt_of(checked, call_id)
    assert (row.provider_status, row.checks) == ("ringing ", 2)


async def test_a_placement_still_in_flight_is_never_redialed(
    checked: Store, clock: FakeClock
) -> None:
    """No provider id yet and not ambiguous: its POST has not answered. Whatever a look-up
    says, it must not go back to the queue (the POST may yet create the call)."""
    call_id, got = await dialing(checked)
    clock.advance(TIMING.ambiguous_grace * 10)  # long past any grace: still in flight
    applied = await checked.apply_finding(
        got.attempt_id, Finding(endpoint="list-calls", missing=True)
    )
    assert not applied.redialed and applied.events == []
    row = await attempt_of(checked, call_id)
    assert (row.status, row.live) == ("dialing", 1)


async def test_a_finding_for_an_attempt_no_longer_live_changes_nothing(
    checked: Store, clock: FakeClock
) -> None:
    call_id, got = await dialing(checked)
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("dropped"))
    clock.advance(TIMING.ambiguous_grace)
    await checked.apply_finding(got.attempt_id, Finding(endpoint="list-calls", missing=True))
    before = await attempt_of(checked, call_id)
    assert before.status == "queued"
    clock.advance(5)
    for finding in (
        Finding(endpoint="get-call", record=record("busy")),
        Finding(endpoint="get-call", error="x"),
        Finding(endpoint="list-calls", missing=True),
    ):
        assert (
            await checked.apply_finding(got.attempt_id, finding)
            == type(await checked.apply_finding(got.attempt_id, finding))()
        )
    assert await attempt_of(checked, call_id) == before
    assert await checked.end_attempt(got.attempt_id, CallStatus.TIMED_OUT, "X", "y") == []
    assert await attempt_of(checked, call_id) == before


async def test_a_placement_never_created_twice_is_requeued_twice(
    checked: Store, clock: FakeClock
) -> None:
    call_id, got = await dialing(checked)
    for round_ in (1, 2):
        if round_ == 2:
            again = await checked.claim_attempt("w1", max_live=5, lease=30, watchdog_after=600)
            assert getattr(again, "attempt_id", None) == got.attempt_id
        await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("timed out"))
        # Before the grace, no record does not yet mean never created.
        early = await checked.apply_finding(
            got.attempt_id, Finding(endpoint="list-calls", missing=True)
        )
        assert not early.redialed and early.events == []
        clock.advance(TIMING.ambiguous_grace)
        applied = await checked.apply_finding(
            got.attempt_id, Finding(endpoint="list-calls", missing=True)
        )
        assert applied.redialed and applied.events[0].data["source"] == "lookup"
        row = await attempt_of(checked, call_id)
        assert (row.checks, row.error_code, row.lease_owner, row.ending) == (
            2 * round_, "NOT_PLACED", None, None,
        )  # fmt: skip
        assert "nobody was rung" in row.error_message
    assert (await events_of(checked, call_id)).count("call.requeued") == 2


async def test_ending_a_call_records_why_and_by_what(checked: Store, clock: FakeClock) -> None:
    call_id, attempt_id = await placed(checked)
    clock.advance(600)
    await checked.fire_next()
    applied = await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", record=record("in_progress"))
    )
    assert applied.hang_up is not None
    assert (applied.hang_up.checks, applied.hang_up.check_result) == (
        1,
        "in_progress (get-call)",
    )
    await checked.end_attempt(attempt_id, CallStatus.TIMED_OUT, "HUNG_UP", "hung up there")
    row = await attempt_of(checked, call_id)
    assert (row.settled_by, row.error_code, row.error_message, row.live) == (
        "watchdog", "HUNG_UP", "hung up there", 0,
    )  # fmt: skip


async def test_a_canceled_campaigns_live_call_the_provider_cannot_be_asked_about(
    checked: Store, clock: FakeClock
) -> None:
    campaign = await checked.create_campaign("autumn", CampaignSettings())
    call_id, got = await dialing(checked, campaign=campaign["id"])
    await checked.placed(got.attempt_id, provider_call_id="P7", provider_status="queued")
    await checked.cancel_campaign(campaign["id"], reason="stop", hangup=True)
    failed = Finding(endpoint="get-call", error="LOOKUP_FAILED: 503")
    applied = await checked.apply_finding(got.attempt_id, failed)
    assert applied.events == [] and applied.hang_up is not None  # hung up blind
    (event,) = await checked.end_attempt(
        got.attempt_id, CallStatus.CANCELED, "CAMPAIGN_CANCELED", "hung up"
    )
    assert event.type == "call.canceled"
    row = await attempt_of(checked, call_id)
    assert (row.settled_by, row.error_code) == ("cancel", "CAMPAIGN_CANCELED")


async def test_the_look_up_budget_at_its_edges(checked: Store, clock: FakeClock) -> None:
    pacing = Pacing(rate=2.0, burst=2.0)
    await checked.pause_lookups(T0 + 0.25, pacing)
    assert await checked.take_lookup(pacing) == pytest.approx(0.25)
    clock.advance(0.25)  # the pause ends exactly now, with a full bucket
    assert await checked.take_lookup(pacing) is None
    assert await checked.take_lookup(pacing) is None
    assert await checked.take_lookup(pacing) == pytest.approx(0.5)
    clock.advance(0.25)
    assert await checked.take_lookup(pacing) == pytest.approx(0.25)
    # Paused with half a token in hand: it is kept, and the bucket goes on filling.
    await checked.pause_lookups(T0 + 0.75, pacing)
    clock.advance(0.25)
    assert await checked.take_lookup(pacing) is None
    # An earlier end never shortens a pause.
    await checked.pause_lookups(T0 + 5.0, pacing)
    await checked.pause_lookups(T0 + 3.0, pacing)
    clock.advance(3.0)
    assert await checked.take_lookup(pacing) == pytest.approx(1.25)


async def test_look_ups_can_be_moved_and_provider_ids_told(
    checked: Store, clock: FakeClock
) -> None:
    _, attempt_id = await placed(checked, pid="P5")
    await checked.schedule_check(attempt_id, at=T0 + 100)
    clock.advance(99)
    assert await checked.claim_checks(limit=5, lease=10) == []
    clock.advance(1)
    assert [r.id for r in await checked.claim_checks(limit=5, lease=10)] == [attempt_id]
    assert await checked.known_provider_ids(["P5", "P6"]) == {"P5"}
    await checked.apply_finding(
        attempt_id, Finding(endpoint="get-call", record=record("busy", id="P5"))
    )
    await checked.schedule_check(attempt_id, at=0)  # not live: no look-up comes back
    assert await checked.claim_checks(limit=5, lease=10) == []


@pytest.mark.parametrize(
    ("finding", "code", "says"),
    [
        (
            Finding(endpoint="get-call", missing=True),
            "NO_TERMINAL_WEBHOOK",
            "has no record of call P1",
        ),
    ],
)
async def test_why_the_watchdog_ended_a_known_call(
    checked: Store, clock: FakeClock, finding: Finding, code: str, says: str
) -> None:
    call_id, attempt_id = await placed(checked)
    clock.advance(600)
    await checked.fire_next()
    (event,) = (await checked.apply_finding(attempt_id, finding)).events
    assert event.error is not None and event.error["code"] == code
    assert says in event.error["message"]
    row = await attempt_of(checked, call_id)
    assert (row.checks, row.check_result) == (1, finding.summary)


@pytest.mark.parametrize(
    ("finding", "says"),
    [
        (
            Finding(endpoint="list-calls", error="LOOKUP_FAILED: 500"),
            "the provider could not be asked (LOOKUP_FAILED: 500)",
        ),
        (Finding(endpoint="list-calls", candidates=3), "3 of the provider's records could be it"),
    ],
)
async def test_why_the_watchdog_ended_an_ambiguous_call(
    checked: Store, clock: FakeClock, finding: Finding, says: str
) -> None:
    _, got = await dialing(checked)
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("dropped"))
    clock.advance(600)
    await checked.fire_next()
    (event,) = (await checked.apply_finding(got.attempt_id, finding)).events
    assert event.error is not None and event.error["code"] == "AMBIGUOUS"
    assert says in event.error["message"] and "it was not dialed again" in event.error["message"]


async def test_what_a_redial_and_a_canceled_placement_say(checked: Store, clock: FakeClock) -> None:
    campaign = await checked.create_campaign("winter", CampaignSettings())
    _, other = await dialing(checked, "+15550000002", campaign=campaign["id"])
    await checked.ambiguous(other.attempt_id, exceptions.AmbiguousPlacement("dropped"))
    await checked.cancel_campaign(campaign["id"], reason="stop", hangup=True)
    missing = Finding(endpoint="list-calls", missing=True)
    (event,) = (await checked.apply_finding(other.attempt_id, missing)).events
    assert event.error == {
        "code": "CAMPAIGN_CANCELED",
        "message": "the provider has no record of this placement: nobody was rung",
    }
    _, got = await dialing(checked, "+15550000001")
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("dropped"))
    clock.advance(TIMING.ambiguous_grace)
    (event,) = (await checked.apply_finding(got.attempt_id, missing)).events
    assert event.error is not None
    assert event.error["message"].endswith("nobody was rung; it is dialed again")


# -- found by review: each of these rang a person twice or stranded a call ----------------------


async def test_a_webhook_matched_only_by_numbers_never_ties_a_record_to_a_call(
    checked: Store, clock: FakeClock
) -> None:
    """A is an ambiguous placement to X; B's request is still in flight to Y. The deployed
    agent's call.completed for Y names A's record. B must not take it (then A's search would
    think its record someone else's, call A never created, and ring X again)."""
    a_call, a = await dialing(checked, "+15550000001")
    b_call, _ = await dialing(checked, "+15550000002")
    await checked.ambiguous(a.attempt_id, exceptions.AmbiguousPlacement("daemon died"))
    result = await checked.ingest(
        hook(CallStatus.COMPLETED, provider_call_id="R_A", to="+15550000002",
             from_="+15559990000", duration=12.0)
    )  # fmt: skip
    assert result.outcome is Ingest.MISMATCH and result.events == ()
    b_row = await attempt_of(checked, b_call)
    assert (b_row.provider_call_id, b_row.status) == (None, "dialing")
    clock.advance(TIMING.ambiguous_grace)
    found = Finding(endpoint="list-calls", record=record("busy", id="R_A"))
    applied = await checked.apply_finding(a.attempt_id, found)
    assert [e.type for e in applied.events] == ["call.busy"]
    assert (await attempt_of(checked, a_call)).provider_call_id == "R_A"


async def test_a_finding_about_an_earlier_placement_is_stale(
    checked: Store, clock: FakeClock
) -> None:
    """Two daemons searched for the same lost placement (the first one's claim ran out): the
    second redialed it, and that placement's answer was lost too. The first one's "no record"
    comes back late; it is about the first placement and must not requeue the second."""
    call_id, got = await dialing(checked)
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("timed out"))
    clock.advance(TIMING.ambiguous_grace)
    (first,) = await checked.claim_checks(limit=10, lease=60)
    clock.advance(61)
    (second,) = await checked.claim_checks(limit=10, lease=60)
    missing = Finding(endpoint="list-calls", missing=True, placed_at=second.placed_at)
    assert (await checked.apply_finding(got.attempt_id, missing)).redialed
    again = await checked.claim_attempt("w1", max_live=10, lease=30, watchdog_after=600)
    assert getattr(again, "attempt_id", None) == got.attempt_id
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("timed out"))
    clock.advance(TIMING.ambiguous_grace)
    stale = Finding(endpoint="list-calls", missing=True, placed_at=first.placed_at)
    late = await checked.apply_finding(got.attempt_id, stale)
    assert not late.redialed and late.events == []
    row = await attempt_of(checked, call_id)
    assert (row.status, row.live, row.ambiguous) == ("dialing", 1, 1)


async def test_a_placement_never_created_in_a_canceled_campaign_ends_canceled(
    checked: Store, clock: FakeClock
) -> None:
    campaign = await checked.create_campaign("spring", CampaignSettings())
    call_id, got = await dialing(checked, campaign=campaign["id"])
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("timed out"))
    assert await checked.cancel_campaign(campaign["id"], reason="stop")  # live calls finish
    clock.advance(TIMING.ambiguous_grace)
    applied = await checked.apply_finding(
        got.attempt_id, Finding(endpoint="list-calls", missing=True)
    )
    assert not applied.redialed
    assert [e.type for e in applied.events] == ["call.canceled"]
    assert (await call_row(checked, call_id)).status == "canceled"


async def test_cancel_with_hangup_waits_for_a_placement_in_flight(
    checked: Store, clock: FakeClock
) -> None:
    """A placement's request is under way when its campaign is canceled with hangup: when its
    answer comes, its look-up (and hang-up) is due at once."""
    campaign = await checked.create_campaign("spring", CampaignSettings())
    call_id, got = await dialing(checked, campaign=campaign["id"])
    assert await checked.cancel_campaign(campaign["id"], reason="stop", hangup=True)
    (due,) = await checked.claim_checks(limit=10, lease=60)
    assert (due.ending, due.provider_call_id) == ("canceled", None)
    await checked.schedule_check(got.attempt_id, at=clock.now + TIMING.every)  # nothing to ask
    clock.advance(1)
    await checked.placed(got.attempt_id, provider_call_id="P9", provider_status="queued")
    (due,) = await checked.claim_checks(limit=10, lease=60)
    assert (due.ending, due.provider_call_id, due.live) == ("canceled", "P9", 1)
    assert (await attempt_of(checked, call_id)).status == "dialing"


async def test_a_canceled_campaigns_lost_placement_that_cannot_be_searched(
    checked: Store, clock: FakeClock
) -> None:
    campaign = await checked.create_campaign("spring", CampaignSettings())
    _, got = await dialing(checked, campaign=campaign["id"])
    await checked.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("dropped"))
    await checked.cancel_campaign(campaign["id"], reason="stop", hangup=True)
    failed = Finding(endpoint="list-calls", error="LOOKUP_FAILED: 503")
    (event,) = (await checked.apply_finding(got.attempt_id, failed)).events
    assert event.type == "call.canceled" and event.error is not None
    assert event.error["message"] == (
        "canceled with its campaign; the placement's outcome is unknown (AMBIGUOUS) and the "
        "provider could not be asked (LOOKUP_FAILED: 503); it was not dialed again"
    )


async def test_without_check_timing_a_search_is_taken_as_it_comes(
    store: Store, clock: FakeClock
) -> None:
    _, got = await dialing(store)
    await store.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("dropped"))
    applied = await store.apply_finding(
        got.attempt_id, Finding(endpoint="list-calls", missing=True)
    )
    assert applied.redialed
