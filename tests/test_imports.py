"""The streaming import parser: CSV (quoted newlines, BOM, bad rows at their exact lines) and
JSON lines, column mapping, chunking, and a large stream in bounded memory."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Sequence

import pytest

from orchestrator.imports import (
    MAX_LINE,
    ColumnMap,
    Format,
    InvalidImport,
    RowParser,
    Stats,
    UnsupportedFormat,
    detect_format,
)
from orchestrator.model import NewCall
from orchestrator.store.campaigns import RowError

FROM = "+16045551234"


async def stream(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def parse(
    data: bytes | str,
    fmt: Format = Format.CSV,
    *,
    mapping: ColumnMap | None = None,
    size: int = 1 << 16,
    default_from: str | None = "",
    chunk_rows: int = 1000,
) -> tuple[list[NewCall], list[RowError], Stats]:
    raw = data.encode() if isinstance(data, str) else data
    parser = RowParser(fmt, mapping, default_from=default_from, chunk_rows=chunk_rows)
    calls: list[NewCall] = []
    errors: list[RowError] = []
    async for batch in parser.batches(stream(raw, size)):
        calls.extend(batch.calls)
        errors.extend(batch.errors)
    return calls, errors, parser.stats


def lines_of(errors: Sequence[RowError]) -> list[int]:
    return [e.line for e in errors]


CSV = (
    "to,metadata.first,notes,purpose\n"  # 1
    '+14155550100,Ann,"two\nlines",Reminder\n'  # 2-3
    "+1415,Bob,,\n"  # 4
    '+14155550101,"Cy, Jr.","a ""quoted""\n\n\nfield",\n'  # 5-8
    "\n"  # 9: blank
    "+14155550102,Dee\n"  # 10: too few fields
    '+14155550103,"E"x,y,z\n'  # 11: bad quoting
    "(415) 555-0104,Fay,,\n"  # 12: not canonical
    '+14155550105,Gus,"never\nclosed\n'  # 13-14: open quote to the end
)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 17, 1 << 16])
async def test_csv_rows_and_refused_lines_whatever_the_chunking(size: int) -> None:
    calls, errors, stats = await parse(CSV, size=size)
    assert [(c.to, dict(c.metadata), c.purpose) for c in calls] == [
        ("+14155550100", {"first": "Ann"}, "Reminder"),
        ("+14155550101", {"first": "Cy, Jr."}, None),
    ]
    assert lines_of(errors) == [4, 10, 11, 12, 13]
    reasons = {e.line: e.reason for e in errors}
    assert reasons[4].startswith("INVALID_PHONE_NUMBER: 'to' must be E.164")
    assert reasons[10] == "INVALID_ROW: 2 fields where the header has 4"
    assert reasons[11].startswith("INVALID_ROW: ")
    assert "(415) 555-0104" in reasons[12]
    assert reasons[13] == "INVALID_ROW: unexpected end of data"
    assert (stats.rows, stats.queued, stats.invalid) == (7, 2, 5)
    assert stats.ignored_columns == ["notes"]


async def test_bom_crlf_and_header_spelling() -> None:
    data = b"\xef\xbb\xbf Phone ,Metadata.Tier,GOAL\r\n+14155550100,gold,Book\r\n+14155550101,,\r\n"
    for size in (1, 2, 4, 100):
        calls, errors, _ = await parse(data, size=size)
        assert errors == []
        assert [(c.to, dict(c.metadata), c.goal) for c in calls] == [
            ("+14155550100", {"Tier": "gold"}, "Book"),
            ("+14155550101", {}, None),  # an empty cell is as if the column were absent
        ]


async def test_numbers_must_already_be_canonical() -> None:
    data = "to\n+1 415 555 0100\n+1-415-555-0100\n14155550100\n +14155550100\n+14155550100\n"
    calls, errors, _ = await parse(data)
    assert [c.to for c in calls] == ["+14155550100"]
    assert lines_of(errors) == [2, 3, 4, 5]
    assert all(e.reason.startswith("INVALID_PHONE_NUMBER: ") for e in errors)


async def test_duplicate_numbers_are_separate_calls() -> None:
    calls, errors, _ = await parse("to\n+14155550100\n+14155550100\n")
    assert errors == [] and [c.to for c in calls] == ["+14155550100"] * 2


async def test_from_per_row_pool_and_default() -> None:
    data = f"to,from\n+14155550100,{FROM}\n+14155550101,\n+14155550102,+1604\n"
    calls, errors, _ = await parse(data, default_from="")
    assert [c.from_ for c in calls] == [FROM, ""]  # "" is the campaign's pool
    assert lines_of(errors) == [4] and "'from' must be E.164" in errors[0].reason
    calls, errors, _ = await parse(data, default_from=None)
    assert [c.from_ for c in calls] == [FROM]
    assert lines_of(errors) == [3, 4]
    assert "'from' is missing" in errors[0].reason


async def test_explicit_mapping() -> None:
    mapping = ColumnMap.parse(
        [("name", "x"), ("map.to", "Mobile"), ("map.metadata.first", "First Name")]
    )
    data = "Mobile,First Name,to,metadata.id\n+14155550100,Ann,+14155559999,7\n"
    calls, errors, stats = await parse(data, mapping=mapping)
    assert errors == []
    [call] = calls
    assert call.to == "+14155550100" and dict(call.metadata) == {"first": "Ann", "id": "7"}
    assert stats.ignored_columns == ["to"]  # map.to takes the place of the default


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("map.phone", "x")], "unknown field 'phone'"),
        ([("map.to", " ")], "the column name is empty"),
        ([("map.metadata.", "x")], "name the metadata key"),
        ([("map.metadata._orchestrator_x", "x")], "is reserved"),
        ([("map.to", "a"), ("map.to", "b")], "given twice"),
    ],
)
def test_bad_mappings(pairs: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(InvalidImport, match=message):
        ColumnMap.parse(pairs)


@pytest.mark.parametrize(
    ("data", "mapping", "message"),
    [
        ("", None, "the body is empty"),
        ("name,email\nAnn,a@x\n", None, "no column for 'to'"),
        ("to,TO\n", None, "names column 'TO' twice"),
        ("to\n+14155550100\n", [("map.metadata.x", "nope")], "map.metadata.x: no column 'nope'"),
        ("to,metadata._orchestrator_attempt\n", None, "is reserved"),
        ('"to\n', None, "line 1: the header row"),
    ],
)
async def test_problems_with_the_whole_file(
    data: str, mapping: list[tuple[str, str]] | None, message: str
) -> None:
    with pytest.raises(InvalidImport, match=message):
        await parse(data, mapping=ColumnMap.parse(mapping or []))


async def test_undecodable_and_overlong_lines_are_refused_rows() -> None:
    data = (
        b"to,metadata.name\n"
        b"+14155550100,\xff\xfe\n"
        b"+14155550101," + b"x" * (MAX_LINE + 10) + b"\n"
        b"+14155550102,ok\n"
    )
    calls, errors, _ = await parse(data, size=4096)
    assert [c.to for c in calls] == ["+14155550102"]
    assert [(e.line, e.reason) for e in errors] == [
        (2, "INVALID_ROW: not valid UTF-8"),
        (3, f"INVALID_ROW: line 3 is longer than {MAX_LINE} bytes"),
    ]


async def test_a_refused_reason_is_cut_short() -> None:
    calls, errors, _ = await parse("to\n+1" + "9" * 5000 + "\n")
    assert calls == [] and len(errors[0].reason) <= 300


JSONL = (
    b'{"to": "+14155550100", "metadata": {"tier": "gold", "n": 3}, "metadata.extra": true}\n'
    b"\n"
    b'{"to": "+14155550101", "purpose": "Reminder", "crm_id": 9}\n'
    b"[1, 2]\n"
    b"{oops\n"
    b'{"to": "+14155550102", "metadata": {"nested": {"no": 1}}}\n'
    b'{"to": 14155550103}\n'
    b'{"to": "+14155550104", "goal": 5}\n'
    b'{"to": "+14155550105", "metadata": {"big": 1e999}}\n'
    b'{"to": "+14155550106", "from": "+16045551234"}'  # no newline at the end
)


@pytest.mark.parametrize("size", [1, 7, 1 << 16])
async def test_json_lines(size: int) -> None:
    calls, errors, stats = await parse(JSONL, Format.JSONL, size=size)
    assert [(c.to, dict(c.metadata), c.purpose, c.from_) for c in calls] == [
        ("+14155550100", {"tier": "gold", "n": 3, "extra": True}, None, ""),
        ("+14155550101", {}, "Reminder", ""),
        ("+14155550106", {}, None, FROM),
    ]
    reasons = {e.line: e.reason for e in errors}
    assert sorted(reasons) == [4, 5, 6, 7, 8, 9]
    assert reasons[4] == "INVALID_ROW: each line must be a JSON object"
    assert reasons[5].startswith("INVALID_ROW: not JSON")
    assert reasons[6].startswith("INVALID_METADATA: ")
    assert reasons[7].startswith("INVALID_PHONE_NUMBER: 'to' must be a string")
    assert reasons[8] == "INVALID_ROW: 'goal' must be a string"
    assert reasons[9] == "INVALID_ROW: big: the number is out of range"
    assert stats.ignored_columns == ["crm_id"]


async def test_json_lines_mapping() -> None:
    mapping = ColumnMap.parse([("map.to", "mobile"), ("map.metadata.account", "crm_id")])
    data = b'{"mobile": "+14155550100", "crm_id": 9, "metadata": {"a": 1}}\n'
    [call], errors, _ = await parse(data, Format.JSONL, mapping=mapping)
    assert errors == [] and dict(call.metadata) == {"a": 1, "account": 9}


async def test_chunks_are_bounded() -> None:
    rows = "".join(f"+1415555{i:04d}\n" if i % 10 else "bad\n" for i in range(2500))
    parser = RowParser(Format.CSV, chunk_rows=1000)
    sizes = [len(b) async for b in parser.batches(stream(("to\n" + rows).encode(), 999))]
    assert sizes == [1000, 1000, 500]
    assert (parser.stats.queued, parser.stats.invalid) == (2250, 250)
    empty = RowParser(Format.CSV)
    assert [len(b) async for b in empty.batches(stream(b"to\n", 10))] == [0]


def test_detect_format() -> None:
    assert detect_format("text/csv; charset=utf-8") is Format.CSV
    assert detect_format("application/x-ndjson") is Format.JSONL
    assert detect_format("application/jsonl") is Format.JSONL
    assert detect_format("application/octet-stream", "CSV") is Format.CSV
    with pytest.raises(UnsupportedFormat):
        detect_format("text/plain")
    with pytest.raises(UnsupportedFormat):
        detect_format(None)
    with pytest.raises(UnsupportedFormat, match="UTF-8"):
        detect_format("text/csv; charset=latin-1")
    with pytest.raises(UnsupportedFormat):
        detect_format("text/csv", "xlsx")


@pytest.mark.slow
async def test_a_large_stream_goes_through_bounded_memory() -> None:
    rows = 200_000
    block = "".join(
        f"+1415555{i:04d},Customer {i},acct-{i:08d},Reminder about the appointment tomorrow\n"
        for i in range(1000)
    ).encode()
    total = len(block) * (rows // 1000)

    async def body() -> AsyncIterator[bytes]:
        yield b"to,metadata.name,metadata.account,purpose\n"
        for _ in range(rows // 1000):
            yield block

    parser = RowParser(Format.CSV)
    tracemalloc.start()
    try:
        seen = 0
        async for batch in parser.batches(body()):
            seen += len(batch)  # the caller writes the chunk and lets it go
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == rows and parser.stats.queued == rows
    # The body is ~17 MB and its calls would be far more; one chunk of calls is well under.
    assert total > 15_000_000
    assert peak < 8_000_000, f"peak {peak} bytes"
