"""Calling windows: the hours a person may be called, in the person's own local time.

The dialer asks two questions right before placing a call: :func:`is_open` (may we call now?)
and, when not, :func:`next_open` (when may we?). Both are pure: no clock, no I/O.

What "open" means
    An instant is open in a zone when the wall clock there reads a time inside the window on one
    of its days: ``start <= clock < end`` (``end`` excluded). A window whose ``end`` is not after
    its ``start`` crosses midnight (``20:00``-``02:00``); its days are the days it *starts* on,
    so ``days: [fri]`` covers Friday 20:00 to Saturday 02:00. For a number that may be in
    several zones (a US toll-free number, a mobile in a country with several zones), the window
    must be open in *all* of them, because we cannot tell which one the person is in. That
    common window can be short or empty: for a US toll-free number (St John's to Guam),
    ``09:00``-``20:00`` is open 30 minutes a day in winter and never in summer.

Daylight saving time
    Every decision follows from reading the wall clock at the instant, which is what the rules
    on calling hours are about; the UTC offsets come from :mod:`zoneinfo`.

    * Spring forward (a gap): a start that does not exist that day (``02:30`` when clocks jump
      from 02:00 to 03:00) opens the window at the jump, when the clock first reads a later
      time (03:00). An end inside the gap closes it at the jump.
    * Fall back (a fold): a time that happens twice (``01:30`` when clocks go from 02:00 back to
      01:00) opens or closes the window at its *first* occurrence. Then, while the clock reads
      the repeated hour, the window is open or closed for what it reads: a window starting at
      ``01:30`` closes at the fall-back (the clock reads 01:00, before the start) and reopens
      when it reads 01:30 again; a window ending at ``01:30`` reopens for the repeated
      01:00-01:30. Either way, nobody is called while their clock reads a time outside the
      window.

Unknown zones
    phonenumbers answers ``Etc/Unknown`` for numbers it cannot place (satellite, some
    non-geographic ranges). :func:`zones_for` then uses the fallback zone it is given; without
    one it raises :class:`UnknownTimeZone` rather than guess, and the caller refuses the call
    with that reason. An empty list of zones is refused the same way, never read as "no
    constraint".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezone
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator import phone
from orchestrator.exceptions import UnknownTimeZone

#: What phonenumbers answers for a number it cannot place in a zone.
UNKNOWN_ZONE = "Etc/Unknown"
#: How far :func:`next_open` looks ahead by default: a whole week of windows, plus a day for a
#: window that starts on the seventh day and crosses midnight.
DEFAULT_HORIZON = timedelta(days=8)

# Zone keys zoneinfo accepts that do not name a place: the server's own zone, and "unknown".
_NOT_PLACES = frozenset({"localtime", "posixrules", "Factory", UNKNOWN_ZONE})
_TIME = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")
_HOUR = 3600


class Weekday(StrEnum):
    """A day of the week, written as its three-letter English abbreviation."""

    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


#: The week in :meth:`datetime.weekday` order (Monday is 0).
WEEK: tuple[Weekday, ...] = tuple(Weekday)
_DAY_NAMES = {
    **{day.value: day for day in WEEK},
    **{
        name: day
        for name, day in zip(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
            WEEK,
            strict=True,
        )
    },
}


def _parse_time(value: object) -> time:
    """A wall-clock time from ``"HH:MM"`` (or a :class:`datetime.time` on whole minutes)."""
    if isinstance(value, time):
        if value.tzinfo is not None:
            raise ValueError("a window time is a wall-clock time: it cannot carry a time zone")
        if value.second or value.microsecond:
            raise ValueError(f"a window time is whole minutes, not {value.isoformat()}")
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 20:00 as the base-60 number 1200.
        raise ValueError(
            f"not a time of day: {value!r} (write it as a quoted string, e.g. '20:00'; "
            "unquoted in YAML, 20:00 is read as the number 1200)"
        )
    if isinstance(value, str):
        match = _TIME.fullmatch(value.strip())
        if match:
            return time(int(match.group(1)), int(match.group(2)))
    raise ValueError(f"not a time of day: {value!r} (use HH:MM, e.g. '09:00' or '20:30')")


def _format_time(value: time) -> str:
    return f"{value.hour:02d}:{value.minute:02d}"


def _parse_days(value: object) -> tuple[Weekday, ...]:
    """Days from a list of names (``mon`` or ``monday``, any case), in week order, deduplicated."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"days must be a list of day names, e.g. [mon, tue], not {value!r}")
    found: set[Weekday] = set()
    for item in value:
        day = _DAY_NAMES.get(item.strip().lower()) if isinstance(item, str) else None
        if day is None:
            raise ValueError(f"unknown day {item!r} (use {', '.join(WEEK[:-1])} or {WEEK[-1]})")
        found.add(day)
    if not found:
        raise ValueError("days cannot be empty: a window with no days never opens")
    return tuple(day for day in WEEK if day in found)


def zone(name: str) -> ZoneInfo:
    """The zone named ``name`` (an IANA name such as ``America/New_York``), else raise
    :class:`UnknownTimeZone`. Names that are not places (``localtime``, ``Etc/Unknown``) are
    refused: the server's zone says nothing about the person's."""
    if name not in _NOT_PLACES:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    raise UnknownTimeZone(
        f"unknown time zone {name!r} (use an IANA name such as 'America/New_York'; "
        "if it is one, install the tzdata package)"
    )


def _zone_name(value: str | None) -> str | None:
    if value is not None:
        try:
            zone(value)
        except UnknownTimeZone as exc:
            raise ValueError(exc.message) from None
    return value


_TIME_SCHEMA = {
    "type": "string",
    "pattern": r"^([01]?[0-9]|2[0-3]):[0-5][0-9]$",
    "description": "A local wall-clock time, HH:MM.",
}
#: A wall-clock time on whole minutes, written ``"HH:MM"``.
LocalTime = Annotated[
    time,
    BeforeValidator(_parse_time),
    PlainSerializer(_format_time, return_type=str),
    WithJsonSchema(_TIME_SCHEMA),
]
Days = Annotated[tuple[Weekday, ...], BeforeValidator(_parse_days)]


class CallingWindow(BaseModel):
    """When a person may be called, in their local time, e.g.
    ``{start: "09:00", end: "20:00", days: [mon, tue, wed, thu, fri]}``.

    ``end`` is excluded; an ``end`` at or before ``start`` crosses midnight (``00:00`` ends at
    midnight). ``days`` are the days a window starts on (default: every day). ``time_zone``,
    when set, is used instead of the number's zones (a campaign whose list says where people
    are); ``fallback_time_zone`` is used only for numbers whose zone phonenumbers cannot tell.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: LocalTime
    end: LocalTime
    days: Days = WEEK
    time_zone: str | None = None
    fallback_time_zone: str | None = None

    @field_validator("time_zone", "fallback_time_zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return _zone_name(value)

    @model_validator(mode="after")
    def _not_empty(self) -> CallingWindow:
        if self.start == self.end:
            raise ValueError(
                f"start and end are both {_format_time(self.start)}: the window would be empty "
                "(end is excluded; to allow calls at any hour, set no calling window)"
            )
        return self

    @property
    def crosses_midnight(self) -> bool:
        """True if the window ends on the day after it starts (``20:00``-``02:00``)."""
        return self.end < self.start

    def zones_for(self, number: str) -> tuple[str, ...]:
        """The zones this window is checked in for ``number``: ``time_zone`` if set, else the
        number's zones (``fallback_time_zone`` when those are unknown)."""
        if self.time_zone is not None:
            return (self.time_zone,)
        return zones_for(number, default=self.fallback_time_zone)


def zones_for(number: str, *, default: str | None = None) -> tuple[str, ...]:
    """The IANA zones an E.164 number may ring in, per phonenumbers' geographic data.

    A number phonenumbers cannot place (``Etc/Unknown``) gets ``(default,)``; without a default
    it raises :class:`UnknownTimeZone`, because any guess could ring someone at night. Raises
    :class:`~orchestrator.exceptions.InvalidNumber` for a number that is not valid E.164.
    """
    phone.validate_number(number)
    parsed = phonenumbers.parse(number, None)
    found = tuple(z for z in phone_timezone.time_zones_for_number(parsed) if z != UNKNOWN_ZONE)
    if not found:
        if default is None:
            raise UnknownTimeZone(
                f"no time zone is known for {number}: set the calling window's time_zone or "
                "fallback_time_zone to call it"
            )
        found = (default,)
    for name in found:
        zone(name)
    return found


def is_open(window: CallingWindow, zones: Iterable[str], at: datetime) -> bool:
    """True if ``window`` is open at the instant ``at`` in every one of ``zones``.

    ``zones`` are ignored when the window has its own ``time_zone``. ``at`` must be aware.
    """
    instant = _aware(at, "at")
    return _open_everywhere(window, _zones(window, zones), instant)


def next_open(
    window: CallingWindow,
    zones: Iterable[str],
    after: datetime,
    *,
    horizon: timedelta = DEFAULT_HORIZON,
) -> datetime | None:
    """The earliest instant at or after ``after`` when ``window`` is open in every zone, in UTC.

    Returns ``after`` (in UTC) if the window is open then, and None if it does not open within
    ``horizon``. The default horizon spans a whole week, so None means the zones are too far
    apart for the window (or its days) until an offset between them changes, e.g. until a
    daylight-saving change that only some of them make.

    The answer is found without scanning: the window can only open when, in some zone, the clock
    passes the start time (on each occurrence of it) or jumps at a UTC offset change, so only
    those instants are tried, in order.
    """
    begin = _aware(after, "after").astimezone(UTC)
    tzs = _zones(window, zones)
    if _open_everywhere(window, tzs, begin):
        return begin
    end = begin + horizon
    candidates: set[datetime] = set()
    for tz in tzs:
        candidates.update(t for t in _openings(window, tz, begin, end) if begin < t <= end)
    for candidate in sorted(candidates):
        if _open_everywhere(window, tzs, candidate):
            return candidate
    return None


def _aware(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (e.g. datetime.now(UTC)), not naive")
    return value


def _zones(window: CallingWindow, zones: Iterable[str]) -> tuple[ZoneInfo, ...]:
    if window.time_zone is not None:
        return (zone(window.time_zone),)
    if isinstance(zones, str):
        raise TypeError("zones must be a collection of zone names, not one string")
    found = tuple(zone(name) for name in dict.fromkeys(zones))
    if not found:
        raise UnknownTimeZone("no time zone given, so the calling window cannot be checked")
    return found


def _open_everywhere(window: CallingWindow, tzs: tuple[ZoneInfo, ...], instant: datetime) -> bool:
    return all(_open_in(window, tz, instant) for tz in tzs)


def _open_in(window: CallingWindow, tz: ZoneInfo, instant: datetime) -> bool:
    """Whether the wall clock in ``tz`` reads a time inside the window at ``instant``."""
    local = instant.astimezone(tz)
    clock = local.time()
    day = local.weekday()
    if window.start < window.end:
        return WEEK[day] in window.days and window.start <= clock < window.end
    # Crossing midnight: the evening part of today's window, or the morning part of yesterday's.
    return (WEEK[day] in window.days and clock >= window.start) or (
        WEEK[(day - 1) % 7] in window.days and clock < window.end
    )


def _openings(
    window: CallingWindow, tz: ZoneInfo, begin: datetime, end: datetime
) -> Iterator[datetime]:
    """Instants near [begin, end] when the window may open in ``tz``: each occurrence of the
    start time (both, in a fold; none, in a gap) and each UTC offset change (a clock jump)."""
    first = begin.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date() + timedelta(days=1)
    day = first
    while day <= last:
        if WEEK[day.weekday()] in window.days:
            wall = datetime.combine(day, window.start)
            for fold in (0, 1):
                instant = wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)
                if instant.astimezone(tz).replace(tzinfo=None) == wall:  # else it is in a gap
                    yield instant
        day += timedelta(days=1)
    for ordinal in range(begin.toordinal() - 1, end.toordinal() + 1):
        yield from _transitions(tz, ordinal)


@lru_cache(maxsize=8192)
def _transitions(tz: ZoneInfo, ordinal: int) -> tuple[datetime, ...]:
    """The instants in the UTC day ``ordinal`` at which ``tz`` changes its UTC offset.

    The offset is sampled hourly, then each change is narrowed to the second (tz data changes
    offsets on whole seconds). Two changes within one hour would be missed; no zone does that.
    """
    base = int(datetime.combine(date.fromordinal(ordinal), time(), UTC).timestamp())
    offsets = [_offset(tz, base + hour * _HOUR) for hour in range(25)]
    found: list[datetime] = []
    for hour in range(24):
        if offsets[hour] != offsets[hour + 1]:
            lo, hi = base + hour * _HOUR, base + (hour + 1) * _HOUR
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(tz, mid) == offsets[hour]:
                    lo = mid
                else:
                    hi = mid
            found.append(datetime.fromtimestamp(hi, UTC))
    return tuple(found)


def _offset(tz: ZoneInfo, timestamp: int) -> timedelta | None:
    return datetime.fromtimestamp(timestamp, tz).utcoffset()
