"""The connector conformance suite: the engine's behaviour on every connector.

Every test taking the ``store`` fixture runs once per connector in ``CONNECTORS``. To add a
connector (PostgreSQL), add one factory there and one ``pytest.param`` to ``CONNECTOR_PARAMS``
(marked ``postgres`` so it only runs where a server is available).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from orchestrator import exceptions
from orchestrator.connectors.memory import MemoryConnector
from orchestrator.connectors.protocol import Connector, migrations, queries, statements
from orchestrator.connectors.sqlite import SQLiteConnector
from orchestrator.model import CallStatus, Event, NewCall
from orchestrator.store import Claim, Ingest, Pacing, Store, Throttled, Webhook
from orchestrator.store.rows import Call
from tests.stores import T0, Env, FakeClock

# -- helpers ---------------------------------------------------------------------------------

_raw = itertools.count()


def hook(status: CallStatus, *, raw: bytes | None = None, **fields: Any) -> Webhook:
    """A webhook with a unique raw body (unless ``raw`` is given)."""
    if raw is None:
        raw = json.dumps({"status": status.value, "n": next(_raw), **fields}).encode()
    return Webhook(raw=raw, status=status, **fields)


def new_call(to: str = "+15550000001", **kw: Any) -> NewCall:
    return NewCall(to=to, from_="+15559990000", agent_id="agent-1", **kw)


async def claim(store: Store, owner: str = "w1", *, max_live: int = 10, lease: float = 30) -> Claim:
    got = await store.claim_attempt(owner, max_live=max_live, lease=lease, watchdog_after=600)
    assert isinstance(got, Claim)
    return got


async def attempt_of(store: Store, call_id: str) -> dict[str, Any]:
    found = await store.get_call(call_id)
    assert found is not None
    return found[1][-1]


async def events_of(store: Store, call_id: str) -> list[str]:
    found = await store.get_call(call_id)
    assert found is not None
    return [e.type for e in found[2]]


async def call_row(store: Store, call_id: str) -> Call:
    found = await store.get_call(call_id)
    assert found is not None
    return found[0]


async def dialing(store: Store, to: str = "+15550000001", **kw: Any) -> tuple[str, Claim]:
    """A call created and claimed: (call id, claim)."""
    call, _ = await store.create_call(new_call(to, **kw))
    got = await claim(store)
    assert got.call.id == call.id
    return call.id, got


# -- create_call -----------------------------------------------------------------------------


async def test_create_call_queues_call_attempt_and_event(env: Env) -> None:
    store = env.store
    call, created = await store.create_call(new_call(campaign="spring", metadata={"k": "v"}))
    assert created is True
    assert call.status == "queued"
    assert call.to_number == "+15550000001"
    assert call.campaign == "spring"
    assert call.metadata == {"k": "v"}
    assert call.created_at == T0 and call.attempts == 1 and call.reason is None
    found = await store.get_call(call.id)
    assert found is not None
    _, attempts, events = found
    assert [(a.number, a.status, a.live, a.ambiguous) for a in attempts] == [(1, "queued", 0, 0)]
    assert attempts[0].not_before == T0 and attempts[0].priority == 0
    assert [e.type for e in events] == ["call.queued"]
    assert events[0].seq >= 1 and events[0].call.id == call.id
    deliveries = await store.list_deliveries()
    assert [(d.handler, d.state, d.event_seq) for d in deliveries] == [
        ("audit", "pending", events[0].seq)
    ]


async def test_idempotency_key_returns_first_call(store: Store) -> None:
    first, created = await store.create_call(new_call(), idempotency_key="k1")
    again, created_again = await store.create_call(new_call(), idempotency_key="k1")
    assert created and not created_again
    assert again.id == first.id
    assert [c.id for c in await store.list_calls()] == [first.id]
    assert await events_of(store, first.id) == ["call.queued"]
    other, created_other = await store.create_call(new_call(), idempotency_key="k2")
    assert created_other and other.id != first.id


async def test_idempotency_key_with_other_body_conflicts(store: Store) -> None:
    first, _ = await store.create_call(new_call(), idempotency_key="k1")
    with pytest.raises(exceptions.IdempotencyConflict) as info:
        await store.create_call(new_call("+15550000002"), idempotency_key="k1")
    assert info.value.call_id == first.id
    assert len(await store.list_calls()) == 1


# -- claiming --------------------------------------------------------------------------------


async def test_claim_respects_max_live(store: Store) -> None:
    for n in range(3):
        await store.create_call(new_call(f"+1555000000{n}"))
    a = await store.claim_attempt("w1", max_live=2, lease=30, watchdog_after=600)
    b = await store.claim_attempt("w1", max_live=2, lease=30, watchdog_after=600)
    c = await store.claim_attempt("w1", max_live=2, lease=30, watchdog_after=600)
    assert a is not None and b is not None and c is None
    assert await store.live_count() == 2
    assert a.attempt.status == "dialing" and a.attempt.live == 1
    assert a.attempt.lease_owner == "w1" and a.attempt.lease_until == T0 + 30
    assert (await call_row(store, a.call.id)).status == "dialing"
    await store.refused(a.attempt_id, exceptions.InvalidPhoneNumber("bad"))
    assert await store.claim_attempt("w1", max_live=2, lease=30, watchdog_after=600) is not None


async def test_never_two_live_attempts_to_one_number(store: Store, clock: FakeClock) -> None:
    first_id, first = await dialing(store)
    clock.advance(1)
    second, _ = await store.create_call(new_call())
    assert await store.claim_attempt("w1", max_live=10, lease=30, watchdog_after=600) is None
    await store.ingest(hook(CallStatus.COMPLETED), token=first.attempt.webhook_token)
    got = await store.claim_attempt("w1", max_live=10, lease=30, watchdog_after=600)
    assert got is not None and got.call.id == second.id
    assert first_id != second.id


async def test_claim_order_not_before_then_id(store: Store, clock: FakeClock) -> None:
    a, _ = await store.create_call(new_call("+15550000001"))
    clock.advance(1)
    b, _ = await store.create_call(new_call("+15550000002"))
    clock.advance(1)
    assert (await claim(store)).call.id == a.id
    assert (await claim(store)).call.id == b.id


async def test_claim_order_priority_first(env: Env) -> None:
    store, clock = env.store, env.clock
    low, _ = await store.create_call(new_call("+15550000001"))
    clock.advance(1)
    high, _ = await store.create_call(new_call("+15550000002"))
    # The engine always writes priority 0; raise one directly to check the queue's order.
    async with store.connector.transaction() as tx:
        row = await tx.fetchone("list_attempts", call_id=high.id)
        assert row is not None
        await tx.fetchone(
            "insert_attempt",
            id="prio-attempt",
            call_id=high.id,
            number=2,
            to_number="+15550000003",
            from_number=row["from_number"],
            webhook_token="prio-token",
            campaign=None,
            priority=5,
            not_before=clock.now,
            now=clock.now,
        )
    assert (await claim(store)).attempt_id == "prio-attempt"
    assert (await claim(store)).call.id == low.id


async def test_priority_of_new_call_is_used(store: Store, clock: FakeClock) -> None:
    await store.create_call(new_call("+15550000001"))
    clock.advance(1)
    high, _ = await store.create_call(new_call("+15550000002", priority=5))
    assert (await claim(store)).call.id == high.id


async def test_claimed_attempt_gets_a_watchdog(store: Store, clock: FakeClock) -> None:
    _, got = await dialing(store)
    assert await store.next_timer() == T0 + 600
    assert await store.fire_next() is None
    clock.advance(600)
    [event] = await store.fire_next() or []
    assert event.type == "call.timed_out" and event.call.attempt == got.attempt.number


async def test_expired_lease_rescued_as_ambiguous_and_never_claimed(
    store: Store, clock: FakeClock
) -> None:
    call_id, got = await dialing(store)
    assert await store.rescue() == 0  # the lease still holds
    clock.advance(31)
    assert await store.rescue() == 1
    assert await store.rescue() == 0
    attempt = await attempt_of(store, call_id)
    assert attempt.status == "dialing" and attempt.ambiguous == 1 and attempt.live == 1
    assert attempt.error_code == "ABANDONED" and attempt.lease_owner is None
    assert not await store.requeue(
        got.attempt_id, exceptions.RateLimited("slow"), retry_at=clock.now
    )
    clock.advance(3600)
    assert await store.claim_attempt("w2", max_live=10, lease=30, watchdog_after=600) is None
    assert await store.live_count() == 1


async def test_requeue_frees_slot_and_honours_not_before(store: Store, clock: FakeClock) -> None:
    call_id, got = await dialing(store)
    assert await store.requeue(got.attempt_id, exceptions.RateLimited("slow"), retry_at=T0 + 60)
    attempt = await attempt_of(store, call_id)
    assert (attempt.status, attempt.live, attempt.not_before) == ("queued", 0, T0 + 60)
    assert attempt.error_code == "RATE_LIMITED" and attempt.lease_owner is None
    assert (await call_row(store, call_id)).status == "queued"
    assert await store.live_count() == 0
    assert await store.next_timer() is None
    assert await store.claim_attempt("w1", max_live=10, lease=30, watchdog_after=600) is None
    clock.advance(59)
    assert await store.claim_attempt("w1", max_live=10, lease=30, watchdog_after=600) is None
    clock.advance(1)
    again = await claim(store)
    assert again.attempt_id == got.attempt_id
    assert await store.next_timer() == T0 + 60 + 600


async def test_refused_emits_rejected_and_frees_slot(store: Store) -> None:
    call_id, got = await dialing(store)
    events = await store.refused(got.attempt_id, exceptions.InsufficientBalance("no money"))
    assert [e.type for e in events] == ["call.rejected"]
    assert events[0].error is not None and events[0].error["code"] == "INSUFFICIENT_BALANCE"
    call = await call_row(store, call_id)
    assert call.status == "rejected" and call.reason == "INSUFFICIENT_BALANCE"
    assert call.ended_at == T0
    assert await store.live_count() == 0
    assert await store.next_timer() is None
    assert await store.refused(got.attempt_id, exceptions.InsufficientBalance("again")) == []
    assert await events_of(store, call_id) == ["call.queued", "call.rejected"]


async def test_ambiguous_keeps_the_slot(store: Store, clock: FakeClock) -> None:
    call_id, got = await dialing(store)
    await store.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("timed out"))
    attempt = await attempt_of(store, call_id)
    assert attempt.ambiguous == 1 and attempt.live == 1
    assert attempt.error_code == "AMBIGUOUS" and attempt.lease_owner is None
    assert await store.live_count() == 1
    await store.create_call(new_call())
    clock.advance(3600)
    assert await store.claim_attempt("w1", max_live=10, lease=30, watchdog_after=600) is None
    assert not await store.requeue(got.attempt_id, exceptions.RateLimited("x"), retry_at=0)


# -- placed ----------------------------------------------------------------------------------


async def test_placed_emits_initiated_once(store: Store) -> None:
    call_id, got = await dialing(store)
    events = await store.placed(got.attempt_id, provider_call_id="P1", provider_status="initiated")
    assert [e.type for e in events] == ["call.initiated"]
    assert events[0].call.provider_call_id == "P1"
    again = await store.placed(got.attempt_id, provider_call_id="P1", provider_status="initiated")
    assert again == []
    attempt = await attempt_of(store, call_id)
    assert (attempt.status, attempt.provider_call_id, attempt.lease_owner) == (
        "initiated",
        "P1",
        None,
    )
    assert await events_of(store, call_id) == ["call.queued", "call.initiated"]


async def test_placed_with_provider_queued_emits_nothing(store: Store) -> None:
    call_id, got = await dialing(store)
    assert await store.placed(got.attempt_id, provider_call_id="P1", provider_status="queued") == []
    attempt = await attempt_of(store, call_id)
    assert (attempt.status, attempt.provider_status, attempt.provider_call_id) == (
        "dialing",
        "queued",
        "P1",
    )
    result = await store.ingest(hook(CallStatus.INITIATED, provider_call_id="P1"))
    assert result.outcome is Ingest.APPLIED
    assert [e.type for e in result.events] == ["call.initiated"]


# -- ingest ----------------------------------------------------------------------------------


async def test_ingest_by_token(store: Store) -> None:
    call_id, got = await dialing(store)
    result = await store.ingest(
        hook(CallStatus.RINGING, provider_call_id="P1"), token=got.attempt.webhook_token
    )
    assert result.outcome is Ingest.APPLIED and result.call_id == call_id
    assert [e.type for e in result.events] == ["call.ringing"]
    assert (await call_row(store, call_id)).status == "ringing"
    assert (await attempt_of(store, call_id)).provider_call_id == "P1"


async def test_ingest_by_correlation(store: Store) -> None:
    call_id, got = await dialing(store)
    result = await store.ingest(hook(CallStatus.RINGING, correlation=got.attempt_id))
    assert result.outcome is Ingest.APPLIED and result.call_id == call_id


async def test_ingest_by_provider_call_id(store: Store) -> None:
    call_id, got = await dialing(store)
    await store.placed(got.attempt_id, provider_call_id="P9", provider_status="initiated")
    result = await store.ingest(hook(CallStatus.IN_PROGRESS, provider_call_id="P9"))
    assert result.outcome is Ingest.APPLIED and result.call_id == call_id
    assert (await call_row(store, call_id)).status == "in_progress"


async def test_ingest_by_numbers_for_ambiguous_attempts(store: Store) -> None:
    call_id, got = await dialing(store)
    to, from_ = "+15550000001", "+15559990000"
    other = await store.ingest(
        hook(CallStatus.RINGING, provider_call_id="P1", to=to, from_="+15559990001")
    )
    assert other.outcome is Ingest.UNMATCHED  # the numbers name no live attempt
    await store.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("dropped"))
    # Its numbers alone do not say the record is this placement's (the deployed agent may name
    # another call's record): nothing is applied or adopted, and a search is due at once.
    result = await store.ingest(hook(CallStatus.RINGING, provider_call_id="P2", to=to, from_=from_))
    assert result.outcome is Ingest.MISMATCH and result.call_id == call_id
    assert result.events == ()
    attempt = await attempt_of(store, call_id)
    assert (attempt.ambiguous, attempt.provider_call_id, attempt.status) == (
        1,
        None,
        "dialing",
    )
    assert attempt.check_at == store.clock()
    # Once the provider id is known, another id between the same numbers is not this call.
    await store.placed(got.attempt_id, provider_call_id="P2", provider_status="initiated")
    late = await store.ingest(hook(CallStatus.COMPLETED, provider_call_id="P3", to=to, from_=from_))
    assert late.outcome is Ingest.UNMATCHED


async def test_webhook_before_the_placing_answer_is_settled_by_a_look_up(store: Store) -> None:
    """The deployed provider echoes no metadata, and its agent may name another call's record:
    a webhook that only its numbers tie to a placement still under way is not applied. The
    call's look-up is due at once, and once the POST answers, the provider's record decides."""
    call_id, got = await dialing(store)
    to, from_ = "+15550000001", "+15559990000"
    early = await store.ingest(
        hook(CallStatus.COMPLETED, provider_call_id="P1", to=to, from_=from_, duration=3.0)
    )
    assert early.outcome is Ingest.MISMATCH and early.call_id == call_id and early.events == ()
    attempt = await attempt_of(store, call_id)
    assert (attempt.status, attempt.provider_call_id, attempt.live) == (
        "dialing",
        None,
        1,
    )
    assert attempt.check_at == store.clock()
    await store.placed(got.attempt_id, provider_call_id="P1", provider_status="initiated")
    attempt = await attempt_of(store, call_id)
    assert (attempt.status, attempt.provider_call_id) == ("initiated", "P1")


async def test_provider_id_of_another_attempt_is_a_conflict(store: Store) -> None:
    _first, one = await dialing(store, "+15550000001")
    await store.placed(one.attempt_id, provider_call_id="P1", provider_status="initiated")
    second, two = await dialing(store, "+15550000002")
    result = await store.ingest(
        hook(CallStatus.RINGING, provider_call_id="P1"), token=two.attempt.webhook_token
    )
    assert result.outcome is Ingest.CONFLICT and result.call_id == second
    assert (await attempt_of(store, second)).provider_call_id is None


async def test_exact_duplicate_is_ignored(store: Store) -> None:
    call_id, got = await dialing(store)
    token = got.attempt.webhook_token
    first = hook(CallStatus.RINGING, provider_call_id="P1")
    assert (await store.ingest(first, token=token)).outcome is Ingest.APPLIED
    before = await store.get_call(call_id)
    duplicate = await store.ingest(first, token=token)
    assert duplicate.outcome is Ingest.DUPLICATE and duplicate.events == ()
    assert await store.get_call(call_id) == before


async def test_out_of_order_and_after_terminal_are_stale(store: Store) -> None:
    call_id, got = await dialing(store)
    token = got.attempt.webhook_token
    assert (await store.ingest(hook(CallStatus.IN_PROGRESS), token=token)).outcome is Ingest.APPLIED
    late = await store.ingest(hook(CallStatus.RINGING), token=token)
    assert late.outcome is Ingest.STALE and late.events == ()
    assert (await call_row(store, call_id)).status == "in_progress"
    assert (await store.ingest(hook(CallStatus.COMPLETED), token=token)).outcome is Ingest.APPLIED
    for status in (CallStatus.IN_PROGRESS, CallStatus.COMPLETED, CallStatus.FAILED):
        after = await store.ingest(hook(status), token=token)
        assert after.outcome is Ingest.STALE and after.events == ()
    assert (await call_row(store, call_id)).status == "completed"
    assert await events_of(store, call_id) == [
        "call.queued",
        "call.in_progress",
        "call.completed",
    ]


async def test_terminal_webhook_frees_slot_and_deletes_watchdog(
    store: Store, clock: FakeClock
) -> None:
    call_id, got = await dialing(store)
    clock.advance(42)
    result = await store.ingest(
        hook(CallStatus.COMPLETED, provider_call_id="P1", duration=41.5),
        token=got.attempt.webhook_token,
    )
    assert [e.type for e in result.events] == ["call.completed"]
    assert result.events[0].duration == 41.5
    assert await store.live_count() == 0
    assert await store.next_timer() is None
    call = await call_row(store, call_id)
    assert (call.status, call.ended_at, call.reason) == ("completed", T0 + 42, None)
    attempt = await attempt_of(store, call_id)
    assert (attempt.live, attempt.ended_at, attempt.duration) == (0, T0 + 42, 41.5)


async def test_completed_call_has_no_stale_reason(store: Store, clock: FakeClock) -> None:
    call_id, got = await dialing(store)
    await store.requeue(got.attempt_id, exceptions.RateLimited("slow"), retry_at=clock.now)
    again = await claim(store)
    await store.ingest(hook(CallStatus.COMPLETED), token=again.attempt.webhook_token)
    call = await call_row(store, call_id)
    assert (call.status, call.reason) == ("completed", None)


async def test_early_webhook_before_placed(store: Store) -> None:
    call_id, got = await dialing(store)
    early = await store.ingest(
        hook(CallStatus.INITIATED, provider_call_id="P1"), token=got.attempt.webhook_token
    )
    assert [e.type for e in early.events] == ["call.initiated"]
    assert (await attempt_of(store, call_id)).provider_call_id == "P1"
    assert (
        await store.placed(got.attempt_id, provider_call_id="P1", provider_status="initiated") == []
    )
    assert await events_of(store, call_id) == ["call.queued", "call.initiated"]


async def test_unmatched_webhooks(store: Store) -> None:
    await dialing(store)
    assert (await store.ingest(hook(CallStatus.RINGING), token="nope")).outcome is Ingest.UNMATCHED
    assert (await store.ingest(hook(CallStatus.RINGING))).outcome is Ingest.UNMATCHED
    other = hook(CallStatus.RINGING, provider_call_id="unknown", correlation="unknown")
    assert (await store.ingest(other)).outcome is Ingest.UNMATCHED


async def test_conflicting_provider_call_id(store: Store) -> None:
    call_id, got = await dialing(store)
    await store.placed(got.attempt_id, provider_call_id="P1", provider_status="initiated")
    result = await store.ingest(
        hook(CallStatus.COMPLETED, provider_call_id="P2"), token=got.attempt.webhook_token
    )
    assert result.outcome is Ingest.CONFLICT and result.call_id == call_id
    attempt = await attempt_of(store, call_id)
    assert (attempt.status, attempt.provider_call_id) == ("initiated", "P1")


async def test_each_lifecycle_event_once_per_attempt(store: Store) -> None:
    call_id, got = await dialing(store)
    token = got.attempt.webhook_token
    await store.placed(got.attempt_id, provider_call_id="P1", provider_status="initiated")
    for status in (CallStatus.INITIATED, CallStatus.RINGING, CallStatus.RINGING) * 2:
        await store.ingest(hook(status, provider_call_id="P1"), token=token)
    await store.placed(got.attempt_id, provider_call_id="P1", provider_status="initiated")
    types = await events_of(store, call_id)
    assert types == ["call.queued", "call.initiated", "call.ringing"]


# -- fleet pacing and leases ----------------------------------------------------------------


async def test_pacing_is_a_token_bucket(store: Store, clock: FakeClock) -> None:
    for n in range(4):
        await store.create_call(new_call(f"+1555000000{n}"))
    pace = Pacing(rate=2.0, burst=2.0)
    take = lambda: store.claim_attempt(  # noqa: E731
        "w1", max_live=10, lease=30, watchdog_after=600, pacing=pace
    )
    assert isinstance(await take(), Claim) and isinstance(await take(), Claim)  # the burst
    throttled = await take()
    assert isinstance(throttled, Throttled) and throttled.wait == pytest.approx(0.5)
    clock.advance(0.5)
    assert isinstance(await take(), Claim)
    clock.advance(10)  # tokens never exceed the burst
    assert isinstance(await take(), Claim)
    assert await take() is None  # nothing left to claim: no token spent
    await store.create_call(new_call("+15550000009"))
    assert isinstance(await take(), Claim)


async def test_retry_after_pauses_every_claim(store: Store, clock: FakeClock) -> None:
    await store.create_call(new_call())
    pace = Pacing(rate=100.0)
    await store.pause_dialing(clock.now + 30)
    await store.pause_dialing(clock.now + 10)  # a shorter pause never cuts a longer one
    got = await store.claim_attempt("w", max_live=5, lease=30, watchdog_after=600, pacing=pace)
    assert isinstance(got, Throttled) and got.wait == pytest.approx(30)
    clock.advance(30)
    got = await store.claim_attempt("w", max_live=5, lease=30, watchdog_after=600, pacing=pace)
    assert isinstance(got, Claim)


async def test_heartbeat_keeps_a_living_daemons_placement(store: Store, clock: FakeClock) -> None:
    call_id, got = await dialing(store)
    mine = [got.attempt_id]
    clock.advance(20)
    assert await store.heartbeat("w1", lease=30, attempts=mine) == 1
    assert await store.heartbeat("other", lease=30, attempts=mine) == 0
    assert await store.heartbeat("w1", lease=30) == 0  # nothing in flight: nothing extended
    clock.advance(20)  # past the first lease, within the extended one
    assert await store.rescue() == 0
    assert (await attempt_of(store, call_id)).lease_until == T0 + 50
    assert await store.heartbeat("w1", lease=1, attempts=mine) == 1
    assert (await attempt_of(store, call_id)).lease_until == T0 + 50  # never shortened
    clock.advance(11)  # the daemon stopped beating
    assert await store.rescue() == 1


async def test_heartbeat_extends_only_deliveries_in_flight(store: Store, clock: FakeClock) -> None:
    await store.create_call(new_call())
    await store.create_call(new_call("+15550000002"))
    first, second = await store.claim_deliveries("audit", "w1", limit=10, lease=10)
    clock.advance(5)
    assert await store.heartbeat("w1", lease=10, deliveries=[first.id]) == 1
    clock.advance(6)  # the second's task died: its lease ran out, another worker takes it
    [again] = await store.claim_deliveries("audit", "w2", limit=10, lease=10)
    assert again.id == second.id


# -- timers ----------------------------------------------------------------------------------


async def test_due_timers_fire_in_due_order(store: Store, clock: FakeClock) -> None:
    first, _ = await dialing(store, "+15550000001")
    clock.advance(1)
    second, _ = await dialing(store, "+15550000002")
    clock.advance(599)
    [one] = await store.fire_next() or []
    assert one.call.id == first
    assert await store.fire_next() is None  # the second is due one second later
    clock.advance(1)
    [two] = await store.fire_next() or []
    assert two.call.id == second
    assert await store.fire_next() is None and await store.next_timer() is None


async def test_a_failed_fire_leaves_the_timer_due(store: Store, clock: FakeClock) -> None:
    """Taking and running a timer are one transaction: a crash in between strands nothing."""
    call_id, _ = await dialing(store)
    clock.advance(600)

    class Crash(Exception):
        pass

    def crashing_router(event: Event) -> list[str]:
        raise Crash

    store.router = crashing_router
    with pytest.raises(Crash):
        await store.fire_next()
    assert await store.next_timer() == T0 + 600
    store.router = lambda event: []
    [event] = await store.fire_next() or []
    assert event.type == "call.timed_out" and event.call.id == call_id


async def test_watchdog_times_out_a_live_attempt(store: Store, clock: FakeClock) -> None:
    call_id, _ = await dialing(store)
    clock.advance(600)
    events = await store.fire_next() or []
    assert [e.type for e in events] == ["call.timed_out"]
    assert events[0].error is not None and events[0].error["code"] == "NO_TERMINAL_WEBHOOK"
    call = await call_row(store, call_id)
    assert (call.status, call.reason) == ("timed_out", "NO_TERMINAL_WEBHOOK")
    assert await store.live_count() == 0
    assert await store.next_timer() is None
    assert await store.fire_next() is None


async def test_watchdog_on_ambiguous_attempt(store: Store, clock: FakeClock) -> None:
    call_id, got = await dialing(store)
    await store.ambiguous(got.attempt_id, exceptions.AmbiguousPlacement("dropped"))
    clock.advance(600)
    events = await store.fire_next() or []
    assert events[0].error is not None and events[0].error["code"] == "AMBIGUOUS"
    assert (await call_row(store, call_id)).reason == "AMBIGUOUS"
    assert await store.live_count() == 0


async def test_watchdog_after_the_call_ended_does_nothing(store: Store, clock: FakeClock) -> None:
    call_id, got = await dialing(store)
    clock.advance(600)
    await store.ingest(hook(CallStatus.COMPLETED), token=got.attempt.webhook_token)
    assert await store.fire_next() is None  # the terminal webhook removed the watchdog
    assert await events_of(store, call_id) == ["call.queued", "call.completed"]
    assert (await call_row(store, call_id)).status == "completed"


# -- deliveries ------------------------------------------------------------------------------


async def _three_events(store: Store, to: str) -> str:
    """A call with call.queued, call.initiated and call.ringing (audit: 3, crm: 1)."""
    call_id, got = await dialing(store, to)
    await store.placed(got.attempt_id, provider_call_id=f"P{to}", provider_status="initiated")
    await store.ingest(hook(CallStatus.RINGING), token=got.attempt.webhook_token)
    return call_id


async def test_deliveries_head_per_call_and_handler(store: Store) -> None:
    a = await _three_events(store, "+15550000001")
    b = await _three_events(store, "+15550000002")
    heads = await store.claim_deliveries("audit", "w1", limit=10, lease=30)
    assert [(d.event.call.id, d.event.type, d.tries) for d in heads] == [
        (a, "call.queued", 1),
        (b, "call.queued", 1),
    ]
    assert await store.claim_deliveries("audit", "w2", limit=10, lease=30) == []
    crm = await store.claim_deliveries("crm", "w2", limit=10, lease=30)  # independent handler
    assert [(d.event.call.id, d.event.type) for d in crm] == [
        (a, "call.ringing"),
        (b, "call.ringing"),
    ]
    assert await store.finish_delivery(heads[0], "w1")
    nxt = await store.claim_deliveries("audit", "w1", limit=10, lease=30)
    assert [(d.event.call.id, d.event.type) for d in nxt] == [(a, "call.initiated")]
    assert nxt[0].event.seq > heads[0].event.seq


async def test_delivery_limit(store: Store) -> None:
    for n in range(3):
        await store.create_call(new_call(f"+1555000000{n}"))
    assert len(await store.claim_deliveries("audit", "w1", limit=2, lease=30)) == 2
    assert len(await store.claim_deliveries("audit", "w1", limit=2, lease=30)) == 1


async def test_delivery_retry_and_dead(store: Store, clock: FakeClock) -> None:
    await _three_events(store, "+15550000001")
    [first] = await store.claim_deliveries("audit", "w1", limit=10, lease=30)
    assert await store.finish_delivery(first, "w1", error="boom", retry_at=clock.now + 30)
    clock.advance(29)
    assert await store.claim_deliveries("audit", "w1", limit=10, lease=30) == []  # order kept
    clock.advance(1)
    [retried] = await store.claim_deliveries("audit", "w1", limit=10, lease=30)
    assert (retried.id, retried.tries, retried.event.type) == (first.id, 2, "call.queued")
    assert await store.finish_delivery(retried, "w1", error="x" * 5000)
    [dead] = await store.list_deliveries(state="dead")
    assert dead.id == first.id and dead.last_error == "x" * 2000 and dead.tries == 2
    [after] = await store.claim_deliveries("audit", "w1", limit=10, lease=30)
    assert after.event.type == "call.initiated"
    assert await store.finish_delivery(after, "w1")
    states = {(d.handler, d.state) for d in await store.list_deliveries(handler="audit")}
    assert states == {("audit", "dead"), ("audit", "done"), ("audit", "pending")}
    assert len(await store.list_deliveries(state="pending")) == 2  # audit ringing, crm ringing
    assert len(await store.list_deliveries(limit=1)) == 1


async def test_lost_lease_cannot_finish(store: Store, clock: FakeClock) -> None:
    await store.create_call(new_call())
    [mine] = await store.claim_deliveries("audit", "w1", limit=10, lease=10)
    clock.advance(10)
    assert await store.claim_deliveries("audit", "w2", limit=10, lease=10) == []  # not < now
    clock.advance(1)
    [theirs] = await store.claim_deliveries("audit", "w2", limit=10, lease=10)
    assert theirs.id == mine.id and theirs.tries == 2
    assert not await store.finish_delivery(mine, "w1")
    assert await store.finish_delivery(theirs, "w2")
    [row] = await store.list_deliveries()
    assert row.state == "done" and row.lease_owner is None


async def test_release_hands_back_leases(store: Store, clock: FakeClock) -> None:
    call_id, _got = await dialing(store)
    await store.create_call(new_call("+15550000002"))
    clock.advance(600)
    assert len(await store.claim_deliveries("audit", "w1", limit=10, lease=300)) == 2
    await store.release("w1")
    attempt = await attempt_of(store, call_id)
    assert attempt.ambiguous == 1 and attempt.error_code == "ABANDONED"  # never resent
    taken = await store.claim_deliveries("audit", "w2", limit=10, lease=300)
    assert len(taken) == 2 and {d.tries for d in taken} == {1}


# -- reading ---------------------------------------------------------------------------------


async def test_get_call_events_and_attempts(store: Store) -> None:
    call_id = await _three_events(store, "+15550000001")
    found = await store.get_call(call_id)
    assert found is not None
    call, attempts, events = found
    assert call.status == "ringing"
    assert [e.type for e in events] == ["call.queued", "call.initiated", "call.ringing"]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert len({e.seq for e in events}) == 3
    assert [a.number for a in attempts] == [1]
    assert await store.get_call("missing") is None


async def test_list_calls_pagination_and_filters(store: Store) -> None:
    ids = []
    for n in range(5):
        call, _ = await store.create_call(
            new_call(f"+1555000000{n}", campaign="even" if n % 2 == 0 else None)
        )
        ids.append(call.id)
    pages: list[str] = []
    after = None
    while True:
        page = await store.list_calls(limit=2, after=after)
        if not page:
            break
        assert len(page) <= 2
        pages += [c.id for c in page]
        after = page[-1].id
    assert pages == sorted(ids)
    even = {c.id for c in await store.list_calls(campaign="even")}
    assert even == {ids[0], ids[2], ids[4]}
    got = await claim(store)
    await store.ingest(hook(CallStatus.COMPLETED), token=got.attempt.webhook_token)
    assert [c.id for c in await store.list_calls(status="completed")] == [got.call.id]
    assert len(await store.list_calls(status="queued")) == 4
    assert await store.list_calls(status="completed", campaign="nope") == []


# -- transactions and the connector contract --------------------------------------------------


async def _insert_then_fail(store: Store) -> None:
    async with store.connector.transaction() as tx:
        inserted = await tx.fetchone(
            "insert_call",
            id="c1",
            idempotency_key=None,
            request_hash="h",
            to_number="+1",
            from_number="+2",
            agent_id=None,
            campaign=None,
            metadata="{}",
            purpose=None,
            goal=None,
            template_id=None,
            status="queued",
            now=T0,
        )
        assert inserted is not None and inserted["id"] == "c1"
        assert await tx.fetchone("get_call", id="c1") is not None
        await tx.execute("insert_timer", id="t1", kind="k", ref="c1", due_at=T0)
        raise RuntimeError("abort")


async def test_rollback_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError, match="abort"):
        await _insert_then_fail(store)
    assert await store.next_timer() is None
    assert await store.get_call("c1") is None
    assert await store.list_calls() == []


async def test_failing_router_rolls_back_create_call(env: Env) -> None:
    env.router.fail = True
    with pytest.raises(RuntimeError):
        await env.store.create_call(new_call(), idempotency_key="k")
    env.router.fail = False
    assert await env.store.list_calls() == []
    assert await env.store.list_deliveries() == []
    call, created = await env.store.create_call(new_call(), idempotency_key="k")
    assert created
    assert await events_of(env.store, call.id) == ["call.queued"]


async def test_constraint_violations_raise_store_error(store: Store) -> None:
    """A violated constraint raises StoreError naming the query; the transaction it happened
    in is rolled back as a whole (the contract: nobody goes on after a StoreError)."""
    call_id, got = await dialing(store)
    base = {
        "call_id": call_id,
        "to_number": "+15550000001",
        "from_number": "+15559990000",
        "priority": 0,
        "not_before": T0,
        "now": T0,
        "campaign": None,
    }
    token = got.attempt.webhook_token
    violations: list[tuple[str, dict[str, Any], str]] = [
        ("insert_attempt", {"id": "x", "number": 2, "webhook_token": token}, "UNIQUE"),
        ("insert_attempt", {"id": "x", "number": 1, "webhook_token": "t2"}, "UNIQUE"),
        (
            "insert_attempt",
            {"id": "y", "number": 1, "webhook_token": "t3", "call_id": "?"},
            "FOREIGN KEY",
        ),
        ("insert_attempt", {"id": "z", "number": 3, "webhook_token": None}, "NOT NULL"),
    ]

    async def violate(query: str, params: dict[str, Any]) -> None:
        async with store.connector.transaction() as tx:
            await tx.execute("update_call", id=call_id, attempt=1, status="lost",
                             reason=None, ended_at=None, now=T0)  # fmt: skip
            await tx.fetchone(query, **(base | params))

    for query, params, match in violations:
        with pytest.raises(exceptions.StoreError, match=match):
            await violate(query, params)
        assert (await call_row(store, call_id)).status == "dialing"  # rolled back whole
    async with store.connector.transaction() as tx:
        second = await tx.fetchone("insert_attempt", id="x", number=2, webhook_token="t2", **base)
    assert second is not None
    changes = {k: second[k] for k in second if k not in ("call_id", "number")}
    with pytest.raises(exceptions.StoreError, match="UNIQUE"):  # one live per number
        await violate("update_attempt", changes | {"live": 1})
    async with store.connector.transaction() as tx:
        assert (await tx.fetchone("get_attempt", id="x") or {})["live"] == 0
        with pytest.raises(exceptions.StoreError, match="unknown query"):
            await tx.fetch("no_such_query")
        with pytest.raises(exceptions.StoreError, match="missing parameters"):
            await tx.fetch("get_call")
    assert [a.id for a in (await store.get_call(call_id) or ((), [], []))[1]] == [
        got.attempt_id,
        "x",
    ]


async def test_on_conflict_do_nothing_and_shapes(store: Store) -> None:
    async with store.connector.transaction() as tx:
        assert await tx.fetchone("count_live") == {"n": 0}
        assert await tx.fetchone("next_timer") == {"due_at": None}
        event = {"call_id": "c", "attempt_id": None, "type": "t", "occurred_at": T0, "body": "{}"}
        assert await tx.fetchone("insert_event", id="e1", dedupe_key="d1", **event) == {"seq": 1}
        assert await tx.fetchone("insert_event", id="e2", dedupe_key="d1", **event) is None
        assert await tx.fetchone("insert_event", id="e3", dedupe_key=None, **event) == {"seq": 2}
        assert await tx.fetchone("insert_event", id="e4", dedupe_key=None, **event) == {"seq": 3}
        assert await tx.fetchone("insert_receipt", id="r1", now=T0, body="b") == {"id": "r1"}
        assert await tx.fetchone("insert_receipt", id="r1", now=T0, body="b") is None
        timer = {"kind": "k", "ref": "r", "due_at": 5}
        assert await tx.execute("insert_timer", id="t1", **timer) == 1
        assert await tx.execute("insert_timer", id="t2", **timer) == 0
        assert await tx.fetchone("next_timer") == {"due_at": 5.0}
        assert await tx.execute("delete_timer", kind="k", ref="r") == 1
        assert await tx.execute("delete_timer", kind="k", ref="r") == 0
    with pytest.raises(exceptions.StoreError, match="UNIQUE"):  # only dedupe_key may conflict
        async with store.connector.transaction() as tx:
            await tx.fetchone("insert_event", id="e1", dedupe_key="d9", **event)


async def test_returned_rows_are_copies(store: Store) -> None:
    """What leaves the store is frozen, and a connector's rows are copies: changing either
    changes nothing stored."""
    call, _ = await store.create_call(new_call())
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.status = "mutated"  # type: ignore[misc]
    async with store.connector.transaction() as tx:
        row = await tx.fetchone("get_call", id=call.id)
        assert row is not None
        row["status"] = "mutated"
        [attempt] = await tx.fetch("list_attempts", call_id=call.id)
        attempt["live"] = 99
    assert (await call_row(store, call.id)).status == "queued"
    assert (await attempt_of(store, call.id)).live is False


# -- SQLite only -----------------------------------------------------------------------------


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = Store(SQLiteConnector(f"sqlite://{path}"), clock=FakeClock())
    await first.open()
    call, _ = await first.create_call(new_call())
    await first.close()
    for _ in range(2):
        again = Store(SQLiteConnector(f"sqlite://{path}"), clock=FakeClock())
        await again.open()
        found = await again.get_call(call.id)
        assert found is not None and found[0] == call
        await again.close()
    with sqlite3.connect(path) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == [m.version for m in migrations()]


# -- memory and SQLite give the same answers ------------------------------------------------


async def test_memory_matches_sqlite_query_by_query(tmp_path: Path) -> None:
    """Run one script of every named query on both connectors: identical results."""
    results = []
    for conn in (MemoryConnector(), SQLiteConnector(f"sqlite://{tmp_path / 'diff.db'}")):
        await conn.open()
        try:
            results.append(await _script(conn))
        finally:
            await conn.close()
    memory, sqlite = results
    assert len(memory) == len(sqlite)
    for (name, mine), (_, theirs) in zip(memory, sqlite, strict=True):
        assert mine == theirs, name
    assert {name for name, _ in memory} >= set(queries("sqlite"))


UNORDERED = {"claim_deliveries", "rescue_attempts", "release_attempts"}


async def _script(conn: Connector) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []

    async def run(name: str, /, **params: Any) -> None:
        try:
            async with conn.transaction() as tx:
                rows = await tx.fetch(name, **params)
            if name in UNORDERED:  # RETURNING gives no order
                rows.sort(key=lambda row: str(row.get("id")))
            out.append((name, rows))
        except exceptions.StoreError:
            out.append((name, "StoreError"))

    async def change(name: str, /, **params: Any) -> None:
        async with conn.transaction() as tx:
            out.append((name, await tx.execute(name, **params)))

    call = {
        "idempotency_key": None,
        "request_hash": "h",
        "from_number": "+2",
        "agent_id": "a",
        "metadata": "{}",
        "purpose": None,
        "goal": None,
        "template_id": None,
        "status": "queued",
    }
    for n, (key, campaign) in enumerate([("k1", "x"), (None, None), ("k1", "y"), (None, "x")]):
        await run(
            "insert_call",
            **call | {"id": f"c{n}", "to_number": f"+1{n % 2}", "idempotency_key": key},
            campaign=campaign,
            now=10 + n,
        )
    await run("insert_call", **call | {"id": "c0", "to_number": "+9"}, campaign=None, now=1)
    await run("get_call", id="c0")
    await run("get_call_by_idempotency_key", idempotency_key="k1")
    await run("get_call_by_idempotency_key", idempotency_key=None)
    for status, campaign, after, limit in [
        (None, None, None, 10),
        ("queued", "x", None, 10),
        (None, None, "c1", 1),
        (None, None, None, -1),
        (None, None, None, None),
    ]:
        await run("list_calls", status=status, campaign=campaign, after=after, limit=limit)
    await change(
        "update_call", id="c0", attempt=1, status="dialing", reason=None, ended_at=None, now=20
    )
    await change("update_call", id="c0", attempt=2, status="x", reason=None, ended_at=None, now=20)
    for n, (call_id, prio, nb) in enumerate(
        [("c0", 0, 5), ("c1", 0, 3), ("c3", 2, 9), ("c1", 0, 50)]
    ):
        await run(
            "insert_attempt",
            id=f"a{n}",
            call_id=call_id,
            number=n + 1,
            to_number=f"+1{n % 2}",
            from_number="+2",
            webhook_token=f"t{n}",
            priority=prio,
            not_before=nb,
            now=n,
            campaign="k1" if n % 2 else None,
        )
    await run(
        "insert_attempt",
        id="a9",
        call_id="zz",
        number=1,
        to_number="+1",
        from_number="+2",
        webhook_token="t9",
        priority=0,
        not_before=0,
        now=0,
        campaign=None,
    )
    await run("due_attempts_without_campaign", now=30, limit=10)
    await run("due_attempts_of_campaign", campaign="k1", now=30, limit=10)
    await run("any_due_attempt", now=30)
    await run("any_due_attempt", now=-1)
    await run("due_attempts_of_campaign", campaign="k1", now=4, limit=1)
    for owner, attempt in (("o1", "a0"), ("o2", "a1"), ("o3", "a0"), ("o3", "a2")):
        await run("claim_attempt_by_id", id=attempt, owner=owner, from_number="+3",
                  lease_until=40, now=30, check_at=31 if owner != "o2" else None)  # fmt: skip
    await run("due_attempts_without_campaign", now=30, limit=10)
    await change("defer_attempt", id="a3", not_before=99)
    await change("defer_attempt", id="a0", not_before=99)
    await change("set_call_from", id="c1", from_number="+4")
    await run("count_recent_attempts", to_number="+10", since=29)
    await run("count_recent_attempts", to_number="+10", since=31)
    await run("count_live_by_from")
    await run("count_queued")
    await run("count_live")
    await run("get_attempt", id="a2")
    await run("get_attempt_by_token", webhook_token="t1")
    await run("list_attempts", call_id="c1")
    base = {
        "status": "ringing", "live": 0, "ambiguous": 1, "provider_call_id": "P1",
        "provider_status": "ringing", "error_code": None, "error_message": None,
        "not_before": 5, "lease_owner": "o1", "lease_until": 40, "duration": None,
        "ended_at": None, "agent_call_sid": "CA1", "check_at": 33, "checked_at": 32,
        "check_result": "ringing (get-call)", "checks": 2, "ending": None, "settled_by": None,
        "failures": 1,
    }  # fmt: skip
    await change("update_attempt", id="a2", **base)
    await run("update_attempt", id="a0", **base)  # duplicate provider_call_id
    await run("get_attempt_by_provider_id", provider_call_id="P1")
    await run("get_ambiguous_attempt", to_number="+10", from_number="+2")
    await run("rescue_attempts", now=41, grace=7)
    await run("release_attempts", owner="o1", grace=None)
    await run("get_attempt", id="a1")
    for now, limit in ((30, 10), (38, 10), (100, 1), (100, 3)):
        await run("due_checks", now=now, limit=limit)
    await change("set_check_at", id="a0", check_at=0)
    await change("set_check_at", id="a3", check_at=0)  # not live: unchanged
    await run("due_checks", now=1, limit=5)
    await run("get_live_attempt_by_number", to_number="+10")
    await run("get_live_attempt_by_number", to_number="+11")
    await run("end_campaign_calls", campaign="k1")
    await run("end_campaign_calls", campaign="none")
    await run("lock_lookups")
    for n in range(4):
        await run(
            "insert_event",
            id=f"e{n}",
            call_id=f"c{n % 2}",
            attempt_id=None,
            type="t",
            occurred_at=n,
            dedupe_key=f"d{n % 3}",
            body="{}",
        )
    await run("list_events", call_id="c0")
    await run("get_event", seq=2)
    for n, (seq, call_id, handler) in enumerate(
        [(1, "c0", "h"), (2, "c1", "h"), (4, "c0", "h"), (1, "c0", "g"), (1, "c0", "h")]
    ):
        await run("insert_delivery", id=f"d{n}", event_seq=seq, event_id=f"e{seq}",
                  call_id=call_id, handler=handler, now=n)  # fmt: skip
    await run("claim_deliveries", handler="h", owner="o1", lease_until=20, now=10, limit=10)
    await run("claim_deliveries", handler="h", owner="o2", lease_until=30, now=25, limit=1)
    await change("finish_delivery", id="d0", owner="o1", state="pending", not_before=50,
                 last_error="e", now=26)  # fmt: skip
    await change("finish_delivery", id="d0", owner="o2", state="dead", not_before=50,
                 last_error="e", now=26)  # fmt: skip
    await run("replay_delivery", id="d0", now=30)
    await run("replay_delivery", id="d0", now=31)
    await run("claim_deliveries", handler="h", owner="o3", lease_until=90, now=60, limit=10)
    await change("return_delivery", id="d0", owner="o3", not_before=70, now=61)
    await change("return_delivery", id="d0", owner="o3", not_before=70, now=61)  # not o3's now
    await run("list_deliveries", state=None, handler="h", limit=10)
    await change("release_deliveries", owner="o1")
    await run("list_deliveries", state=None, handler=None, limit=10)
    await run("list_deliveries", state="pending", handler="h", limit=1)
    for n, (kind, ref, due) in enumerate(
        [("w", "a0", 9), ("w", "a1", 3), ("w", "a0", 1), ("x", "a0", 5)]
    ):
        await change("insert_timer", id=f"t{n}", kind=kind, ref=ref, due_at=due)
    await run("next_timer")
    await run("next_due_timer", now=0)
    await run("next_due_timer", now=4)
    await change("delete_timer", kind="w", ref="a1")
    await run("next_due_timer", now=9)
    await run("lock_attempt", id="a1")
    await run("try_lock_attempt", id="a2")
    await run("lock_attempt", id="nope")
    await run("next_timer")
    await run("lock_dialing")
    await run("try_lock_sweeper")
    await run("notify", topic="dial")
    await run("get_pacing", bucket="dial")
    await change("put_pacing", bucket="dial", tokens=1.5, now=3, paused_until=0, reason=None,
                 factor=1.0)  # fmt: skip
    await change("put_pacing", bucket="dial", tokens=0.5, now=4, paused_until=9, reason="r",
                 factor=0.5)  # fmt: skip
    await run("get_pacing", bucket="dial")
    await change("extend_attempt_lease", id="a1", owner="o2", lease_until=10)
    await change("extend_attempt_lease", id="a1", owner="o2", lease_until=99)
    await change("extend_attempt_lease", id="a2", owner="o2", lease_until=99)
    await change("extend_delivery_lease", id="d1", owner="o2", lease_until=99)
    await change("extend_delivery_lease", id="d2", owner="o1", lease_until=99)
    await run("list_deliveries", state=None, handler=None, limit=10)
    await run("list_attempts", call_id="c1")
    await run("get_attempt_by_number", call_id="c1", number=2)
    await run("get_attempt_by_number", call_id="c1", number=9)
    await run("next_call_attempt", id="c1", previous=1, number=2, now=7)
    await run("next_call_attempt", id="c1", previous=1, number=3, now=8)
    await run("get_call", id="c1")
    await change("kv_set", scope="p", key="k", value='"v1"', now=1)
    await change("kv_set", scope="p", key="k", value='"v2"', now=2)
    await change("kv_set", scope="q", key="k", value="3", now=2)
    await run("kv_get", scope="p", key="k")
    await run("kv_get", scope="p", key="none")
    await change("kv_delete", scope="p", key="k")
    await change("kv_delete", scope="p", key="k")
    await run("kv_get", scope="p", key="k")
    await run("kv_get", scope="q", key="k")
    campaign = {"settings": "{}", "priority": 1, "share": 2.0, "budget": None,
                "price_per_minute": 0.1}  # fmt: skip
    await run("insert_campaign", id="k1", name="spring", status="active", now=1, **campaign)
    await run("insert_campaign", id="k2", name="autumn", status="paused", now=2, **campaign)
    await run("insert_campaign", id="k1", name="dup", status="active", now=3, **campaign)
    await run("active_campaigns")
    await run("get_campaign", id="k2")
    await run("list_campaigns", limit=10)
    await run("set_campaign_status", id="k1", status="paused", reason="r", from_a="active",
              from_b="active", now=4)  # fmt: skip
    await run("set_campaign_status", id="k1", status="active", reason=None, from_a="canceled",
              from_b="canceled", now=5)  # fmt: skip
    await change("count_campaign_rows", id="k1", total=10, invalid=2, now=6)
    await change("campaign_dialed", id="k1")
    await run("campaign_spent", id="k1", cost=0.25, seconds=150.0, now=7)
    for number in ("+15550000002", "+15550000001"):
        await change("add_do_not_call", number=number, reason=None, now=1)
    await run("list_do_not_call", after="", limit=10)
    await run("list_do_not_call", after="+15550000001", limit=1)
    await run("begin_import", id="k1", now=6)
    await run("begin_import", id="nope", now=6)
    for import_no, line in ((1, 3), (1, 1), (1, 3), (2, 1), (2, 3)):
        await change("insert_campaign_error", campaign_id="k1", import_no=import_no, line=line,
                     reason=f"bad {line}")  # fmt: skip
    await run("list_campaign_errors", campaign_id="k1", after_import=0, after_line=0, limit=10)
    await run("list_campaign_errors", campaign_id="k1", after_import=1, after_line=1, limit=10)
    await run("list_campaign_errors", campaign_id="k1", after_import=1, after_line=3, limit=1)
    await run("campaign_progress", campaign="x")
    await change("cancel_campaign_calls", campaign="k1", now=8)
    await change("cancel_campaign_queue", campaign="k1", reason="stop", now=8)
    await run("list_attempts", call_id="c1")
    await change("add_do_not_call", number="+19", reason="asked", now=1)
    await change("add_do_not_call", number="+19", reason="again", now=2)
    await run("is_do_not_call", number="+19")
    await change("remove_do_not_call", number="+19")
    await run("is_do_not_call", number="+19")
    await change("bulk_insert_call", id="b1", to_number="+17", from_number="+2", agent_id=None,
                 campaign="k1", metadata="{}", purpose=None, goal=None, template_id=None,
                 now=9)  # fmt: skip
    await change("bulk_insert_attempt", id="ba1", call_id="b1", to_number="+17",
                 from_number="+2", webhook_token="bt1", priority=0, not_before=9, now=9,
                 campaign="k1")  # fmt: skip
    await run("get_call", id="b1")
    await run("get_attempt", id="ba1")
    await run("campaign_progress", campaign="k1")
    await run("campaign_queued_numbers", campaign="k1")
    await run("campaign_queued_numbers", campaign="x")
    await run("campaign_live")
    await run("set_campaign_settings", id="k1", settings='{"priority": 3}', priority=3, share=1.0,
              budget=2.5, price_per_minute=0.2, now=10)  # fmt: skip
    await run("set_campaign_settings", id="nope", settings="{}", priority=0, share=1.0,
              budget=None, price_per_minute=0.0, now=10)  # fmt: skip
    await change("reprioritize_campaign_queue", campaign="k1", priority=3)
    await run("get_attempt", id="ba1")
    await change("start_campaign_import", id="k2", until=20.0)
    await change("start_campaign_import", id="k2", until=25.0)
    await change("extend_campaign_import", id="k2", until=26.0)
    await change("set_campaign_status", id="k2", status="active", reason=None, from_a="paused",
                 from_b="paused", now=10)  # fmt: skip
    await run("unfinished_campaigns", now=10)
    await run("unfinished_campaigns", now=30)
    await change("end_campaign_import", id="k2")
    await run("lock_campaign", id="k2")
    await run("complete_campaign", id="k2", now=10)  # the other import is still under way
    await change("end_campaign_import", id="k2")
    await change("end_campaign_import", id="k2")  # one too many: stays at 0
    await run("lock_campaign", id="k2")
    await run("complete_campaign", id="k2", now=10)
    await run("complete_campaign", id="k2", now=11)
    await run("list_open_campaigns", limit=10)
    await change("reopen_campaign", id="k2", now=12)
    await change("reopen_campaign", id="k2", now=13)
    await run("list_open_campaigns", limit=1)
    await run("campaign_open_call", campaign="k1")
    await run("campaign_open_call", campaign="k2")
    await run("campaign_pending_delivery", campaign="k1")
    await run("campaign_pending_delivery", campaign="x")
    await run("campaign_last_call", campaign="k1")
    await run("campaign_last_call", campaign="k2")
    await run("queued_by_hold", now=5)
    await run("queued_by_hold", now=50)
    await run("count_dead_deliveries")
    await run("insert_receipt", id="r", now=1, body="b")
    await run("insert_receipt", id="r", now=2, body="c")
    await change("update_receipt", id="r", attempt_id="a0", outcome="applied")
    await change("update_receipt", id="nope", attempt_id="a0", outcome="applied")
    return out


async def test_a_refused_body_does_not_preempt_the_real_delivery(store: Store) -> None:
    call_id, got = await dialing(store)
    body = hook(CallStatus.BUSY, provider_call_id="P1")
    assert (await store.ingest(body, token="made-up")).outcome is Ingest.UNMATCHED
    assert (await store.ingest(body, token="made-up")).outcome is Ingest.UNMATCHED
    applied = await store.ingest(body, token=got.attempt.webhook_token)
    assert applied.outcome is Ingest.APPLIED and applied.call_id == call_id
    again = await store.ingest(body, token=got.attempt.webhook_token)
    assert again.outcome is Ingest.DUPLICATE and again.events == ()


async def test_dead_letters_can_be_replayed(store: Store, clock: FakeClock) -> None:
    await store.create_call(new_call())
    [delivery] = await store.claim_deliveries("audit", "w1", limit=10, lease=10)
    await store.finish_delivery(delivery, "w1", error="boom")
    [dead] = await store.list_deliveries(state="dead")
    assert await store.replay_deliveries([dead.id, "no-such-id"]) == [
        dataclasses.replace(
            dead, state="pending", tries=0, not_before=clock.now, last_error=None,
            updated_at=clock.now,
        )
    ]  # fmt: skip
    assert await store.replay_deliveries([dead.id]) == []  # not dead any more
    [again] = await store.claim_deliveries("audit", "w2", limit=1, lease=10)
    assert again.id == dead.id and again.tries == 1


# -- group commit ----------------------------------------------------------------------------


async def test_ingest_many_is_ingest_for_each_in_one_transaction(store: Store) -> None:
    first_id, first = await dialing(store, "+15550000001")
    second_id, second = await dialing(store, "+15550000002")
    ringing = hook(CallStatus.RINGING, provider_call_id="P1")
    results = await store.ingest_many(
        [
            (ringing, first.attempt.webhook_token),
            (hook(CallStatus.RINGING, provider_call_id="P2"), second.attempt.webhook_token),
            (ringing, first.attempt.webhook_token),  # the same delivery twice in one batch
            (hook(CallStatus.COMPLETED, provider_call_id="P1"), first.attempt.webhook_token),
            (hook(CallStatus.RINGING), "no-such-token"),
        ]
    )
    outcomes = [r.outcome for r in results if not isinstance(r, Exception)]
    assert outcomes == [
        Ingest.APPLIED,
        Ingest.APPLIED,
        Ingest.DUPLICATE,
        Ingest.APPLIED,
        Ingest.UNMATCHED,
    ]
    events = await events_of(store, first_id)
    assert events[-2:] == ["call.ringing", "call.completed"] and len(set(events)) == len(events)
    assert (await call_row(store, first_id)).status == "completed"
    assert (await call_row(store, second_id)).status == "ringing"


class FailingOn(Store):
    """A store whose webhook processing fails for one body (a fault in one delivery)."""

    poison = b'"poison"'

    async def _ingest(self, tx: Any, hook: Webhook, token: str | None, *, now: float) -> Any:
        if self.poison in hook.raw:
            raise exceptions.StoreError("this one cannot be written")
        return await super()._ingest(tx, hook, token, now=now)


async def test_one_failing_webhook_fails_alone(env: Env) -> None:
    store = FailingOn(env.store.connector, router=env.store.router, clock=env.store.clock)
    call_id, got = await dialing(store)
    token = got.attempt.webhook_token
    results = await store.ingest_many(
        [
            (hook(CallStatus.RINGING), token),
            (hook(CallStatus.IN_PROGRESS, raw=b'{"poison": "poison"}'), token),
            (hook(CallStatus.COMPLETED), token),
        ]
    )
    assert [type(r).__name__ for r in results] == ["IngestResult", "StoreError", "IngestResult"]
    assert (await call_row(store, call_id)).status == "completed"
    assert "call.in_progress" not in await events_of(store, call_id)


async def test_settle_and_claim_records_done_and_claims_the_next_of_the_call(
    store: Store,
) -> None:
    await store.create_call(new_call())
    got = await claim(store)
    await store.ingest(hook(CallStatus.RINGING), token=got.attempt.webhook_token)
    [first] = await store.claim_deliveries("audit", "w1", limit=10, lease=30)
    assert first.event.type == "call.queued"
    # In one turn: the first is recorded done, so the call's next delivery can be claimed.
    [second], lost = await store.settle_and_claim("audit", "w1", done=[first], limit=10, lease=30)
    assert second.event.type == "call.ringing" and lost == []
    assert [d.state for d in await store.list_deliveries(handler="audit")] == [
        "done",
        "pending",
    ]
    # Recording a delivery whose lease another worker holds is refused and reported.
    none, lost = await store.settle_and_claim("audit", "w2", done=[second], limit=0, lease=30)
    assert none == [] and lost == [second.id]


def test_the_claims_hot_queries_are_index_lookups_on_sqlite() -> None:
    """The plans that keep a claim cheap however long the queue (a scan here would read every
    queued call on each claim)."""
    conn = sqlite3.connect(":memory:")
    for migration in migrations():
        for statement in statements(migration.sql.replace("{serial}", "INTEGER")):
            conn.execute(statement)
    sql = queries("sqlite")

    def plan(name: str, **params: Any) -> str:
        return " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql[name], params))

    assert "INDEX attempts_queue (not_before<?)" in plan("any_due_attempt", now=1.0)
    campaign = plan("due_attempts_of_campaign", campaign="c", now=1.0, limit=5)
    assert "USING INDEX attempts_campaign_queue" in campaign and "TEMP B-TREE" not in campaign
    recent = plan("count_recent_attempts", to_number="+1", since=1.0)
    assert "attempts_by_number_recent" in recent


def test_typed_rows_read_every_column_of_their_table() -> None:
    """A migration that adds a column fails here until the typed row reads it too (and a
    field no table has is caught as well)."""
    from orchestrator.connectors.protocol import MIGRATIONS_TABLE, pending
    from orchestrator.store.rows import Attempt, DeliveryRecord, columns

    db = sqlite3.connect(":memory:")
    db.execute(MIGRATIONS_TABLE.format(real="REAL"))
    for step in pending([], serial="INTEGER"):
        for statement in step.statements:
            db.execute(statement)
    for table, kind in (("calls", Call), ("attempts", Attempt), ("deliveries", DeliveryRecord)):
        have = sorted(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
        assert sorted(columns(kind)) == have, table
