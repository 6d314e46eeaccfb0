"""The do-not-call list: numbers that must never be rung, checked right before each call.

The list is a text file of E.164 numbers, one a line, with ``#`` comments::

    # opted out by phone
    +14155551234
    +44 20 7946 0000   # separators are fine, the "+" and country code are not optional

or a CSV file whose header has a ``number`` column (the other columns are ignored)::

    number,name,date
    +14155551234,Ada,2024-05-01

Numbers are validated with :func:`orchestrator.phone.validate_number` after dropping spaces,
dashes, dots and parentheses. Unlike a number to call, where we never guess, a number *not* to
call is best read generously: dropping separators cannot change which digits were meant, and a
line that cannot be read is an opt-out we would otherwise ignore. Lines that still fail are
reported with their line numbers; by default that fails the load (:class:`DncFileError`), since
a skipped line could be someone who asked not to be called.

Memory: the file's numbers are kept as a sorted array of 64-bit integers (an E.164 number is
at most 15 digits and never starts with 0, so the integer is exact and unique), measured at
8 MB per million numbers, against about 98 MB per million for a set of strings. Loading needs
about 50 MB per million more for a moment, while the array is built. A lookup is a binary
search, about two microseconds. Validation dominates the first load, about 40 microseconds a
line (phonenumbers), so 40 s per million lines; a reload validates only the lines that are new
(about 4 s per million lines). Either belongs in a worker thread.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import itertools
import os
import re
import threading
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator import exceptions, phone
from orchestrator.exceptions import DncFileError

_SEPARATORS = str.maketrans("", "", " \t-.()\u00a0")
_E164 = re.compile(r"\+[1-9][0-9]{9,14}")
#: How many problems a DncFileError message shows; all of them are on ``.problems``.
SHOWN_PROBLEMS = 20

#: A file's identity for change detection: mtime (ns), size, inode and device.
_Signature = tuple[int, int, int, int]


@dataclass(frozen=True, kw_only=True)
class LineProblem:
    """A line of a do-not-call file that is not a valid number, and why."""

    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.text!r}"


@dataclass(frozen=True, kw_only=True)
class _State:
    """One consistent view of the list, swapped whole so a reader never sees half an update."""

    listed: array[int]  # the file's numbers (or the constructor's): sorted, unique
    added: frozenset[int]  # added at run time and not listed
    removed: frozenset[int]  # listed, but removed at run time


class DoNotCall:
    """A set of E.164 numbers never to call, optionally loaded from (and reloaded from) a file.

    ``add`` and ``remove`` change the list in memory only. A reload keeps numbers added at run
    time (an opt-out heard on a call must not be lost because someone edited the file) and drops
    run-time removals of numbers the new file still lists (the file has the last word on what it
    lists). Lookups are safe from any thread, and ``refresh`` may run in a worker thread.
    """

    def __init__(self, numbers: Iterable[str] = ()) -> None:
        """A list of ``numbers``, each validated (raises InvalidNumber on the first bad one)."""
        keys = sorted({_key(number, validate=True) for number in numbers})
        self._state = _State(listed=array("q", keys), added=frozenset(), removed=frozenset())
        self._lock = threading.Lock()  # guards changes of _state
        self._refreshing = threading.Lock()  # one reload at a time
        self._path: Path | None = None
        self._strict = True
        self._signature: _Signature | None = None
        self._problems: tuple[LineProblem, ...] = ()

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, strict: bool = True) -> DoNotCall:
        """The list in the file at ``path``.

        With ``strict`` (the default), any invalid line raises :class:`DncFileError` naming every
        bad line; without it, the valid lines are loaded and the others are on ``problems``.
        """
        dnc = cls()
        dnc._path = Path(path)
        dnc._strict = strict
        dnc.refresh()
        return dnc

    @property
    def path(self) -> Path | None:
        """The file the list was loaded from, if any."""
        return self._path

    @property
    def problems(self) -> tuple[LineProblem, ...]:
        """The invalid lines of the last file loaded without ``strict`` (they were skipped)."""
        return self._problems

    def contains(self, number: str) -> bool:
        """True if ``number`` (E.164) must not be called.

        Raises InvalidNumber if ``number`` is not E.164 at all: a caller asking about a malformed
        number has a bug, and answering "not listed" would let it call.
        """
        key = _key(number, validate=False)
        state = self._state
        if key in state.added:
            return True
        return _listed(state.listed, key) and key not in state.removed

    def __contains__(self, number: object) -> bool:
        """``number in dnc``: the same as :meth:`contains`, raising for a malformed number."""
        return self.contains(number)  # type: ignore[arg-type]  # _key refuses a non-string

    def add(self, number: str) -> bool:
        """Block ``number`` (validated like a number to call); True if it was not blocked yet."""
        key = _key(number, validate=True)
        with self._lock:
            state = self._state
            if key in state.removed:
                self._state = _State(
                    listed=state.listed, added=state.added, removed=state.removed - {key}
                )
                return True
            if key in state.added or _listed(state.listed, key):
                return False
            self._state = _State(
                listed=state.listed, added=state.added | {key}, removed=state.removed
            )
            return True

    def remove(self, number: str) -> bool:
        """Unblock ``number``; True if it was blocked. Until the next reload, for a listed one."""
        key = _key(number, validate=False)
        with self._lock:
            state = self._state
            if key in state.added:
                self._state = _State(
                    listed=state.listed, added=state.added - {key}, removed=state.removed
                )
                return True
            if key in state.removed or not _listed(state.listed, key):
                return False
            self._state = _State(
                listed=state.listed, added=state.added, removed=state.removed | {key}
            )
            return True

    def refresh(self) -> bool:
        """Reload the file if it changed since it was last read; True if it was reloaded.

        A change is a new mtime, size or inode, so replace the file by renaming a new one over it
        (atomic) rather than rewriting it in place. If the file cannot be read, or (``strict``)
        has invalid lines, the list in memory is kept and :class:`DncFileError` raised; an
        invalid file is reported once, then left alone until it changes again.
        """
        if self._path is None:
            return False
        with self._refreshing:
            return self._refresh(self._path)

    def _refresh(self, path: Path) -> bool:
        signature = _signature(path)
        if signature == self._signature:
            return False
        listed, problems = _read(path, self._state.listed)
        self._signature = signature
        if problems and self._strict:
            raise _problems_error(path, problems)
        with self._lock:
            added = self._state.added
            self._state = _State(
                listed=listed,
                added=frozenset(key for key in added if not _listed(listed, key)),
                removed=frozenset(),
            )
            self._problems = problems
        return True

    def __len__(self) -> int:
        state = self._state
        return len(state.listed) - len(state.removed) + len(state.added)

    def __iter__(self) -> Iterator[str]:
        """The blocked numbers, in numeric order."""
        state = self._state
        listed = (key for key in state.listed if key not in state.removed)
        for key in heapq.merge(listed, sorted(state.added)):
            yield f"+{key}"

    def __repr__(self) -> str:
        source = f" from {str(self._path)!r}" if self._path is not None else ""
        return f"<DoNotCall {len(self)} numbers{source}>"


def _listed(listed: array[int], key: int) -> bool:
    at = bisect.bisect_left(listed, key)
    return at < len(listed) and listed[at] == key


def _key(number: str, *, validate: bool) -> int:
    """The integer a number is stored as, after dropping separators.

    ``validate`` checks that it is a valid, dialable number (phonenumbers); without it, only
    that it is E.164-shaped, which is enough to compare it with numbers that were validated.
    """
    if not isinstance(number, str):
        raise exceptions.InvalidNumber(f"a number must be a string, not {type(number).__name__}")
    clean = number.strip().translate(_SEPARATORS)
    if validate:
        phone.validate_number(clean, field="number")
    elif not _E164.fullmatch(clean):
        raise exceptions.InvalidNumber(f"not an E.164 number: {number!r}")
    return int(clean[1:])


def _signature(path: Path) -> _Signature:
    try:
        st = path.stat()
    except OSError as exc:
        raise DncFileError(f"{path}: cannot read the do-not-call file: {exc.strerror}") from exc
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _read(path: Path, known: array[int]) -> tuple[array[int], tuple[LineProblem, ...]]:
    """The sorted, unique numbers in the file at ``path``, and its invalid lines.

    Numbers in ``known`` (the list loaded before) passed validation already, which depends only
    on the digits, so a reload validates only the lines that are new: it takes seconds, not
    minutes, for millions of lines.
    """
    keys: list[int] = []
    problems: list[LineProblem] = []

    def take(line: int, text: str) -> None:
        clean = text.translate(_SEPARATORS)
        if _E164.fullmatch(clean) and _listed(known, key := int(clean[1:])):
            keys.append(key)
            return
        try:
            keys.append(_key(text, validate=True))
        except exceptions.InvalidNumber as exc:
            problems.append(LineProblem(line=line, text=text, reason=exc.message))

    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            lineno, first = 0, ""
            for raw in fh:  # up to the first line that is not blank or a comment
                lineno += 1
                first = raw.strip()
                if first and not first.startswith("#"):
                    break
            header = [cell.strip().lower() for cell in next(csv.reader([first]), [])]
            if "number" not in header:
                lines = itertools.chain([first], fh)
                for number, raw in enumerate(lines, lineno):
                    text = raw.split("#", 1)[0].strip()
                    if text:
                        take(number, text)
            else:
                column, header_line = header.index("number"), lineno
                reader = csv.reader(fh)
                for row in reader:
                    lineno = header_line + reader.line_num
                    if not "".join(row).strip() or row[0].lstrip().startswith("#"):
                        continue
                    if column >= len(row) or not row[column].strip():
                        text = ",".join(row)
                        problems.append(LineProblem(line=lineno, text=text, reason="no number"))
                    else:
                        take(lineno, row[column])
    except OSError as exc:
        raise DncFileError(f"{path}: cannot read the do-not-call file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise DncFileError(f"{path}: not UTF-8 text: {exc.reason}") from exc
    except csv.Error as exc:
        raise DncFileError(f"{path}: not valid CSV: {exc}") from exc
    keys.sort()
    listed: array[int] = array("q")
    previous = -1
    for key in keys:
        if key != previous:
            listed.append(key)
            previous = key
    return listed, tuple(problems)


def _problems_error(path: Path, problems: tuple[LineProblem, ...]) -> DncFileError:
    shown = "; ".join(str(p) for p in problems[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    rest = f"; and {more} more" if more > 0 else ""
    return DncFileError(
        f"{path}: {len(problems)} invalid line(s), the list was not (re)loaded: {shown}{rest}",
        problems=problems,
    )
