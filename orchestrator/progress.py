"""What ``orchestrator demo`` shows: live progress while the campaign runs, then a summary.

Two renderings of the same data: a `rich` live panel when the output is a terminal, plain
lines (about one a second) otherwise, so a log file or a CI transcript stays readable. The
demo gathers the numbers (:class:`Snapshot`, :class:`Summary`); this module only draws them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, cast

import structlog
from rich import box
from rich.console import Console, Group, RenderableType
from rich.file_proxy import FileProxy
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

#: How each final outcome is shown, in this order (colours only on a terminal).
OUTCOME_STYLES: Mapping[str, str] = {
    "completed": "green",
    "busy": "yellow",
    "no_answer": "yellow",
    "failed": "red",
    "canceled": "magenta",
    "rejected": "red",
    "timed_out": "red",
}


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The campaign at one moment: ``done`` calls have a final outcome (no retry follows)."""

    elapsed: float
    total: int
    done: int
    outcomes: Mapping[str, int]
    live: int
    waiting: int
    attempts: int  # dials placed so far
    retries: int
    gave_up: int
    slack: int
    last_slack: str | None = None


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Everything the closing table shows; ``problems`` are failed consistency checks (the
    demo then exits nonzero), ``checks`` the ones that passed."""

    campaign: str
    rows: int
    calls: int
    invalid: int
    invalid_examples: Sequence[tuple[int, str]]
    outcomes: Mapping[str, int]
    attempts: int
    attempts_per_call: Mapping[int, int]
    max_attempts: int
    retries: int
    gave_up: int
    durations: Sequence[float]
    looked_up: int = 0  # attempts whose outcome was read from the provider's records
    cost: float
    price_per_minute: float
    caller_ids: Mapping[str, int]
    slack: int
    elapsed: float
    time_scale: float
    checks: Sequence[str] = ()
    problems: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        """Calls that reached someone."""
        return len(self.durations)

    @property
    def average(self) -> float:
        """Mean duration of the answered calls (simulated seconds), 0 if none."""
        return sum(self.durations) / len(self.durations) if self.durations else 0.0

    @property
    def median(self) -> float:
        """Median duration of the answered calls (simulated seconds), 0 if none."""
        ordered = sorted(self.durations)
        if not ordered:
            return 0.0
        middle = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[middle]
        return (ordered[middle - 1] + ordered[middle]) / 2


class View(Protocol):
    """Where the demo reports: ``note`` a line, ``update`` the progress, then ``summary``."""

    def start(self) -> None: ...

    def note(self, text: str) -> None: ...

    def update(self, snap: Snapshot) -> None: ...

    def stop(self) -> None: ...

    def summary(self, summary: Summary) -> None: ...


def make_view(out: TextIO, *, live: bool | None = None) -> View:
    """A rich view when ``out`` is a terminal (or ``live`` says so), else a plain one."""
    if live is None:
        live = _isatty(out)
    return RichView(out) if live else PlainView(out)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or exotic stream
        return False


def duration(seconds: float) -> str:
    """``42s``, ``2m 05s``."""
    total = round(seconds)
    return f"{total}s" if total < 60 else f"{total // 60}m {total % 60:02d}s"


def _outcome_items(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    known = [(k, counts[k]) for k in OUTCOME_STYLES if counts.get(k)]
    return known + sorted((k, v) for k, v in counts.items() if k not in OUTCOME_STYLES and v)


def _facts(s: Summary) -> list[tuple[str, str]]:
    """The summary's lines after the outcome table, as (label, text)."""
    spread = ", ".join(
        f"{n} attempt{'s' if n > 1 else ''}: {c}" for n, c in sorted(s.attempts_per_call.items())
    )
    per_call = s.attempts / s.calls if s.calls else 0.0
    minutes = sum(s.durations) / 60
    invalid = f"{s.invalid} of {s.rows} rows, not dialled" if s.invalid else "none"
    scale = f" (simulated time runs {1 / s.time_scale:g}x faster)" if s.time_scale else ""
    facts = [
        ("attempts", f"{s.attempts} in all, {per_call:.2f} per call ({spread})"),
        (
            "retries",
            f"{s.retries} scheduled (busy, no answer); {s.gave_up} calls given up "
            f"after {s.max_attempts} attempts",
        ),
        (
            "look-ups",
            f"{s.looked_up} outcomes read from the provider's records (no webhook came)",
        ),
        (
            "answered",
            f"{s.answered} calls, avg {duration(s.average)}, median {duration(s.median)} "
            "(simulated call time)",
        ),
        (
            "estimated cost",
            f"${s.cost:,.2f} ({minutes:,.1f} min at ${s.price_per_minute:g}/min)",
        ),
        ("caller ids", ", ".join(f"{n} x{c}" for n, c in sorted(s.caller_ids.items()))),
        ("slack", f"{s.slack} messages received by the local stand-in"),
        ("invalid rows", invalid),
    ]
    facts += [("", f"line {line}: {reason}") for line, reason in s.invalid_examples]
    if s.invalid > len(s.invalid_examples):
        facts.append(("", f"... and {s.invalid - len(s.invalid_examples)} more"))
    facts.append(("elapsed", f"{s.elapsed:.1f}s{scale}"))
    return facts


def _checks(s: Summary) -> list[tuple[str, str]]:
    if s.problems:
        return [("PROBLEM", p) for p in s.problems]
    return [("checks", "passed: " + "; ".join(s.checks))]


class PlainView:
    """Plain lines: a progress line about once a second, then the summary as aligned text."""

    every = 1.0

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._last: float | None = None

    def start(self) -> None:
        """Nothing to set up."""

    def note(self, text: str) -> None:
        """Print one line."""
        print(text, file=self.out, flush=True)

    def update(self, snap: Snapshot) -> None:
        """Print a progress line if a second has passed since the last one."""
        if self._last is not None and snap.elapsed - self._last < self.every:
            return
        self._last = snap.elapsed
        outcomes = " ".join(f"{k} {v}" for k, v in _outcome_items(snap.outcomes))
        self.note(
            f"{snap.elapsed:5.1f}s  done {snap.done}/{snap.total}  live {snap.live}  "
            f"waiting {snap.waiting}  dials {snap.attempts}  retries {snap.retries}  "
            f"slack {snap.slack}" + (f"  | {outcomes}" if outcomes else "")
        )

    def stop(self) -> None:
        """Nothing to tear down."""

    def summary(self, summary: Summary) -> None:
        """The summary as aligned plain text."""
        s = summary
        lines = [
            "",
            f"summary: campaign {s.campaign!r}, {s.rows} rows, {s.calls} calls",
            f"  {'outcome':<16}{'calls':>6}{'%':>8}",
        ]
        for name, count in _outcome_items(s.outcomes):
            share = 100 * count / s.calls if s.calls else 0.0
            lines.append(f"  {name:<16}{count:>6}{share:>7.1f}%")
        lines.append(f"  {'total':<16}{sum(s.outcomes.values()):>6}")
        for label, text in [*_facts(s), *_checks(s)]:
            lines.append(f"  {label:<16}{text}" if label else f"  {'':<18}{text}")
        self.note("\n".join(lines))


class RichView:
    """A live panel (progress bar, counters, outcomes, the latest Slack message) redrawn a few
    times a second, then the summary as tables. While it is live, the daemon's log lines are
    printed above the panel instead of through it."""

    def __init__(self, out: TextIO) -> None:
        self.console = Console(file=out)
        self._live: Live | None = None
        self._saved_factory: Any = None

    def start(self) -> None:
        """Start the live panel; route structlog's lines above it (if stderr is this tty)."""
        self._live = Live(
            self._panel(None), console=self.console, refresh_per_second=8, transient=False
        )
        self._live.start()
        if _isatty(sys.stderr) and self.console.is_terminal:
            config = structlog.get_config()
            self._saved_factory = config["logger_factory"]
            structlog.configure(
                logger_factory=structlog.PrintLoggerFactory(
                    cast(TextIO, FileProxy(self.console, sys.stderr))
                )
            )

    def note(self, text: str) -> None:
        """Print a line (above the live panel while it runs)."""
        self.console.print(text, highlight=False)

    def update(self, snap: Snapshot) -> None:
        """Redraw the panel with ``snap``."""
        if self._live is not None:
            self._live.update(self._panel(snap))

    def stop(self) -> None:
        """Leave the last panel on screen and give structlog its stream back."""
        if self._saved_factory is not None:
            structlog.configure(logger_factory=self._saved_factory)
            self._saved_factory = None
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _panel(self, snap: Snapshot | None) -> RenderableType:
        if snap is None:
            return Panel(Text("starting the simulator and the daemon..."), title="demo")
        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right", style="bold")
        grid.add_column()
        share = snap.done / snap.total if snap.total else 1.0
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(snap.total, 1), completed=snap.done, width=40),
            Text(f"{snap.done}/{snap.total} calls done  {share:.0%}"),
        )
        grid.add_row("progress", bar)
        grid.add_row(
            "now",
            f"{snap.live} live  {snap.waiting} waiting  {snap.attempts} dials  "
            f"{snap.retries} retries scheduled  {snap.gave_up} given up",
        )
        outcomes = Text()
        for name, count in _outcome_items(snap.outcomes):
            outcomes.append(f"{name} {count}  ", style=OUTCOME_STYLES.get(name, ""))
        grid.add_row("outcomes", outcomes)
        slack = f"{snap.slack} messages"
        if snap.last_slack:
            slack += f"  latest: {snap.last_slack[:90]}"
        grid.add_row("slack", Text(slack))
        return Panel(grid, title=f"orchestrator demo  {snap.elapsed:.1f}s", border_style="blue")

    def summary(self, summary: Summary) -> None:
        """The summary as an outcome table and a table of facts."""
        s = summary
        self.console.rule(f"summary: campaign {s.campaign!r}, {s.rows} rows, {s.calls} calls")
        outcomes = Table(box=box.SIMPLE_HEAD)
        outcomes.add_column("outcome")
        outcomes.add_column("calls", justify="right")
        outcomes.add_column("%", justify="right")
        for name, count in _outcome_items(s.outcomes):
            share = 100 * count / s.calls if s.calls else 0.0
            style = OUTCOME_STYLES.get(name, "")
            outcomes.add_row(Text(name, style=style), str(count), f"{share:.1f}")
        outcomes.add_row(Text("total", style="bold"), str(sum(s.outcomes.values())), "")
        facts = Table.grid(padding=(0, 2))
        facts.add_column(justify="right", style="bold")
        facts.add_column()
        for label, text in _facts(s):
            facts.add_row(label, Text(text))
        for label, text in _checks(s):
            style = "bold red" if s.problems else "green"
            facts.add_row(Text(label, style=style), Text(text, style=style))
        self.console.print(Group(outcomes, facts))
