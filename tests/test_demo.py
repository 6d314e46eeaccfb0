"""``orchestrator demo``: the bundled campaign, its parsing, the rendering, and whole runs.

The whole runs call ``demo.run`` in this process with a non-terminal output, so the plain
progress lines and the plain summary are what is asserted on (as a CI log would show them).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from orchestrator import demo, exceptions
from orchestrator.model import NewCall
from orchestrator.progress import PlainView, RichView, Snapshot, Summary
from orchestrator.store.campaigns import RowError

# The sample's invalid rows (line numbers count the header as line 1).
INVALID_LINES = [5, 8, 12, 17, 20, 53, 98, 144, 202, 267]


def sample_rows(limit: int | None = None) -> list[NewCall | RowError]:
    with demo._open_sample(None) as lines:
        return list(demo.read_rows(lines, limit=limit))


def test_the_bundled_sample_has_a_few_hundred_rows_some_invalid() -> None:
    rows = sample_rows()
    errors = [r for r in rows if isinstance(r, RowError)]
    calls = [r for r in rows if isinstance(r, NewCall)]
    assert len(rows) == 300
    assert [e.line for e in errors] == INVALID_LINES
    reasons = {e.line: e.reason for e in errors}
    assert reasons[5] == "phone is empty"
    assert "canonical" in reasons[12] and "+310100000000" in reasons[12]
    assert "+1415555CALL" in reasons[20]
    assert len({c.to for c in calls}) == len(calls) == 290
    # Every scripted number is in the sample, early enough for a short run to meet it.
    first = {c.to for c in calls[:20]}
    assert set(demo.SCRIPTS) <= first


def test_a_row_becomes_a_call_with_its_columns_as_metadata() -> None:
    text = "phone,first_name,last_name,tier,purpose\n+14155550142,Ada,Lovelace,gold,Renewal\n"
    (row,) = demo.read_rows(io.StringIO(text))
    assert isinstance(row, NewCall)
    assert row.to == "+14155550142"
    assert row.from_ == ""  # the campaign's caller-id pool decides
    assert row.purpose == "Renewal"
    assert dict(row.metadata) == {"name": "Ada Lovelace", "tier": "gold", "line": 2}


def test_rows_are_read_lazily_and_limited() -> None:
    assert len(sample_rows(limit=12)) == 12
    assert [r.line for r in sample_rows(limit=12) if isinstance(r, RowError)] == [5, 8, 12]


def test_a_file_without_a_phone_column_is_refused() -> None:
    with pytest.raises(exceptions.InputError, match="phone"):
        list(demo.read_rows(io.StringIO("number,name\n+14155550142,Ada\n")))


def summary(**overrides: object) -> Summary:
    values: dict[str, object] = {
        "campaign": "sample",
        "rows": 12,
        "calls": 10,
        "invalid": 2,
        "invalid_examples": [(3, "phone is empty"), (7, "not E.164")],
        "outcomes": {"completed": 7, "busy": 1, "failed": 2},
        "attempts": 13,
        "attempts_per_call": {1: 8, 2: 1, 3: 1},
        "max_attempts": 3,
        "retries": 3,
        "gave_up": 1,
        "durations": [60.0, 120.0, 90.0],
        "cost": 0.405,
        "price_per_minute": 0.09,
        "caller_ids": {"+16045551234": 7, "+16045551235": 6},
        "slack": 3,
        "elapsed": 4.2,
        "time_scale": 0.01,
        "checks": ["10/10 calls ended"],
    }
    values.update(overrides)
    return Summary(**values)  # type: ignore[arg-type]


def test_the_plain_summary_shows_outcomes_attempts_cost_and_invalid_rows() -> None:
    out = io.StringIO()
    PlainView(out).summary(summary())
    text = out.getvalue()
    assert re.search(r"completed\s+7\s+70\.0%", text)
    assert "13 in all, 1.30 per call" in text
    assert "avg 1m 30s, median 1m 30s" in text
    assert "$0.41" in text
    assert "line 3: phone is empty" in text and "line 7: not E.164" in text
    assert "passed: 10/10 calls ended" in text


def test_a_failed_check_is_shown_as_a_problem() -> None:
    out = io.StringIO()
    PlainView(out).summary(summary(problems=["2 dials at the provider, 3 attempts"]))
    assert "PROBLEM" in out.getvalue() and "passed" not in out.getvalue()


def test_plain_progress_prints_about_once_a_second() -> None:
    out = io.StringIO()
    view = PlainView(out)
    for tenth in range(25):
        view.update(snapshot(elapsed=tenth / 10))
    assert len(out.getvalue().splitlines()) == 3  # at 0.0, 1.0 and 2.0 seconds
    assert "done 4/10" in out.getvalue() and "completed 3" in out.getvalue()


def snapshot(elapsed: float) -> Snapshot:
    return Snapshot(
        elapsed=elapsed,
        total=10,
        done=4,
        outcomes={"completed": 3, "failed": 1},
        live=2,
        waiting=4,
        attempts=6,
        retries=1,
        gave_up=0,
        slack=1,
        last_slack="Ada Lovelace (gold, +14155550142): call.failed on attempt 1",
    )


def test_the_rich_view_draws_the_panel_and_the_summary() -> None:
    out = io.StringIO()
    view = RichView(out)
    view.start()
    view.update(snapshot(1.0))
    view.stop()
    view.summary(summary())
    text = out.getvalue()
    assert "4/10 calls done" in text and "Ada Lovelace" in text
    assert "completed" in text and "line 3: phone is empty" in text


def number(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in the output:\n{text}"
    return int(found.group(1))


async def test_a_campaign_that_does_not_end_in_time_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "DEADLINE", 0.5)
    assert await demo.run(io.StringIO(), calls=30) == 1
    assert "did not end within 0.5s" in capsys.readouterr().err


@pytest.mark.slow
async def test_a_small_campaign_retries_tells_slack_and_reports_invalid_rows(
    tmp_path: Path,
) -> None:
    csv = tmp_path / "small.csv"
    csv.write_text(
        "phone,first_name,last_name,tier\n"
        "+14155550101,Busy,Twice,gold\n"  # busy, busy, then answered
        ",No,Number,bronze\n"
        "+12125550104,Always,Fails,silver\n"  # failed: Slack
        "+1 415 555 0199,Has,Spaces,bronze\n"
    )
    out = io.StringIO()
    assert await demo.run(out, sample=csv) == 0
    text = out.getvalue()
    assert "2/2 calls ended" in text
    assert re.search(r"completed\s+1\s+50\.0%", text)
    assert re.search(r"failed\s+1\s+50\.0%", text)
    assert "4 in all" in text and "2 scheduled" in text
    assert "1 Slack messages for 1 events" in text
    assert "line 3: phone is empty" in text and "line 5:" in text


@pytest.mark.slow
async def test_the_demo_dials_the_whole_sample_within_a_minute() -> None:
    out = io.StringIO()
    status = await demo.run(out)
    text = out.getvalue()
    assert status == 0, text
    assert "290/290 calls ended" in text
    # Progress lines came while it ran, then the summary.
    assert len(re.findall(r"^\s*\d+\.\ds  done \d+/290", text, re.M)) >= 3
    assert "summary: campaign 'sample_campaign', 300 rows, 290 calls" in text
    assert "10 of 300 rows, not dialled" in text
    assert "line 5: phone is empty" in text and "line 12: " in text
    retries = number(r"retries\s+(\d+) scheduled", text)
    attempts = number(r"attempts\s+(\d+) in all", text)
    assert retries > 0 and attempts == 290 + retries
    assert number(r"slack\s+(\d+) messages received", text) > 0
    cost = re.search(r"estimated cost\s+\$([\d,]+\.\d\d)", text)
    assert cost and float(cost.group(1).replace(",", "")) > 0
    # The two numbers whose webhooks are lost: their outcomes are read from the records.
    assert number(r"look-ups\s+(\d+) outcomes read", text) >= 2
    assert "timed_out" not in text
    assert "checks          passed:" in text and "PROBLEM" not in text
    assert number(r"elapsed\s+(\d+)\.\ds", text) < 50
