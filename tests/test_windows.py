"""Calling windows: validation, the zones of a number, and is_open/next_open across zones and
daylight-saving changes. Every instant is a fixed datetime, never the real clock; the property
tests check next_open against an independent minute-of-week oracle and a bounded minute scan."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta, timezone
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator import exceptions, windows
from orchestrator.windows import CallingWindow, Weekday, is_open, next_open, zones_for

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
LA, NY, LONDON = "America/Los_Angeles", "America/New_York", "Europe/London"
LORD_HOWE, KOLKATA = "Australia/Lord_Howe", "Asia/Kolkata"
IDAHO = "+12085550123"  # area code 208 spans Mountain (Boise) and Pacific time


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def window(start: str, end: str, days: Sequence[str] | None = None, **more: Any) -> CallingWindow:
    fields: dict[str, Any] = {"start": start, "end": end, **more}
    if days is not None:
        fields["days"] = list(days)
    return CallingWindow.model_validate(fields)


def error_of(fields: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        CallingWindow.model_validate(fields)
    return str(info.value)


# -- the model --------------------------------------------------------------------------------


def test_the_config_shape_loads() -> None:
    w = CallingWindow.model_validate(
        {"start": "09:00", "end": "20:00", "days": WEEKDAYS, "time_zone": None}
    )
    assert (w.start, w.end) == (time(9), time(20))
    assert w.days == (Weekday.MON, Weekday.TUE, Weekday.WED, Weekday.THU, Weekday.FRI)
    assert w.time_zone is None
    assert w.fallback_time_zone is None
    assert not w.crosses_midnight


def test_days_default_to_the_whole_week() -> None:
    assert window("09:00", "17:00").days == windows.WEEK


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("09:00", time(9)),
        ("9:05", time(9, 5)),
        (" 23:59 ", time(23, 59)),
        (time(7, 30), time(7, 30)),
    ],
)
def test_times_are_read(value: object, expected: time) -> None:
    assert CallingWindow.model_validate({"start": value, "end": "00:00"}).start == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9", "not a time of day: '9' (use HH:MM"),
        ("09:00:00", "not a time of day: '09:00:00'"),
        ("24:00", "not a time of day: '24:00'"),
        ("09:60", "not a time of day: '09:60'"),
        ("nine", "not a time of day: 'nine'"),
        ("", "not a time of day: ''"),
        (None, "not a time of day: None"),
        (True, "not a time of day: True"),
        (1200, "write it as a quoted string"),
        (9.5, "write it as a quoted string"),
        (time(9, 0, 30), "whole minutes"),
        (time(9, tzinfo=UTC), "cannot carry a time zone"),
    ],
)
def test_bad_times_are_refused_clearly(value: object, message: str) -> None:
    assert message in error_of({"start": value, "end": "17:00"})


def test_days_are_read_in_any_case_and_spelling_in_week_order() -> None:
    w = window("09:00", "17:00", ["FRI", "Monday", "mon", " sun "])
    assert w.days == (Weekday.MON, Weekday.FRI, Weekday.SUN)


@pytest.mark.parametrize(
    ("days", "message"),
    [
        (["mon", "funday"], "unknown day 'funday' (use mon, tue, wed, thu, fri, sat or sun)"),
        ([1], "unknown day 1"),
        ([], "days cannot be empty"),
        ("mon", "days must be a list of day names"),
        (None, "days must be a list of day names"),
    ],
)
def test_bad_days_are_refused_clearly(days: object, message: str) -> None:
    assert message in error_of({"start": "09:00", "end": "17:00", "days": days})


@pytest.mark.parametrize(
    "name", ["Mars/Base", "america/new_york", "", "../etc/passwd", "localtime", "Etc/Unknown"]
)
@pytest.mark.parametrize("field", ["time_zone", "fallback_time_zone"])
def test_unknown_zones_are_refused_clearly(field: str, name: str) -> None:
    message = error_of({"start": "09:00", "end": "17:00", field: name})
    assert f"unknown time zone {name!r} (use an IANA name" in message


def test_an_empty_window_is_refused() -> None:
    message = error_of({"start": "09:00", "end": "9:00"})
    assert "start and end are both 09:00: the window would be empty" in message


def test_unknown_keys_are_refused_and_a_window_is_frozen() -> None:
    assert "extra" in error_of({"start": "09:00", "end": "17:00", "timezone": "UTC"}).lower()
    w = window("09:00", "17:00")
    with pytest.raises(ValidationError):
        w.start = time(8)


def test_a_window_reads_from_yaml_and_explains_unquoted_times() -> None:
    good = yaml.safe_load("start: '09:00'\nend: '20:00'\ndays: [mon, fri]\ntime_zone: null\n")
    assert window(**good).days == (Weekday.MON, Weekday.FRI)
    # YAML 1.1 reads 20:00 as 1200 (base 60); the message says what to do.
    bad = yaml.safe_load("start: '09:00'\nend: 20:00\n")
    assert bad["end"] == 1200
    assert "unquoted in YAML, 20:00 is read as the number 1200" in error_of(bad)


def test_a_window_round_trips_through_json() -> None:
    w = window("20:00", "02:00", ["fri", "sat"], time_zone=NY)
    dumped = w.model_dump(mode="json")
    assert dumped == {
        "start": "20:00",
        "end": "02:00",
        "days": ["fri", "sat"],
        "time_zone": NY,
        "fallback_time_zone": None,
    }
    assert CallingWindow.model_validate_json(w.model_dump_json()) == w
    assert CallingWindow.model_validate(dumped) == w
    assert w.crosses_midnight
    schema = CallingWindow.model_json_schema()
    assert schema["properties"]["start"]["pattern"] == r"^([01]?[0-9]|2[0-3]):[0-5][0-9]$"


# -- the zones of a number --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "zones"),
    [
        ("+14155551234", (LA,)),
        ("+12125551234", (NY,)),
        ("+442079460000", (LONDON,)),
        ("+919876543210", ("Asia/Calcutta",)),  # phonenumbers' name; zoneinfo links it to Kolkata
        ("+61265632345", (LORD_HOWE,)),
        ("+61255501234", ("Australia/Sydney",)),
        (IDAHO, ("America/Boise", LA)),
    ],
)
def test_zones_for_a_geographic_number(number: str, zones: tuple[str, ...]) -> None:
    assert zones_for(number) == zones


def test_a_toll_free_number_is_in_every_nanp_zone() -> None:
    zones = zones_for("+18005551234")
    assert {NY, LA, "Pacific/Honolulu", "Pacific/Guam", "America/St_Johns"} <= set(zones)


def test_a_number_with_no_known_zone_needs_a_fallback() -> None:
    satellite = "+883510000000094"
    with pytest.raises(exceptions.UnknownTimeZone, match="no time zone is known for \\+883510"):
        zones_for(satellite)
    assert zones_for(satellite, default=LONDON) == (LONDON,)
    with pytest.raises(exceptions.UnknownTimeZone, match="unknown time zone 'Nowhere'"):
        zones_for(satellite, default="Nowhere")
    assert exceptions.UnknownTimeZone("x").code == "UNKNOWN_TIME_ZONE"
    assert isinstance(exceptions.UnknownTimeZone("x"), exceptions.InputError)


@pytest.mark.parametrize(
    "number", ["+1415555123", "14155551234", "+1 415 555 1234", "+15555551234"]
)
def test_zones_for_refuses_an_invalid_number(number: str) -> None:
    with pytest.raises(exceptions.InvalidNumber):
        zones_for(number)


def test_a_window_picks_its_zones() -> None:
    assert window("09:00", "17:00").zones_for("+14155551234") == (LA,)
    assert window("09:00", "17:00", time_zone=KOLKATA).zones_for("+14155551234") == (KOLKATA,)
    fallback = window("09:00", "17:00", fallback_time_zone=LONDON)
    assert fallback.zones_for("+883510000000094") == (LONDON,)
    assert fallback.zones_for("+12125551234") == (NY,)
    with pytest.raises(exceptions.UnknownTimeZone):
        window("09:00", "17:00").zones_for("+883510000000094")


# -- is_open ----------------------------------------------------------------------------------

BUSINESS = window("09:00", "20:00", WEEKDAYS)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (utc(2024, 3, 4, 16, 59), False),  # Mon 08:59 PST
        (utc(2024, 3, 4, 17, 0), True),  # Mon 09:00 PST
        (utc(2024, 3, 5, 3, 59, 59, 999999), True),  # Mon 19:59:59.999999 PST
        (utc(2024, 3, 5, 4, 0), False),  # Mon 20:00 PST: the end is excluded
        (utc(2024, 3, 2, 20, 0), False),  # Sat 12:00 PST
        (utc(2024, 3, 9, 3, 0), True),  # Fri 19:00 PST (Saturday in UTC)
        (utc(2024, 3, 11, 16, 0), True),  # Mon 09:00 PDT, the day after the change
    ],
)
def test_is_open_in_los_angeles(at: datetime, expected: bool) -> None:
    assert is_open(BUSINESS, (LA,), at) is expected


def test_is_open_accepts_any_aware_datetime() -> None:
    at = datetime(2024, 3, 4, 9, 0, tzinfo=ZoneInfo(LA))
    assert is_open(BUSINESS, (LA,), at)
    assert is_open(BUSINESS, (LA,), at.astimezone(timezone(timedelta(hours=5, minutes=30))))
    assert not is_open(BUSINESS, (LA,), at - timedelta(microseconds=1))
    assert is_open(BUSINESS, (KOLKATA,), utc(2024, 3, 4, 3, 30))  # 09:00 IST
    assert not is_open(BUSINESS, (KOLKATA,), utc(2024, 3, 4, 3, 29))


def test_a_number_in_two_zones_needs_both_open() -> None:
    zones = zones_for(IDAHO)  # Boise (MST, UTC-7) and Los Angeles (PST, UTC-8) in January
    assert not is_open(BUSINESS, zones, utc(2024, 1, 8, 16, 59))  # 09:59 Boise, 08:59 LA
    assert is_open(BUSINESS, zones, utc(2024, 1, 8, 17, 0))
    assert is_open(BUSINESS, zones, utc(2024, 1, 9, 2, 59))
    assert not is_open(BUSINESS, zones, utc(2024, 1, 9, 3, 0))  # 20:00 Boise, 19:00 LA
    assert next_open(BUSINESS, zones, utc(2024, 1, 8, 12, 0)) == utc(2024, 1, 8, 17, 0)


def test_the_windows_own_zone_wins() -> None:
    w = window("09:00", "20:00", WEEKDAYS, time_zone=KOLKATA)
    assert is_open(w, (LA,), utc(2024, 3, 4, 4, 0))  # 09:30 IST, 20:00 PST Sunday
    assert is_open(w, (), utc(2024, 3, 4, 4, 0))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="aware datetime"):
        is_open(BUSINESS, (LA,), datetime(2024, 3, 4, 12, 0))
    with pytest.raises(ValueError, match="aware datetime"):
        next_open(BUSINESS, (LA,), datetime(2024, 3, 4, 12, 0))
    with pytest.raises(TypeError, match="not one string"):
        is_open(BUSINESS, LA, utc(2024, 3, 4))
    with pytest.raises(exceptions.UnknownTimeZone, match="no time zone given"):
        is_open(BUSINESS, (), utc(2024, 3, 4))
    with pytest.raises(exceptions.UnknownTimeZone, match="'Etc/Unknown'"):
        next_open(BUSINESS, ("Etc/Unknown",), utc(2024, 3, 4))


# -- next_open --------------------------------------------------------------------------------


def test_next_open_is_now_when_open() -> None:
    at = datetime(2024, 3, 4, 12, 0, 30, tzinfo=ZoneInfo(LA))
    found = next_open(BUSINESS, (LA,), at)
    assert found == at
    assert found is not None
    assert found.tzinfo is UTC


def test_next_open_skips_the_weekend() -> None:
    friday_evening = utc(2024, 3, 2, 1, 0)  # Fri 20:00 EST
    assert next_open(BUSINESS, (NY,), friday_evening) == utc(2024, 3, 4, 14, 0)  # Mon 09:00
    saturday = window("10:00", "16:00", ["sat"])
    assert next_open(saturday, (NY,), utc(2024, 3, 2, 21, 0)) == utc(2024, 3, 9, 15, 0)


def test_next_open_in_kolkata() -> None:
    assert next_open(BUSINESS, (KOLKATA,), utc(2024, 6, 3, 15, 0)) == utc(2024, 6, 4, 3, 30)


@pytest.mark.parametrize(
    ("monday", "opens", "closes"),
    [
        # New York and London are 5 hours apart, except between the US and the EU changes.
        ((2024, 3, 4), 14, 17),  # both on winter time: 09:00 EST to 17:00 GMT
        ((2024, 3, 11), 13, 17),  # US on summer time since Mar 10, EU not yet: 4 hours apart
        ((2024, 4, 1), 13, 16),  # both on summer time since Mar 31 (EU): 09:00 EDT to 17:00 BST
        ((2024, 10, 28), 13, 17),  # EU back on winter time since Oct 27, the US not yet
        ((2024, 11, 4), 14, 17),  # both on winter time since Nov 3 (US)
    ],
)
def test_us_and_eu_change_on_different_dates(
    monday: tuple[int, int, int], opens: int, closes: int
) -> None:
    office = window("09:00", "17:00", WEEKDAYS)
    zones = (NY, LONDON)
    assert next_open(office, zones, utc(*monday)) == utc(*monday, opens)
    assert is_open(office, zones, utc(*monday, closes - 1, 59))
    assert not is_open(office, zones, utc(*monday, closes))


def test_a_start_in_the_spring_forward_gap_opens_at_the_jump() -> None:
    # New York, Sun 2024-03-10: 01:59:59 EST (06:59:59Z) is followed by 03:00 EDT (07:00Z).
    w = window("02:30", "05:00", ["sun"])
    assert next_open(w, (NY,), utc(2024, 3, 10, 5, 0)) == utc(2024, 3, 10, 7, 0)
    assert not is_open(w, (NY,), utc(2024, 3, 10, 6, 59, 59))
    # A week later 02:30 exists again: 02:30 EDT.
    assert next_open(w, (NY,), utc(2024, 3, 10, 9, 0)) == utc(2024, 3, 17, 6, 30)
    # London jumps from 01:00 GMT to 02:00 BST on Sun 2024-03-31 at 01:00Z.
    london = window("01:30", "03:00", ["sun"])
    assert next_open(london, (LONDON,), utc(2024, 3, 30, 23, 0)) == utc(2024, 3, 31, 1, 0)


def test_an_end_in_the_spring_forward_gap_closes_at_the_jump() -> None:
    w = window("00:00", "02:30", ["sun"])
    assert is_open(w, (NY,), utc(2024, 3, 10, 6, 59, 59))  # 01:59:59 EST
    assert not is_open(w, (NY,), utc(2024, 3, 10, 7, 0))  # 03:00 EDT


def test_a_start_in_the_fall_back_fold_follows_the_clock() -> None:
    # New York, Sun 2024-11-03: 01:59:59 EDT (05:59:59Z) is followed by 01:00 EST (06:00Z).
    w = window("01:30", "05:00", ["sun"])
    assert next_open(w, (NY,), utc(2024, 11, 3, 4, 0)) == utc(2024, 11, 3, 5, 30)  # 01:30 EDT
    assert is_open(w, (NY,), utc(2024, 11, 3, 5, 59))
    assert not is_open(w, (NY,), utc(2024, 11, 3, 6, 0))  # the clock reads 01:00 again
    assert next_open(w, (NY,), utc(2024, 11, 3, 6, 0)) == utc(2024, 11, 3, 6, 30)  # 01:30 EST
    assert is_open(w, (NY,), utc(2024, 11, 3, 9, 59))  # 04:59 EST


def test_an_end_in_the_fall_back_fold_reopens_for_the_repeated_time() -> None:
    w = window("22:00", "01:30", ["sat"])
    assert next_open(w, (NY,), utc(2024, 11, 2, 12, 0)) == utc(2024, 11, 3, 2, 0)  # 22:00 EDT
    assert not is_open(w, (NY,), utc(2024, 11, 3, 5, 30))  # 01:30 EDT
    assert next_open(w, (NY,), utc(2024, 11, 3, 5, 30)) == utc(2024, 11, 3, 6, 0)  # 01:00 EST
    assert not is_open(w, (NY,), utc(2024, 11, 3, 6, 30))  # 01:30 EST
    assert next_open(w, (NY,), utc(2024, 11, 3, 6, 30)) == utc(2024, 11, 10, 3, 0)


def test_lord_howe_and_its_half_hour_change() -> None:
    daily = window("09:00", "17:00")
    # Sun 2024-04-07 02:00 LHDT (UTC+11) becomes 01:30 LHST (UTC+10:30), at 15:00Z.
    assert next_open(daily, (LORD_HOWE,), utc(2024, 4, 5, 12, 0)) == utc(2024, 4, 5, 22, 0)
    assert next_open(daily, (LORD_HOWE,), utc(2024, 4, 6, 12, 0)) == utc(2024, 4, 6, 22, 30)
    fold = window("01:45", "03:00", ["sun"])
    assert next_open(fold, (LORD_HOWE,), utc(2024, 4, 6, 12, 0)) == utc(2024, 4, 6, 14, 45)
    assert not is_open(fold, (LORD_HOWE,), utc(2024, 4, 6, 15, 0))  # 01:30 LHST
    assert next_open(fold, (LORD_HOWE,), utc(2024, 4, 6, 15, 0)) == utc(2024, 4, 6, 15, 15)
    # Sun 2024-10-06 02:00 LHST jumps to 02:30 LHDT, at 15:30Z: a 02:15 start opens then.
    gap = window("02:15", "04:00", ["sun"])
    assert next_open(gap, (LORD_HOWE,), utc(2024, 10, 5, 12, 0)) == utc(2024, 10, 5, 15, 30)
    assert not is_open(gap, (LORD_HOWE,), utc(2024, 10, 5, 15, 29, 59))


def test_a_window_across_midnight() -> None:
    late = window("20:00", "02:00", ["fri"])
    assert late.crosses_midnight
    cases = [
        (utc(2024, 3, 2, 0, 59), False),  # Fri 19:59 EST
        (utc(2024, 3, 2, 1, 0), True),  # Fri 20:00
        (utc(2024, 3, 2, 6, 59), True),  # Sat 01:59
        (utc(2024, 3, 2, 7, 0), False),  # Sat 02:00
        (utc(2024, 3, 3, 1, 0), False),  # Sat 20:00: Saturday is not a day of the window
        (utc(2024, 3, 1, 6, 0), False),  # Fri 01:00: Thursday's window would be, not Friday's
    ]
    for at, expected in cases:
        assert is_open(late, (NY,), at) is expected, at
    assert next_open(late, (NY,), utc(2024, 3, 2, 7, 0)) == utc(2024, 3, 9, 1, 0)
    # Sunday's window runs into Monday, across the end of the week.
    sunday_night = window("22:00", "06:00", ["sun"])
    assert is_open(sunday_night, (NY,), utc(2024, 3, 4, 10, 0))  # Mon 05:00 EST
    assert not is_open(sunday_night, (NY,), utc(2024, 3, 5, 10, 0))  # Tue 05:00 EST


def test_a_window_ending_at_midnight() -> None:
    w = window("09:00", "00:00", ["mon"])
    assert is_open(w, (LONDON,), utc(2024, 1, 1, 23, 59, 59))
    assert not is_open(w, (LONDON,), utc(2024, 1, 2, 0, 0))
    assert next_open(w, (LONDON,), utc(2024, 1, 2, 0, 0)) == utc(2024, 1, 8, 9, 0)


def test_zones_too_far_apart_never_open() -> None:
    hour = window("09:00", "10:00", WEEKDAYS)
    assert next_open(hour, (KOLKATA, LA), utc(2024, 3, 4)) is None
    # A US toll-free number may ring from St John's (UTC-3:30, summer -2:30) round to Guam
    # (UTC+10): in winter, 09:00 Tuesday in Guam is 19:30 Monday in St John's, so the window is
    # open in every zone for 30 minutes; in summer, St John's closes before Guam opens.
    toll_free = zones_for("+18005551234")
    assert next_open(BUSINESS, toll_free, utc(2024, 3, 4)) == utc(2024, 3, 4, 23, 0)
    assert not is_open(BUSINESS, toll_free, utc(2024, 3, 4, 23, 30))
    assert next_open(BUSINESS, toll_free, utc(2024, 3, 11)) is None


def test_an_offset_change_can_make_a_window_possible() -> None:
    # Phoenix keeps UTC-7; Denver is UTC-6 in summer, UTC-7 from Sun 2024-11-03.
    hour = window("09:00", "10:00", WEEKDAYS)
    zones = ("America/Phoenix", "America/Denver")
    assert next_open(hour, zones, utc(2024, 7, 1)) is None
    assert next_open(hour, zones, utc(2024, 10, 28), horizon=timedelta(days=3)) is None
    found = next_open(hour, zones, utc(2024, 10, 28), horizon=timedelta(days=14))
    assert found == utc(2024, 11, 4, 16, 0)  # Mon 09:00 MST in both


def test_next_open_tries_few_instants(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = windows._open_everywhere

    def counting(*args: Any) -> bool:
        nonlocal calls
        calls += 1
        return real(*args)

    monkeypatch.setattr(windows, "_open_everywhere", counting)
    assert next_open(window("09:00", "10:00", ["mon"]), (NY,), utc(2024, 3, 5)) is not None
    assert calls < 20  # a week ahead, not 10,000 minutes


@pytest.mark.parametrize(
    ("number", "days"),
    [
        ("+18005551234", None),  # toll-free: every NANP zone, from UTC+10 to UTC-11
        ("+79123456789", WEEKDAYS),  # a Russian mobile: Kaliningrad-ish to Kamchatka
        ("+61412345678", WEEKDAYS),  # an Australian mobile, Lord Howe and Christmas Island too
    ],
)
def test_numbers_in_many_zones(number: str, days: list[str] | None) -> None:
    w = window("09:00", "21:00", days)
    zones = zones_for(number)
    after = utc(2024, 3, 8, 18, 0)
    found = next_open(w, zones, after)
    assert found is not None
    check_earliest(w, zones, after, found)


# -- properties -------------------------------------------------------------------------------

ZONES = [
    LA,
    NY,
    LONDON,
    LORD_HOWE,
    KOLKATA,
    "America/Boise",
    "America/Phoenix",
    "America/St_Johns",  # UTC-3:30
    "America/Santiago",  # changes at midnight
    "Australia/Sydney",
    "Pacific/Chatham",  # UTC+12:45 / +13:45
    "Asia/Kathmandu",  # UTC+5:45
    "Europe/Moscow",
]
# Some 2023-2026 changes of those zones, to start searches next to.
CHANGES = [
    *((NY, utc(y, 3, d, 7)) for y, d in [(2023, 12), (2024, 10), (2025, 9), (2026, 8)]),
    *((LA, utc(y, 11, d, 9)) for y, d in [(2023, 5), (2024, 3), (2025, 2), (2026, 1)]),
    *((LONDON, utc(y, 3, d, 1)) for y, d in [(2023, 26), (2024, 31), (2025, 30), (2026, 29)]),
    *((LONDON, utc(y, 10, d, 1)) for y, d in [(2023, 29), (2024, 27), (2025, 26), (2026, 25)]),
    (LORD_HOWE, utc(2024, 4, 6, 15, 0)),  # 02:00 back to 01:30
    (LORD_HOWE, utc(2024, 10, 5, 15, 30)),  # 02:00 on to 02:30
    ("Australia/Sydney", utc(2024, 4, 6, 16, 0)),
    ("America/Santiago", utc(2024, 4, 7, 3, 0)),  # Sunday 00:00 back to Saturday 23:00
    ("America/Santiago", utc(2024, 9, 8, 4, 0)),  # Sunday 00:00 on to 01:00
    ("Pacific/Chatham", utc(2024, 4, 6, 14, 0)),
    ("Pacific/Chatham", utc(2024, 9, 28, 14, 0)),
]


def test_the_changes_are_changes() -> None:
    for name, change in CHANGES:
        tz = ZoneInfo(name)
        assert (
            change.astimezone(tz).utcoffset()
            != (change - timedelta(seconds=1)).astimezone(tz).utcoffset()
        ), (name, change)


@cache
def open_minutes(start: int, end: int, days: tuple[int, ...]) -> frozenset[int]:
    """The minutes of the week (Monday 00:00 is 0) the window covers, by plain counting."""
    length = (end - start) % 1440
    return frozenset((day * 1440 + start + k) % 10080 for day in days for k in range(length))


def oracle(w: CallingWindow, zones: Sequence[str], at: datetime) -> bool:
    """Open, per wall clocks read at ``at`` and a table of the week's open minutes."""
    table = open_minutes(
        w.start.hour * 60 + w.start.minute,
        w.end.hour * 60 + w.end.minute,
        tuple(windows.WEEK.index(day) for day in w.days),
    )
    for name in zones:
        local = at.astimezone(ZoneInfo(name))
        if local.weekday() * 1440 + local.hour * 60 + local.minute not in table:
            return False
    return True


def check_earliest(
    w: CallingWindow, zones: Sequence[str], after: datetime, found: datetime | None
) -> None:
    """``found`` is next_open's answer: open, not before ``after``, and no minute between them is
    open (a bounded scan, at most the horizon); None means no minute of the horizon is open."""
    end = after + windows.DEFAULT_HORIZON if found is None else found
    if found is not None:
        assert found >= after
        assert found <= after + windows.DEFAULT_HORIZON
        assert is_open(w, zones, found)
        assert oracle(w, zones, found)
        if found > after:
            assert found.second == 0
            assert found.microsecond == 0
            assert not oracle(w, zones, found - timedelta(microseconds=1))
            assert not is_open(w, zones, found - timedelta(microseconds=1))
    assert not oracle(w, zones, after) or found == after
    minute = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while minute < end:
        assert not oracle(w, zones, minute), f"{minute} is open, earlier than {found}"
        minute += timedelta(minutes=1)


any_minute = st.integers(min_value=0, max_value=1439)
# Clocks change between 23:00 and 03:00 (Santiago at midnight, the US at 02:00, Lord Howe at
# 02:00 to 02:30...), so windows that start or end then meet the gaps and folds.
night_minute = st.integers(min_value=-60, max_value=180).map(lambda m: m % 1440)


@st.composite
def windows_(draw: st.DrawFn) -> CallingWindow:
    minutes = draw(st.sampled_from([any_minute, night_minute]))
    start = draw(minutes)
    end = draw(st.one_of(minutes, any_minute).filter(lambda m: m != start))
    days = draw(st.sets(st.sampled_from(windows.WEEK), min_size=1))
    return CallingWindow(
        start=time(start // 60, start % 60), end=time(end // 60, end % 60), days=tuple(days)
    )


zone_lists = st.lists(st.sampled_from(ZONES), min_size=1, max_size=3, unique=True)
anywhen = st.datetimes(
    min_value=datetime(2023, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
)


@st.composite
def near_a_change(draw: st.DrawFn) -> tuple[CallingWindow, list[str], datetime]:
    """A window around the time a zone changes its clocks, checked from shortly before."""
    name, change = draw(st.sampled_from(CHANGES))
    local = change.astimezone(ZoneInfo(name))
    around = local.hour * 60 + local.minute + draw(st.integers(min_value=-90, max_value=90))
    start = around % 1440
    end = draw(st.one_of(any_minute, st.just((start + 60) % 1440)).filter(lambda m: m != start))
    days = {windows.WEEK[(local.weekday() + draw(st.sampled_from([-1, 0, 0]))) % 7]}
    days |= draw(st.sets(st.sampled_from(windows.WEEK)))
    w = CallingWindow(
        start=time(start // 60, start % 60), end=time(end // 60, end % 60), days=tuple(days)
    )
    others = draw(st.lists(st.sampled_from(ZONES), max_size=1))
    after = change - timedelta(seconds=draw(st.integers(min_value=0, max_value=2 * 86400)))
    return w, list(dict.fromkeys([name, *others])), after


cases = st.one_of(st.tuples(windows_(), zone_lists, anywhen), near_a_change())


@given(cases)
@settings(max_examples=300, deadline=None)
def test_next_open_is_the_earliest_open_instant(
    case: tuple[CallingWindow, list[str], datetime],
) -> None:
    w, zones, after = case
    check_earliest(w, zones, after, next_open(w, zones, after))


@given(cases)
@settings(max_examples=1000, deadline=None)
def test_is_open_agrees_with_the_oracle(case: tuple[CallingWindow, list[str], datetime]) -> None:
    w, zones, at = case
    assert is_open(w, zones, at) == oracle(w, zones, at)
    for seconds in (-1, 30, 60, 1800, 3600):
        assert is_open(w, zones, at + timedelta(seconds=seconds)) == oracle(
            w, zones, at + timedelta(seconds=seconds)
        )


@given(cases)
@settings(max_examples=200, deadline=None)
def test_next_open_is_stable(case: tuple[CallingWindow, list[str], datetime]) -> None:
    w, zones, after = case
    found = next_open(w, zones, after)
    if found is not None:
        assert next_open(w, zones, found) == found
        local = after.astimezone(ZoneInfo(zones[0]))
        assert next_open(w, zones, local) == found  # the same instant, written in another zone
