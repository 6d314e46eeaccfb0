"""Campaign imports: a CSV or JSON-lines body, parsed while it streams in, into chunks of calls
and refused rows (:meth:`RowParser.batches`). Each chunk is one ``Store.import_rows`` (one
transaction), so a million-row file goes through bounded memory: the parser holds one network
chunk, the record being read and one chunk of rows.

Formats
    ``csv``: a header row, then one record per row (RFC 4180: quoted fields may hold commas,
    quotes and newlines); UTF-8, a byte order mark is skipped. ``jsonl``: one JSON object per
    line (blank lines are skipped); ``metadata`` may be a nested object.

Columns
    ``to`` (or ``phone``, ``number``) is the number to call; ``from``, ``agent_id``,
    ``purpose``, ``goal`` and ``template_id`` override the campaign's settings for the row;
    ``metadata.KEY`` columns become metadata ``KEY``. CSV headers match these names in any case
    and with surrounding spaces. :class:`ColumnMap` maps other names (``map.to=Phone``,
    ``map.metadata.first=First Name``). Other columns are ignored (and listed). An empty CSV
    cell is as if the column were absent; CSV values are text, JSON values keep their type.

Rows
    Each row is validated as ``POST /v1/calls`` validates a call: the numbers must already be
    canonical E.164 (no guessing at ``(415) 555-1234``: a wrong guess rings a stranger) and
    metadata flat. A bad row becomes a :class:`~orchestrator.store.campaigns.RowError` with the line
    the user sees in the file: the physical line where the record starts, the header being
    line 1. Valid rows proceed. The same number may appear on several rows: each is a call, and
    the dialer never has two live calls to one number (the per-person daily cap applies too).
    A problem with the file as a whole (no header, no ``to`` column, an unknown mapping) is an
    :class:`InvalidImport`, raised before the first chunk.
"""

from __future__ import annotations

import asyncio
import csv
import functools
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator import exceptions, phone
from orchestrator.exceptions import InvalidImport, UnsupportedFormat
from orchestrator.model import RESERVED_PREFIX, NewCall, load_json, unstorable
from orchestrator.store.campaigns import RowError

#: Rows (calls and refused rows) per chunk: one transaction each.
CHUNK_ROWS = 1000
#: Bytes of one physical line; a longer line is a refused row.
MAX_LINE = 1 << 20
#: Characters of one CSV record (a quoted field may span lines); a longer one is refused.
MAX_RECORD = 1 << 20
#: Rows parsed between two yields to the event loop (validation is CPU work).
YIELD_EVERY = 200
#: How many ignored column names are listed.
MAX_IGNORED = 20
MAX_REASON = 300
BOM = b"\xef\xbb\xbf"

#: The call fields a column can fill, and the column names each takes by default.
FIELDS = ("to", "from", "agent_id", "purpose", "goal", "template_id")
DEFAULT_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "to": ("to", "phone", "number"),
    **{name: (name,) for name in FIELDS[1:]},
}
METADATA_PREFIX = "metadata."
MAP_PREFIX = "map."


class Format(StrEnum):
    """The body formats an import takes."""

    CSV = "csv"
    JSONL = "jsonl"


MEDIA_TYPES: Mapping[str, Format] = {
    "text/csv": Format.CSV,
    "application/csv": Format.CSV,
    "application/x-ndjson": Format.JSONL,
    "application/ndjson": Format.JSONL,
    "application/jsonl": Format.JSONL,
    "application/x-jsonlines": Format.JSONL,
    "application/jsonlines": Format.JSONL,
}


def detect_format(content_type: str | None, requested: str | None = None) -> Format:
    """The body's format: ``requested`` (a ``format`` parameter) if given, else from the
    Content-Type (``text/csv``, ``application/x-ndjson``, ``application/jsonl``)."""
    if requested:
        try:
            return Format(requested.strip().lower())
        except ValueError:
            raise UnsupportedFormat(f"format must be csv or jsonl, not {requested!r}") from None
    media, _, params = (content_type or "").partition(";")
    charset = next(
        (v.strip().strip('"').lower() for k, _, v in (p.partition("=") for p in params.split(";"))
         if k.strip().lower() == "charset"),
        "utf-8",
    )  # fmt: skip
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedFormat(f"imports are UTF-8, not {charset!r}")
    found = MEDIA_TYPES.get(media.strip().lower())
    if found is None:
        raise UnsupportedFormat(
            f"cannot tell the format from Content-Type {media.strip() or '(none)'!r}: send "
            "text/csv or application/x-ndjson, or add format=csv|jsonl"
        )
    return found


@dataclass(frozen=True, kw_only=True)
class ColumnMap:
    """Which column fills which call field, where the defaults do not fit: ``fields`` maps a
    call field (``to``, ``from``, ``purpose``...) to a column, ``metadata`` a metadata key to a
    column. A field mapped here takes no default column."""

    fields: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, pairs: Iterable[tuple[str, str]]) -> ColumnMap:
        """From ``map.FIELD=COLUMN`` and ``map.metadata.KEY=COLUMN`` pairs (query parameters);
        other pairs are skipped. InvalidImport for an unknown field or a repeated one."""
        fields: dict[str, str] = {}
        metadata: dict[str, str] = {}
        for key, column in pairs:
            if not key.startswith(MAP_PREFIX):
                continue
            target = key[len(MAP_PREFIX) :]
            if not column.strip():
                raise InvalidImport(f"{key}: the column name is empty")
            if target.startswith(METADATA_PREFIX):
                name = target[len(METADATA_PREFIX) :]
                if not name:
                    raise InvalidImport(f"{key}: name the metadata key (map.metadata.KEY=COLUMN)")
                if name.startswith(RESERVED_PREFIX):
                    raise InvalidImport(f"{key}: metadata key {name!r} is reserved")
                into = metadata
            elif target in FIELDS:
                name, into = target, fields
            else:
                raise InvalidImport(
                    f"{key}: unknown field {target!r} (map one of {', '.join(FIELDS)}, or "
                    "metadata.KEY)"
                )
            if name in into:
                raise InvalidImport(f"{key} is given twice")
            into[name] = column.strip()
        return cls(fields=fields, metadata=metadata)

    def pairs(self) -> list[tuple[str, str]]:
        """The mapping as ``map.*`` query parameters."""
        out = [(f"{MAP_PREFIX}{k}", v) for k, v in self.fields.items()]
        out += [(f"{MAP_PREFIX}{METADATA_PREFIX}{k}", v) for k, v in self.metadata.items()]
        return out


@dataclass
class Batch:
    """One chunk of an import: its valid calls and its refused rows."""

    calls: list[NewCall] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.calls) + len(self.errors)


@dataclass
class Stats:
    """What an import has read so far."""

    rows: int = 0
    queued: int = 0
    invalid: int = 0
    lines: int = 0
    ignored_columns: list[str] = field(default_factory=list)

    def ignore(self, name: str) -> None:
        if name not in self.ignored_columns and len(self.ignored_columns) < MAX_IGNORED:
            self.ignored_columns.append(name)


Row = NewCall | RowError
# A physical line: its number, its text (with its line ending) and what is wrong with it.
Line = tuple[int, str, str | None]


class RowParser:
    """Parses one import. ``default_from`` fills a row without ``from``: ``""`` lets the store
    use the campaign's pool, None refuses such rows (no pool and no ``defaults.from``)."""

    def __init__(
        self,
        fmt: Format,
        mapping: ColumnMap | None = None,
        *,
        default_from: str | None = "",
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        self.format = fmt
        self.mapping = mapping or ColumnMap()
        self.default_from = default_from
        self.chunk_rows = chunk_rows
        self.stats = Stats()

    async def batches(self, chunks: AsyncIterable[bytes]) -> AsyncGenerator[Batch, None]:
        """The rows of the body ``chunks``, a :class:`Batch` of up to ``chunk_rows`` at a time
        (at least one batch, maybe empty). Raises InvalidImport before the first batch for a
        problem with the file as a whole."""
        lines = _Lines()
        rows: _Rows = _CsvRows(self.mapping, self) if self.format is Format.CSV else _JsonRows(self)
        batch = Batch()
        parsed = 0
        sent = False
        async for chunk in chunks:
            for row in rows.feed(lines.feed(chunk)):
                self._add(batch, row)
                parsed += 1
                if len(batch) >= self.chunk_rows:
                    yield batch
                    batch, sent = Batch(), True
                if parsed % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        for row in rows.finish(lines.finish()):
            self._add(batch, row)
            if len(batch) >= self.chunk_rows:
                yield batch
                batch, sent = Batch(), True
        self.stats.lines = lines.number
        if batch or not sent:
            yield batch

    def _add(self, batch: Batch, row: Row) -> None:
        self.stats.rows += 1
        if isinstance(row, RowError):
            self.stats.invalid += 1
            batch.errors.append(row)
        else:
            self.stats.queued += 1
            batch.calls.append(row)

    def build(self, line: int, values: Mapping[str, Any], metadata: Any, *, text: bool) -> Row:
        """A call from one row's values (by call field) and metadata, or why it cannot be.
        ``text``: the values are strings and the metadata a checked dict of strings (CSV)."""
        try:
            to = values.get("to")
            if to is None or to == "":
                raise exceptions.InvalidNumber("'to' is missing")
            to = _number(to, "to")
            if text:
                agent_id = values.get("agent_id") or None
                purpose = values.get("purpose") or None
                goal = values.get("goal") or None
                template_id = values.get("template_id") or None
                caller = values.get("from")
            else:
                agent_id = _text(values.get("agent_id"), "agent_id")
                purpose = _text(values.get("purpose"), "purpose")
                goal = _text(values.get("goal"), "goal")
                template_id = _text(values.get("template_id"), "template_id")
                metadata = phone.validate_metadata(metadata, reserved_prefix=RESERVED_PREFIX)
                caller = _text(values.get("from"), "from")
            if caller:
                caller = _number(caller, "from")
            elif self.default_from is None:
                raise exceptions.InputError(
                    "'from' is missing (the campaign has no from_numbers and there is no "
                    "defaults.from)",
                    code="INVALID_ROW",
                )
            else:
                caller = self.default_from
            return NewCall(
                to=to,
                from_=caller,
                agent_id=agent_id,
                metadata=metadata,
                purpose=purpose,
                goal=goal,
                template_id=template_id,
            )
        except exceptions.InputError as exc:
            return refused(line, f"{exc.code}: {exc.message}")


def refused(line: int, reason: str) -> RowError:
    """A refused row (its reason cut to a readable length)."""
    if len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 3] + "..."
    return RowError(line=line, reason=reason)


# Lists repeat numbers (retries, households): a small cache spares the parse.
@functools.lru_cache(maxsize=4096)
def _to(number: str) -> str:
    return phone.validate_number(number, field="to")


@functools.lru_cache(maxsize=256)
def _from(number: str) -> str:
    return phone.validate_number(number, field="from")


def _number(value: object, name: str) -> str:
    if type(value) is str:
        return _to(value) if name == "to" else _from(value)
    return phone.validate_number(value, field=name)


def _text(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise exceptions.InputError(f"'{name}' must be a string", code="INVALID_ROW")
    return value


# -- physical lines ----------------------------------------------------------------------------


class _Lines:
    """Splits a byte stream into numbered, decoded lines (each with its ending), holding at most
    one partial line of MAX_LINE bytes."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.number = 0
        self.skipping = False  # inside a line longer than MAX_LINE
        self.start = True  # a byte order mark may still come

    def feed(self, chunk: bytes) -> list[Line]:
        self.buffer += chunk
        if self.start:
            if len(self.buffer) < len(BOM) and BOM.startswith(bytes(self.buffer)):
                return []
            if self.buffer.startswith(BOM):
                del self.buffer[: len(BOM)]
            self.start = False
        out: list[Line] = []
        begin = 0
        while True:
            end = self.buffer.find(b"\n", begin)
            if end < 0:
                break
            if end - begin > MAX_LINE:
                self.skipping = True
            out.append(self._line(b"" if self.skipping else bytes(self.buffer[begin : end + 1])))
            begin = end + 1
        del self.buffer[:begin]
        if len(self.buffer) > MAX_LINE:
            self.skipping = True
            self.buffer.clear()
        return out

    def finish(self) -> list[Line]:
        if self.start and self.buffer.startswith(BOM):
            del self.buffer[: len(BOM)]
        if not self.buffer and not self.skipping:
            return []
        line = self._line(bytes(self.buffer))
        self.buffer.clear()
        return [line]

    def _line(self, raw: bytes) -> Line:
        self.number += 1
        if self.skipping:
            self.skipping = False
            return (
                self.number,
                "\n",
                f"INVALID_ROW: line {self.number} is longer than {MAX_LINE} bytes",
            )
        try:
            return self.number, raw.decode(), None
        except UnicodeDecodeError:
            return self.number, raw.decode(errors="replace"), "INVALID_ROW: not valid UTF-8"


class _Rows:
    def feed(self, lines: list[Line]) -> Iterator[Row]:
        raise NotImplementedError

    def finish(self, lines: list[Line]) -> Iterator[Row]:
        raise NotImplementedError


# -- JSON lines --------------------------------------------------------------------------------


class _JsonRows(_Rows):
    def __init__(self, parser: RowParser) -> None:
        self.parser = parser
        mapping = parser.mapping
        # The keys each field is read from, in order of preference.
        self.keys = {
            name: (mapping.fields[name],) if name in mapping.fields else DEFAULT_COLUMNS[name]
            for name in FIELDS
        }
        self.mapped_metadata = dict(mapping.metadata)
        self.used = {k for keys in self.keys.values() for k in keys} | set(
            mapping.metadata.values()
        )
        self.used.add("metadata")

    def feed(self, lines: list[Line]) -> Iterator[Row]:
        for number, text, problem in lines:
            row = self._row(number, text, problem)
            if row is not None:
                yield row

    def finish(self, lines: list[Line]) -> Iterator[Row]:
        return self.feed(lines)

    def _row(self, number: int, text: str, problem: str | None) -> Row | None:
        if problem is not None:
            return refused(number, problem)
        if not text.strip():
            return None
        try:
            obj = load_json(text.encode())
        except ValueError as exc:
            return refused(number, f"INVALID_ROW: not JSON ({exc})")
        if not isinstance(obj, dict):
            return refused(number, "INVALID_ROW: each line must be a JSON object")
        values = {
            name: next((obj[k] for k in keys if k in obj), None) for name, keys in self.keys.items()
        }
        metadata: Any = obj.get("metadata")
        flat = {
            k[len(METADATA_PREFIX) :]: v
            for k, v in obj.items()
            if k.startswith(METADATA_PREFIX) and k not in self.used
        }
        flat.update({key: obj[k] for key, k in self.mapped_metadata.items() if k in obj})
        if flat and (metadata is None or isinstance(metadata, dict)):
            metadata = {**(metadata or {}), **flat}
        bad = unstorable(values) or unstorable(metadata)
        if bad is not None:
            return refused(number, f"INVALID_ROW: {bad[0]}: {bad[1]}")
        for key in obj:
            if key not in self.used and not key.startswith(METADATA_PREFIX):
                self.parser.stats.ignore(key)
        return self.parser.build(number, values, metadata, text=False)


# -- CSV ---------------------------------------------------------------------------------------


class _NeedMore(Exception):
    """The record goes on past the lines received so far."""


class _TooLong(Exception):
    """The record is longer than MAX_RECORD."""


class _Feed:
    """The lines not yet read as a record, handed to ``csv.reader`` one at a time.

    The reader keeps no state between records (each ``next`` starts afresh), so when a record
    runs past the lines received, :class:`_NeedMore` abandons it and it is read again from its
    first line once more lines are in; a record is retried only when the waiting text has
    doubled, so a long record costs linear time.
    """

    def __init__(self) -> None:
        self.lines: deque[Line] = deque()
        self.waiting = 0  # characters in ``lines``
        self.retry_at = 0
        self.cursor = 0
        self.size = 0
        self.eof = False

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        if self.cursor >= len(self.lines):
            if self.eof:
                raise StopIteration
            raise _NeedMore
        text = self.lines[self.cursor][1]
        self.cursor += 1
        self.size += len(text)
        if self.size > MAX_RECORD:
            raise _TooLong
        return text

    def add(self, lines: list[Line]) -> None:
        self.lines.extend(lines)
        self.waiting += sum(len(line[1]) for line in lines)

    def records(self, reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str], str | None]]:
        """(first line, fields, problem) of each complete record received."""
        while self.lines and (self.eof or self.waiting >= self.retry_at):
            self.cursor = self.size = 0
            fields: list[str] = []
            problem = None
            try:
                fields = next(reader)
            except _NeedMore:
                self.retry_at = 2 * self.waiting
                return
            except StopIteration:  # pragma: no cover - there were lines to read
                return
            except _TooLong:
                problem = f"INVALID_ROW: the record is longer than {MAX_RECORD} characters"
            except csv.Error as exc:
                problem = f"INVALID_ROW: {exc}"
            self.retry_at = 0
            first = self.lines[0][0]
            for _ in range(max(self.cursor, 1)):
                _, text, wrong = self.lines.popleft()
                self.waiting -= len(text)
                problem = problem or wrong
            yield first, fields, problem


class _CsvRows(_Rows):
    def __init__(self, mapping: ColumnMap, parser: RowParser) -> None:
        self.mapping = mapping
        self.parser = parser
        self.pending = _Feed()
        self.reader = csv.reader(self.pending, strict=True)
        self.header: list[str] | None = None
        self.columns: dict[str, int] = {}
        self.metadata: dict[str, int] = {}

    def feed(self, lines: list[Line]) -> Iterator[Row]:
        self.pending.add(lines)
        return self._rows()

    def finish(self, lines: list[Line]) -> Iterator[Row]:
        self.pending.add(lines)
        self.pending.eof = True
        yield from self._rows()
        if self.header is None:
            raise InvalidImport("the body is empty: a CSV import starts with a header row")

    def _rows(self) -> Iterator[Row]:
        for first, fields, problem in self.pending.records(self.reader):
            if self.header is None:
                if problem is not None:
                    raise InvalidImport(f"line {first}: the header row: {problem}")
                if fields:
                    self._columns(fields)
                continue
            if problem is not None:
                yield refused(first, problem)
            elif not fields or fields == [""]:
                continue  # a blank line
            elif len(fields) != len(self.header):
                yield refused(
                    first,
                    f"INVALID_ROW: {len(fields)} fields where the header has {len(self.header)}",
                )
            else:
                values = {name: fields[i] for name, i in self.columns.items()}
                metadata = {key: fields[i] for key, i in self.metadata.items() if fields[i] != ""}
                yield self.parser.build(first, values, metadata, text=True)

    def _columns(self, header: list[str]) -> None:
        names = [name.strip() for name in header]
        seen: set[str] = set()
        for name in names:
            if name and name.lower() in seen:
                raise InvalidImport(f"the header names column {name!r} twice")
            seen.add(name.lower())

        def find(name: str) -> int | None:
            if name in names:
                return names.index(name)
            lowered = [n.lower() for n in names]
            return lowered.index(name.lower()) if name.lower() in lowered else None

        for target in FIELDS:
            if target in self.mapping.fields:
                index = find(self.mapping.fields[target])
                if index is None:
                    raise InvalidImport(
                        f"map.{target}: no column {self.mapping.fields[target]!r} in the header"
                    )
                self.columns[target] = index
                continue
            for candidate in DEFAULT_COLUMNS[target]:
                index = find(candidate)
                if index is not None:
                    self.columns[target] = index
                    break
        if "to" not in self.columns:
            raise InvalidImport(
                "no column for 'to': name one to, phone or number, or map one with map.to=COLUMN"
            )
        for i, name in enumerate(names):
            if name.lower().startswith(METADATA_PREFIX) and len(name) > len(METADATA_PREFIX):
                self.metadata[name[len(METADATA_PREFIX) :]] = i
        for key, column in self.mapping.metadata.items():
            index = find(column)
            if index is None:
                raise InvalidImport(f"map.metadata.{key}: no column {column!r} in the header")
            self.metadata[key] = index
        for key in self.metadata:
            if key.startswith(RESERVED_PREFIX):
                raise InvalidImport(f"metadata key {key!r} is reserved for the orchestrator")
        used = set(self.columns.values()) | set(self.metadata.values())
        for i, name in enumerate(names):
            if i not in used:
                self.parser.stats.ignore(name or f"(column {i + 1})")
        self.header = names
