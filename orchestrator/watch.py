"""``--watch``: follow a running daemon from the terminal (``campaign show ID --watch``,
``status --watch``).

On a terminal the view is redrawn in place (a ``rich`` live display, as the demo's); into a
pipe or a file it is one plain line per change, stamped with the time, so a log of it reads
top to bottom. A campaign's watch ends by itself when the campaign is completed or canceled;
``status --watch`` runs until Ctrl-C.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

#: The exit status of a command that could not reach the daemon (remote.EXIT_UNAVAILABLE).
UNREACHABLE = 4

#: The campaign states a campaign's watch stops at.
FINAL_CAMPAIGN = ("completed", "canceled")


def campaign_line(c: dict[str, Any]) -> str:
    """One campaign as one line: status, calls by state, spend."""
    progress = c.get("progress") or {}
    states = ", ".join(f"{k} {v}" for k, v in sorted((progress.get("by_state") or {}).items()))
    spent = f"spent {c['spent']:.2f}" + (
        f" of {c['budget']:.2f}" if c["budget"] is not None else ""
    )
    status = c["status"] + (f" ({c['reason']})" if c.get("reason") else "")
    calls = progress.get("calls", 0)
    return f"{status}; {calls} calls" + (f": {states}" if states else "") + f"; {spent}"


def held_text(queue: dict[str, int]) -> str:
    """What holds the queued calls, e.g. ``ready 1, paused campaign 20`` (zero counts left out)."""
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in queue.items() if v)


def status_line(s: dict[str, Any]) -> str:
    """The fleet's status as one line: live, the queue by what holds it, dialing, dead."""
    held = held_text(s.get("queue") or {})
    dialing = s["dialing"]
    state = f"paused ({dialing['reason']})" if dialing["paused"] else "running"
    return (
        f"live {s['live']}; queued {s['queued']}" + (f" ({held})" if held else "")
        + f"; dialing {state}; dead letters {s.get('dead_letters', 0)}"
    )  # fmt: skip


def as_json(answer: dict[str, Any]) -> str:
    """``--watch --json``: each changed answer as one JSON line."""
    return json.dumps(answer, sort_keys=True)


def watch(
    fetch: Callable[[], dict[str, Any]],
    *,
    text: Callable[[dict[str, Any]], str],
    line: Callable[[dict[str, Any]], str],
    done: Callable[[dict[str, Any]], bool] = lambda answer: False,
    every: float = 1.0,
    out: TextIO | None = None,
    plain: bool = False,
) -> int:
    """Fetch and show until ``done`` (exit 0) or Ctrl-C (exit 130): the whole ``text`` redrawn
    in place on a terminal, else (or with ``plain``) a ``line`` each time it changes, stamped
    unless it is JSON. A daemon out of reach for a while (a restart) is said and waited for."""
    out = out if out is not None else sys.stdout
    fetch = _patient(fetch, out if plain or not out.isatty() else sys.stderr)
    try:
        if out.isatty() and not plain:
            return _live(fetch, text=text, done=done, every=every, out=out)
        last = None
        while True:
            answer = fetch()
            current = line(answer)
            if current != last:
                stamp = "" if line is as_json else f"{time.strftime('%H:%M:%S')}  "
                print(f"{stamp}{current}", file=out, flush=True)
                last = current
            if done(answer):
                return 0
            time.sleep(every)
    except KeyboardInterrupt:
        return 130


def _patient(
    fetch: Callable[[], dict[str, Any]], notes: TextIO, *, give_up: float = 60.0
) -> Callable[[], dict[str, Any]]:
    """``fetch`` that rides out a daemon unreachable for up to ``give_up`` seconds (it says so
    once), then lets the failure through."""
    from orchestrator.exceptions import CommandFailed

    def patient() -> dict[str, Any]:
        since: float | None = None
        while True:
            try:
                return fetch()
            except CommandFailed as exc:
                if exc.status != UNREACHABLE:
                    raise
                now = time.monotonic()
                if since is None:
                    since = now
                    print(f"(the daemon is out of reach: {exc.message}; waiting)", file=notes)
                elif now - since > give_up:
                    raise
                time.sleep(1.0)

    return patient


def _live(
    fetch: Callable[[], dict[str, Any]],
    *,
    text: Callable[[dict[str, Any]], str],
    done: Callable[[dict[str, Any]], bool],
    every: float,
    out: TextIO,
) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console(file=out)
    answer = fetch()
    with Live(Text(text(answer)), console=console, auto_refresh=False) as live:
        while not done(answer):
            time.sleep(every)
            answer = fetch()
            stamp = time.strftime("%H:%M:%S")
            live.update(Text(f"{text(answer)}\n\n(updated {stamp}; Ctrl-C to stop)"), refresh=True)
    return 0
