"""The do-not-call list: loading real files (plain and CSV), line-numbered problems, run-time
changes, and reloading when the file changes."""

from __future__ import annotations

import os
import random
import tempfile
import tracemalloc
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import dnc, exceptions, phone
from orchestrator.dnc import DoNotCall, LineProblem
from orchestrator.exceptions import DncFileError

SF, NYC, LONDON, PARIS = "+14155551234", "+12125551234", "+442079460000", "+33123456789"
EXAMPLES = sorted(
    {
        phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)
        for region in phonenumbers.SUPPORTED_REGIONS
        if (n := phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE))
        is not None
    }
)
EXAMPLES = [n for n in EXAMPLES if 10 <= len(n) - 1 <= 15]


def write(path: Path, text: str, *, mtime_ns: int | None = None) -> Path:
    """Replace ``path`` atomically (a new file renamed over it), as the docs ask."""
    temp = path.with_suffix(".tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "dnc.txt"


# -- loading ----------------------------------------------------------------------------------


def test_a_plain_file_with_comments_and_separators(path: Path) -> None:
    write(
        path,
        "# opted out by phone\n"
        "\n"
        f"{SF}\n"
        "  +1 (212) 555-1234   # asked on 2024-05-01\n"
        "+44 20 7946 0000\n"
        "+33.1.23.45.67.89\n"
        f"{SF}\n"  # a duplicate is not a problem
        "\t\n"
        "# the end\n",
    )
    listed = DoNotCall.load(path)
    assert len(listed) == 4
    assert list(listed) == [NYC, SF, PARIS, LONDON]  # numeric order
    assert all(listed.contains(n) for n in (SF, NYC, LONDON, PARIS))
    assert not listed.contains("+14155550000")
    assert listed.problems == ()
    assert listed.path == path
    assert repr(listed) == f"<DoNotCall 4 numbers from {str(path)!r}>"


def test_a_csv_file_with_a_number_column(path: Path) -> None:
    write(
        path,
        "\ufeff# exported from the CRM\n"  # a byte-order mark, as spreadsheets write
        "Name, Number ,opted_out\n"
        f"Ada,{SF},2024-05-01\n"
        f'"Lovelace, Ada","+1 212 555 1234",2024-05-02\n'
        "\n"
        f"# Bob,{LONDON},commented out\n"
        f"Carol,{PARIS}\n",
    )
    listed = DoNotCall.load(path)
    assert sorted(listed) == sorted([SF, NYC, PARIS])
    assert LONDON not in listed


def test_a_one_column_csv(path: Path) -> None:
    write(path, f"number\n{SF}\n{NYC}\n")
    assert sorted(DoNotCall.load(path)) == sorted([SF, NYC])


def test_an_empty_file_is_an_empty_list(path: Path) -> None:
    write(path, "")
    assert len(DoNotCall.load(path)) == 0
    write(path, "# nobody yet\n\n")
    assert len(DoNotCall.load(path)) == 0


BAD = (
    "# line 1\n"
    f"{SF}\n"
    "4155551234\n"  # 3: no "+"
    "\n"
    "+1415555123\n"  # 5: a digit short
    "+310100000000   # a trunk 0\n"  # 6: not canonical
    f"{NYC}\n"
    "call me maybe\n"  # 8
)


def test_invalid_lines_fail_the_load_with_their_line_numbers(path: Path) -> None:
    write(path, BAD)
    with pytest.raises(DncFileError) as info:
        DoNotCall.load(path)
    error = info.value
    assert error.code == "INVALID_DNC_FILE"
    assert isinstance(error, exceptions.ConfigError)
    assert [p.line for p in error.problems] == [3, 5, 6, 8]
    message = error.message
    assert message.startswith(f"{path}: 4 invalid line(s), the list was not (re)loaded: line 3: ")
    assert "line 5: 'number' is not a valid, dialable number: +1415555123" in message
    assert "line 6: 'number' is not in canonical E.164 form" in message
    assert "did you mean +31100000000?" in message
    assert "line 8: " in message


def test_without_strict_the_valid_lines_load_and_the_others_are_reported(path: Path) -> None:
    write(path, BAD)
    listed = DoNotCall.load(path, strict=False)
    assert sorted(listed) == sorted([SF, NYC])
    assert [(p.line, p.text) for p in listed.problems] == [
        (3, "4155551234"),
        (5, "+1415555123"),
        (6, "+310100000000"),
        (8, "call me maybe"),
    ]
    assert str(listed.problems[0]).startswith("line 3: 'number' must be E.164")


def test_csv_problems_have_file_line_numbers(path: Path) -> None:
    write(
        path,
        "# header on line 2\n"
        "name,number\n"
        f"Ada,{SF}\n"
        "Bob\n"  # 4: no number column
        "Carol,\n"  # 5: an empty number
        '"multi\nline",+1\n'  # 6-7: one record over two lines, a bad number
        f"Dan,{NYC}\n",
    )
    listed = DoNotCall.load(path, strict=False)
    assert sorted(listed) == sorted([SF, NYC])
    assert [(p.line, p.reason) for p in listed.problems][:2] == [(4, "no number"), (5, "no number")]
    assert listed.problems[2].line == 7
    assert listed.problems[2].text == "+1"


def test_the_error_shows_the_first_problems_and_counts_the_rest(path: Path) -> None:
    write(path, "".join(f"bad{i}\n" for i in range(dnc.SHOWN_PROBLEMS + 5)))
    with pytest.raises(DncFileError) as info:
        DoNotCall.load(path)
    assert len(info.value.problems) == dnc.SHOWN_PROBLEMS + 5
    assert info.value.message.endswith("; and 5 more")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DncFileError, match="cannot read the do-not-call file"):
        DoNotCall.load(tmp_path / "missing.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"# caf\xe9\n+14155551234\n")
    with pytest.raises(DncFileError, match="not UTF-8 text"):
        DoNotCall.load(latin)
    with pytest.raises(DncFileError, match="cannot read"):
        DoNotCall.load(tmp_path)  # a directory


# -- lookups and run-time changes ---------------------------------------------------------------


def test_contains_reads_separators_and_refuses_what_is_not_e164() -> None:
    listed = DoNotCall([SF])
    assert listed.contains(SF)
    assert listed.contains("+1 415 555 1234")
    assert SF in listed
    assert not listed.contains(NYC)
    for bad in ["4155551234", "", "+0123456789", "call me"]:
        with pytest.raises(exceptions.InvalidNumber):
            listed.contains(bad)
        with pytest.raises(exceptions.InvalidNumber):
            _ = bad in listed
    with pytest.raises(exceptions.InvalidNumber):
        _ = 14155551234 in listed


def test_the_constructor_validates() -> None:
    assert sorted(DoNotCall([SF, "+1 212 555 1234", SF])) == sorted([SF, NYC])
    with pytest.raises(exceptions.InvalidNumber):
        DoNotCall([SF, "+1415555123"])
    assert repr(DoNotCall()) == "<DoNotCall 0 numbers>"


def test_add_and_remove() -> None:
    listed = DoNotCall([SF])
    assert listed.add(NYC)
    assert not listed.add(NYC)
    assert not listed.add("+1 415 555 1234")  # already listed
    assert len(listed) == 2
    with pytest.raises(exceptions.InvalidNumber):
        listed.add("+1415555123")  # validated like a number to call
    assert listed.remove(SF)
    assert not listed.remove(SF)
    assert not listed.contains(SF)
    assert listed.remove(NYC)
    assert not listed.remove(LONDON)
    assert len(listed) == 0
    assert list(listed) == []
    assert listed.add(SF)  # a removed listed number comes back
    assert list(listed) == [SF]


def test_refresh_without_a_file_does_nothing() -> None:
    assert DoNotCall([SF]).refresh() is False


OPS = st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from(EXAMPLES[:30])))


@given(st.sets(st.sampled_from(EXAMPLES[:30])), OPS)
@settings(max_examples=100, deadline=None)
def test_run_time_changes_behave_like_a_set(initial: set[str], ops: list[tuple[str, str]]) -> None:
    listed = DoNotCall(initial)
    model = set(initial)
    for op, number in ops:
        if op == "add":
            assert listed.add(number) == (number not in model)
            model.add(number)
        else:
            assert listed.remove(number) == (number in model)
            model.discard(number)
        assert len(listed) == len(model)
    assert set(listed) == model
    assert sorted(listed, key=lambda n: int(n[1:])) == list(listed)
    assert all(listed.contains(n) == (n in model) for n in EXAMPLES[:30])


@given(st.lists(st.sampled_from(EXAMPLES), max_size=40), st.booleans(), st.randoms())
@settings(max_examples=50, deadline=None)
def test_any_valid_numbers_round_trip_through_a_file(
    numbers: list[str], as_csv: bool, rnd: random.Random
) -> None:
    def spaced(number: str) -> str:
        at = rnd.randrange(2, len(number))
        return number[:at] + rnd.choice(["", " ", "-", "."]) + number[at:]

    lines = [f"x,{spaced(n)}" if as_csv else spaced(n) for n in numbers]
    text = ("id,number\n" if as_csv else "") + "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        listed = DoNotCall.load(write(Path(tmp) / "dnc.txt", text))
    assert set(listed) == set(numbers)
    assert len(listed) == len(set(numbers))


# -- reloading ----------------------------------------------------------------------------------


def test_refresh_reloads_only_when_the_file_changes(path: Path) -> None:
    write(path, f"{SF}\n", mtime_ns=1_000_000_000_000_000_000)
    listed = DoNotCall.load(path)
    assert listed.refresh() is False
    write(path, f"{NYC}\n", mtime_ns=1_000_000_000_000_000_000)  # same size and mtime, new inode
    assert listed.refresh() is True
    assert list(listed) == [NYC]
    assert listed.refresh() is False
    write(path, f"{SF}\n{NYC}\n", mtime_ns=1_000_000_001_000_000_000)
    assert listed.refresh() is True
    assert sorted(listed) == sorted([SF, NYC])


def test_an_in_place_edit_with_a_new_mtime_is_seen(path: Path) -> None:
    write(path, f"{SF}\n", mtime_ns=1_000_000_000_000_000_000)
    listed = DoNotCall.load(path)
    path.write_text(f"{NYC}\n")  # same size, same inode
    os.utime(path, ns=(1_000_000_002_000_000_000, 1_000_000_002_000_000_000))
    assert listed.refresh() is True
    assert list(listed) == [NYC]


def test_a_reload_keeps_run_time_additions_and_drops_run_time_removals(path: Path) -> None:
    write(path, f"{SF}\n{NYC}\n", mtime_ns=1_000_000_000_000_000_000)
    listed = DoNotCall.load(path)
    assert listed.add(LONDON)  # an opt-out heard on a call
    assert listed.add(PARIS)
    assert listed.remove(NYC)
    write(path, f"{SF}\n{NYC}\n{PARIS}\n", mtime_ns=1_000_000_001_000_000_000)
    assert listed.refresh() is True
    # LONDON survives the reload; PARIS is now listed by the file; NYC is listed again.
    assert sorted(listed) == sorted([SF, NYC, LONDON, PARIS])
    assert len(listed) == 4
    assert listed.remove(PARIS)  # listed by the file: removed until the next reload
    assert len(listed) == 3


def test_a_broken_file_keeps_the_old_list_and_is_reported_once(path: Path) -> None:
    write(path, f"{SF}\n", mtime_ns=1_000_000_000_000_000_000)
    listed = DoNotCall.load(path)
    write(path, f"{NYC}\n+1415555123\n", mtime_ns=1_000_000_001_000_000_000)
    with pytest.raises(DncFileError, match="line 2: "):
        listed.refresh()
    assert list(listed) == [SF]
    assert listed.refresh() is False  # the same broken file is not read again
    write(path, f"{NYC}\n", mtime_ns=1_000_000_002_000_000_000)
    assert listed.refresh() is True
    assert list(listed) == [NYC]


def test_a_lenient_reload_reports_its_problems(path: Path) -> None:
    write(path, f"{SF}\n", mtime_ns=1_000_000_000_000_000_000)
    listed = DoNotCall.load(path, strict=False)
    write(path, f"{NYC}\noops\n", mtime_ns=1_000_000_001_000_000_000)
    assert listed.refresh() is True
    assert list(listed) == [NYC]
    assert listed.problems == (LineProblem(line=2, text="oops", reason=listed.problems[0].reason),)


def test_a_missing_file_keeps_the_old_list_until_it_is_back(path: Path) -> None:
    write(path, f"{SF}\n", mtime_ns=1_000_000_000_000_000_000)
    listed = DoNotCall.load(path)
    path.unlink()
    with pytest.raises(DncFileError, match="cannot read"):
        listed.refresh()
    assert list(listed) == [SF]
    write(path, f"{SF}\n", mtime_ns=1_000_000_001_000_000_000)
    assert listed.refresh() is True
    assert list(listed) == [SF]


def test_a_reload_validates_only_new_lines(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    validate = phone.validate_number

    def counting(number: object, *, field: str = "to") -> str:
        calls.append(str(number))
        return validate(number, field=field)

    monkeypatch.setattr(phone, "validate_number", counting)
    write(path, f"{SF}\n{NYC}\n", mtime_ns=1_000_000_000_000_000_000)
    listed = DoNotCall.load(path)
    assert calls == [SF, NYC]
    write(path, f"{SF}\n{NYC}\n+1 (212) 555-1234\n{LONDON}\n", mtime_ns=1_000_000_001_000_000_000)
    assert listed.refresh() is True
    assert calls == [SF, NYC, LONDON]
    assert len(listed) == 3


def many_numbers(count: int) -> list[str]:
    rnd = random.Random(7)
    areas = ["415", "212", "312", "617", "206", "303", "404", "512"]
    return [
        f"+1{rnd.choice(areas)}{rnd.randint(2, 9)}{rnd.randint(0, 999_999):06d}"
        for _ in range(count)
    ]


def test_a_number_costs_eight_bytes(path: Path) -> None:
    numbers = many_numbers(20_000)
    write(path, "\n".join(numbers) + "\n")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        listed = DoNotCall.load(path)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(listed) == len(set(numbers))
    assert held < 8 * len(numbers) * 1.25 + 20_000  # the array, with room for its growth
