"""The values in orchestrator.model: ids, and the checks on JSON that comes from outside."""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid

import pytest

from orchestrator.model import (
    CallStatus,
    Event,
    load_json,
    new_id,
    next_id_value,
    unstorable,
)

ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_ids_made_in_a_tight_loop_are_strictly_increasing_and_unique() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(10_000)]
    after = time.time_ns() // 1_000_000
    assert all(a < b for a, b in itertools.pairwise(ids)), "not strictly increasing"
    assert len(set(ids)) == len(ids)
    for value in (ids[0], ids[-1]):
        assert ID.fullmatch(value), value
        parsed = uuid.UUID(value)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
    # Many ids share a millisecond, so the counter did the work; the timestamps stay honest
    # (a carry may move one a millisecond or so ahead).
    stamps = [int(value.replace("-", "")[:12], 16) for value in ids]
    assert len(set(stamps)) < len(ids)
    assert before <= stamps[0] and stamps[-1] <= after + 2


def test_ids_from_several_threads_are_unique_and_increasing_per_thread() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_id() for _ in range(2_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for out in results:
        assert out == sorted(out) and len(set(out)) == len(out)
    assert len({i for out in results for i in out}) == 8_000


def test_next_id_value_counts_on_within_a_millisecond() -> None:
    ms = 1_700_000_000_000
    fresh = next_id_value(0, ms, 1000)
    assert fresh == ms << 74 | 1000
    # The same millisecond with lower random bits: a step of 1 + rand % 2**32 from the last.
    assert next_id_value(fresh, ms, 0) == fresh + 1
    assert next_id_value(fresh, ms, 41) == fresh + 42
    assert next_id_value(fresh, ms, 1000) == fresh + 1001
    high = ms << 74 | 1 << 73
    assert next_id_value(high, ms, (1 << 40) + 5) == high + 6  # the step stays below 2**32
    # Higher random bits in the same millisecond are already above the last value.
    assert next_id_value(fresh, ms, 1 << 70) == ms << 74 | 1 << 70
    # The clock stepped back: still above the last value.
    assert next_id_value(fresh, ms - 5, 7) == fresh + 8
    # A new millisecond starts from its own random bits.
    assert next_id_value(fresh, ms + 1, 3) == (ms + 1) << 74 | 3


def test_next_id_value_carries_into_the_timestamp() -> None:
    ms = 1_700_000_000_000
    top = ms << 74 | ((1 << 74) - 1)
    after = next_id_value(top, ms, 0)
    assert after == (ms + 1) << 74
    assert after > top


@pytest.mark.parametrize(
    "raw",
    [b"NaN", b'{"d": Infinity}', b'{"d": -Infinity}', b"[" * 100_000, b'{"a": ', b"\xff\xfe"],
)
def test_load_json_refuses_what_is_not_json(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        load_json(raw)


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"duration": 1e999}', "duration"),
        (b'{"data": {"extracted_data": {"x": [1, -1e400]}}}', "data.extracted_data.x.1"),
        (b"1e999", "body"),
        (b'{"call_id": "a\\ud800"}', "call_id"),
        (b'{"m": {"k\\udfff": 1}}', "m"),
    ],
)
def test_unstorable_names_where(raw: bytes, where: str) -> None:
    problem = unstorable(load_json(raw))
    assert problem is not None
    assert problem[0] == where


def test_unstorable_accepts_ordinary_json() -> None:
    body = load_json(b'{"a": [1, 2.5, -0.0, 1e308, "caf\\u00e9 \\ud83d\\ude00", null, true]}')
    assert unstorable(body) is None


def test_an_event_never_renders_a_non_finite_duration() -> None:
    queued = Event.from_json(
        {
            "id": new_id(),
            "type": CallStatus.COMPLETED.event_type,
            "occurred_at": "2026-03-01T12:00:00.000Z",
            "call": {"id": new_id(), "to": "+14155550100", "from": "+16045551234"},
            "status": "completed",
            "duration": float("inf"),
        }
    )
    assert queued.to_json()["duration"] is None
