"""``orchestrator demo``: the product on a laptop with nothing configured, in under a minute.

It imports a bundled sample campaign (a few hundred rows, some of them invalid) into a
temporary SQLite store, then runs the built-in Magpipe simulator, a local stand-in for a Slack
incoming webhook and the daemon in this one process. The daemon dials the campaign from a pool
of caller ids, the simulator answers with a realistic mix of outcomes (and a few scripted
numbers, so every path shows up), and the daemon's rules retry busy and unanswered numbers,
post calls that need a human to "Slack" and log the ones given up on. Progress is shown live;
the run ends with a summary and a set of consistency checks (every valid row ended, every
attempt reached the provider once, the cost agrees three ways...): exit status 0 only if
they all pass.

Time in the simulator runs :data:`TIME_SCALE` times real time, so calls last realistic
minutes of simulated time; the daemon's own timers (retry delay, watchdog) are real seconds.
"""

from __future__ import annotations

import asyncio
import csv
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from orchestrator import bus, config, connectors, exceptions, phone
from orchestrator.daemon.supervisor import Daemon, subscriptions_from
from orchestrator.exceptions import DemoError, DemoInterrupted
from orchestrator.model import RESERVED_PREFIX, CallStatus, Event, NewCall
from orchestrator.plugin import Context
from orchestrator.progress import Snapshot, Summary, View, make_view
from orchestrator.provider.simulator import Simulator
from orchestrator.provider.simulator.model import Faults, Outcome, Script, SimulatorConfig
from orchestrator.store import Store
from orchestrator.store.campaigns import CampaignSettings, RowError

__all__ = [
    "SCRIPTS",
    "DemoError",
    "DemoInterrupted",
    "Imported",
    "SlackStandIn",
    "Tracker",
    "demo_config",
    "import_campaign",
    "read_rows",
    "run",
]

AGENT = "c72ea2b8-1234-5678-9abc-def012345678"
#: The campaign's caller-id pool (provisioned in the simulator); the least busy one dials.
CALLER_IDS = ("+16045551234", "+16045551235", "+16045551236")
PRICE_PER_MINUTE = 0.09
#: Real seconds per simulated second (the simulator's delays): a two-minute call takes 1.2 s.
TIME_SCALE = 0.01
MAX_ATTEMPTS = 3
#: The retry handler's first wait, real seconds (two simulated minutes), then x1.5.
RETRY_DELAY = 1.2
#: Real seconds after which a call with no terminal webhook ends ``timed_out`` (the longest
#: simulated call, 262 s, takes 2.6 s).
WATCHDOG = 10.0
#: A call with no terminal webhook this long after placement is looked up at the provider.
LOOKUP_AFTER = 3.0
#: Rows written per import transaction: memory stays bounded whatever the file's size.
CHUNK = 100
#: Give up (exit 1) if the campaign has not ended this long after the start.
DEADLINE = 55.0
POLL = 0.2
SEED = 7
SAMPLE = "sample_campaign.csv"

#: Numbers of the sample whose dials are scripted, so every path is seen on every run.
SCRIPTS: Mapping[str, Script] = {
    # busy twice, then answered: retries pay off
    "+14155550101": Script(outcome=Outcome.BUSY, then=(Outcome.BUSY, Outcome.COMPLETED)),
    # never picks up: retries exhausted after MAX_ATTEMPTS
    "+14155550102": Script(outcome=Outcome.NO_ANSWER, ring=25.0),
    "+14155550103": Script(outcome=Outcome.BUSY, then=(Outcome.NO_ANSWER, Outcome.BUSY)),
    "+12125550104": Script(outcome=Outcome.FAILED, ring=2.0),
    # the provider's webhooks never arrive: look-ups read each outcome from its records
    "+14155550105": Script(outcome=Outcome.NO_ANSWER, fault="lose_webhooks"),
    "+14155550106": Script(outcome=Outcome.NO_ANSWER, fault="lose_webhooks"),
}

RETRIED = ("call.busy", "call.no_answer")
NEEDS_A_HUMAN = ("call.failed", "call.timed_out", "call.retries_exhausted")
GIVEN_UP = ("call.timed_out", "call.retries_exhausted")
TERMINAL_TYPES = tuple(s.event_type for s in CallStatus if s.terminal)


# -- the campaign file -----------------------------------------------------------------------


def read_rows(lines: Iterable[str], *, limit: int | None = None) -> Iterator[NewCall | RowError]:
    """Each data row of a campaign CSV as a call to queue, or as the line and reason it cannot
    be one; streamed, so a file of any size is read in bounded memory.

    The header must name a ``phone`` column (E.164, canonical); ``purpose`` overrides the
    campaign's; ``first_name`` and ``last_name`` become ``name``; the other columns become the
    call's metadata (echoed back in every webhook and event). ``limit`` stops after that many
    data rows.
    """
    reader = csv.DictReader(lines)
    fields = reader.fieldnames or []
    if "phone" not in fields:
        raise exceptions.InputError(f"the CSV header names no 'phone' column: {fields}")
    for index, row in enumerate(reader):
        if limit is not None and index >= limit:
            return
        line = reader.line_num
        number = (row.get("phone") or "").strip()
        if not number:
            yield RowError(line=line, reason="phone is empty")
            continue
        try:
            phone.validate_number(number, field="phone")
            metadata = phone.validate_metadata(
                _metadata(row, line), reserved_prefix=RESERVED_PREFIX
            )
        except exceptions.InputError as exc:
            yield RowError(line=line, reason=exc.message)
            continue
        purpose = (row.get("purpose") or "").strip() or None
        # No caller id of its own: the campaign's pool gives the least busy one at each dial.
        yield NewCall(to=number, from_="", metadata=metadata, purpose=purpose)


def _metadata(row: Mapping[str | None, Any], line: int) -> dict[str, Any]:
    meta: dict[str, Any] = {
        k: v.strip()
        for k, v in row.items()
        if isinstance(k, str) and k not in ("phone", "purpose") and isinstance(v, str) and v
    }
    name = f"{meta.pop('first_name', '')} {meta.pop('last_name', '')}".strip()
    if name:
        meta["name"] = name
    meta["line"] = line
    return meta


@dataclass(kw_only=True)
class Imported:
    """What an import did: the campaign, rows read, calls queued, rows refused (a few kept)."""

    campaign_id: str
    name: str
    rows: int = 0
    calls: int = 0
    invalid: int = 0
    examples: list[RowError] = field(default_factory=list)


async def import_campaign(
    store: Store, name: str, rows: Iterable[NewCall | RowError], settings: CampaignSettings
) -> Imported:
    """Create the campaign and queue its rows, :data:`CHUNK` per transaction."""
    campaign = await store.create_campaign(name, settings)
    done = Imported(campaign_id=str(campaign["id"]), name=name)
    import_no = await store.begin_import(done.campaign_id)
    calls: list[NewCall] = []
    errors: list[RowError] = []
    for item in rows:
        if isinstance(item, RowError):
            errors.append(item)
            if len(done.examples) < 5:
                done.examples.append(item)
        else:
            calls.append(item)
        if len(calls) + len(errors) >= CHUNK:
            await store.import_rows(done.campaign_id, calls, errors, import_no=import_no)
            done.calls, done.invalid = done.calls + len(calls), done.invalid + len(errors)
            calls, errors = [], []
    await store.import_rows(done.campaign_id, calls, errors, import_no=import_no)
    done.calls, done.invalid = done.calls + len(calls), done.invalid + len(errors)
    done.rows = done.calls + done.invalid
    return done


@contextmanager
def _open_sample(path: Path | None) -> Iterator[TextIO]:
    """The campaign file: ``path``, or the sample shipped in the package."""
    with ExitStack() as stack:
        if path is None:
            sample = resources.files("orchestrator") / "data" / SAMPLE
            path = stack.enter_context(resources.as_file(sample))
        yield stack.enter_context(path.open(newline="", encoding="utf-8-sig"))


# -- the stand-ins -----------------------------------------------------------------------------


class SlackStandIn:
    """A local stand-in for a Slack incoming webhook: it answers ``ok`` as Slack does and
    counts the messages, so the ``slack`` plugin runs for real without a Slack workspace."""

    path = "/services/T0DEMO/B0DEMO/stand-in"

    def __init__(self) -> None:
        self.received = 0
        self.latest: str | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Serve on a free loopback port; return the webhook URL."""
        application = web.Application()
        application.router.add_post(self.path, self._receive)
        self._runner = web.AppRunner(application, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}{self.path}"

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(body, dict) or not body.get("text"):
            return web.Response(status=400, text="no_text")
        self.received += 1
        self.latest = str(body["text"])
        return web.Response(text="ok")


class Tracker:
    """A handler on the daemon's bus (outcome and retry events) that tallies what the events
    say, so the summary can be checked against the store and the provider's own records.

    A call is *settled* when its attempt ended in an outcome no retry follows. Deliveries are
    at least once, so every tally is keyed (a redelivered event counts once).
    """

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts
        self.attempts: dict[tuple[str, int], str] = {}
        self.provider: dict[str, str] = {}
        self.final: dict[str, tuple[int, str]] = {}
        self.durations: dict[str, float] = {}
        self.retries: set[tuple[str, int]] = set()
        self.gave_up: set[str] = set()
        # Attempts whose outcome came from the provider's records, not a webhook.
        self.looked_up: set[tuple[str, int]] = set()
        self.to_slack: set[tuple[str, int, str]] = set()
        self.dead = 0

    async def handle(self, event: Event, ctx: Context) -> None:
        """Tally one event."""
        call = event.call
        if event.type == "delivery.exhausted":
            self.dead += 1
            return
        if event.type in NEEDS_A_HUMAN:
            self.to_slack.add((call.id, call.attempt, event.type))
        if event.type == "call.retry_scheduled":
            self.retries.add((call.id, call.attempt))
        elif event.type == "call.retries_exhausted":
            self.gave_up.add(call.id)
        elif event.status is not None and CallStatus(event.status).terminal:
            self.attempts[(call.id, call.attempt)] = event.status
            if event.data.get("source") == "lookup":
                self.looked_up.add((call.id, call.attempt))
            if call.provider_call_id:
                self.provider[call.provider_call_id] = event.status
            retried = event.type in RETRIED and call.attempt < self.max_attempts
            if not retried:
                self.final[call.id] = (call.attempt, event.status)
            if event.status == CallStatus.COMPLETED and event.duration is not None:
                self.durations[call.id] = float(event.duration)


# -- the run -----------------------------------------------------------------------------------


def demo_config(
    *, magpipe: str, token: str, secret: str | None, store: str, slack: str
) -> config.Config:
    """The daemon's config: ephemeral ports, the temporary store, and the demo's rules."""
    return config.Config.model_validate(
        {
            "magpipe": {
                "base_url": magpipe,
                "token": token,
                "webhook_secret": secret,
                "reconcile": {"after": LOOKUP_AFTER, "every": 2.0, "max_per_minute": 600},
                # The simulator enforces no request budget; the real provider documents 100 a
                # minute (the default), which would stretch this demo to many minutes.
                "rate_limit": {"per_minute": 100_000, "per_hour": 10_000_000},
            },
            "defaults": {"from": CALLER_IDS[0], "agent_id": AGENT},
            "webhooks": {"listen": "127.0.0.1:0"},
            "api": {"listen": "127.0.0.1:0"},
            "store": store,
            "dialer": {"max_live_calls": 24, "calls_per_second": 30, "max_call_duration": WATCHDOG},
            "plugins": {
                "redial": {
                    "use": "retry",
                    "delay": RETRY_DELAY,
                    "backoff": 1.5,
                    "min_gap": 0.5,
                    "max_attempts": MAX_ATTEMPTS,
                },
                "ops-slack": {"use": "slack", "webhook_url": slack},
                "events-log": {"use": "log", "level": "warning"},
            },
            "rules": [
                {"name": "retry busy or unanswered", "on": list(RETRIED), "do": "redial"},
                {
                    "name": "tell ops about calls that need a human",
                    "on": list(NEEDS_A_HUMAN),
                    "do": "ops-slack",
                    "with": {
                        "text": "{{ call.metadata.name }} ({{ call.metadata.tier }}, "
                        "{{ call.to }}): {{ type }} on attempt {{ call.attempt }}"
                    },
                },
                {"name": "log calls given up on", "on": list(GIVEN_UP), "do": "events-log"},
            ],
        }
    )


@dataclass(frozen=True, kw_only=True)
class _State:
    by_status: Mapping[str, int]
    attempts: int
    live: int
    pending: bool

    def finished(self, calls: int) -> bool:
        """Every call ended and no delivery (a retry to schedule...) is left to run."""
        ended = all(CallStatus(s).terminal for s in self.by_status)
        return ended and sum(self.by_status.values()) == calls and not self.pending


async def _state(store: Store, campaign_id: str) -> _State:
    # One transaction (SQLite: one at a time), so "all ended" and "nothing pending" are seen
    # together: a busy call whose retry is not scheduled yet still has its delivery pending.
    async with store.connector.transaction() as tx:
        rows = await tx.fetch("campaign_progress", campaign=campaign_id)
        live = await tx.fetchone("count_live")
        pending = await tx.fetch("list_deliveries", state="pending", handler=None, limit=1)
    return _State(
        by_status={str(r["status"]): int(r["calls"]) for r in rows},
        attempts=sum(int(r["attempts"] or 0) for r in rows),
        live=int(live["n"]) if live else 0,
        pending=bool(pending),
    )


@dataclass(kw_only=True)
class _Run:
    """The pieces of one run that the watch loop and the summary read."""

    imported: Imported
    sim: Simulator
    slack: SlackStandIn
    tracker: Tracker
    view: View
    started: float
    state: _State | None = None

    def snapshot(self) -> Snapshot:
        """The numbers the progress display shows now."""
        state, tracker = self.state, self.tracker
        return Snapshot(
            elapsed=time.monotonic() - self.started,
            total=self.imported.calls,
            done=len(tracker.final),
            outcomes=Counter(status for _, status in tracker.final.values()),
            live=state.live if state else 0,
            waiting=state.by_status.get(CallStatus.QUEUED, 0) if state else self.imported.calls,
            attempts=len(self.sim.calls),
            retries=len(tracker.retries),
            gave_up=len(tracker.gave_up),
            slack=self.slack.received,
            last_slack=self.slack.latest,
        )


async def run(
    out: TextIO | None = None,
    *,
    calls: int | None = None,
    sample: Path | None = None,
    live: bool | None = None,
) -> int:
    """Run the demo, printing to ``out`` (stdout by default); return the exit status: 0 when
    every valid row's call ended and every consistency check passed, else 1.

    ``calls`` reads only the first rows of the sample, ``sample`` reads another CSV, ``live``
    forces the live display on or off (default: on when ``out`` is a terminal).
    """
    view = make_view(out or sys.stdout, live=live)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="orchestrator-demo-") as tmp:
            return await _run(Path(tmp), view, started, calls=calls, sample=sample)
    except (DemoError, exceptions.OrchestratorError) as exc:
        view.stop()
        print(f"orchestrator demo: {exc}", file=sys.stderr)
        return 130 if isinstance(exc, DemoInterrupted) else 1


async def _run(
    tmp: Path, view: View, started: float, *, calls: int | None, sample: Path | None
) -> int:
    """Import the campaign, then run the stand-ins and the daemon until it has ended."""
    store_url = f"sqlite://{tmp / 'demo.db'}"
    settings = CampaignSettings(
        from_numbers=CALLER_IDS,
        agent_id=AGENT,
        purpose="Appointment reminder",
        max_attempts=MAX_ATTEMPTS,
        price_per_minute=PRICE_PER_MINUTE,
    )
    store = Store(connectors.connect(store_url))
    await store.open()
    try:
        with _open_sample(sample) as lines:
            name = sample.stem if sample else Path(SAMPLE).stem
            imported = await import_campaign(store, name, read_rows(lines, limit=calls), settings)
    finally:
        await store.close()
    sim = Simulator(
        SimulatorConfig(
            numbers=CALLER_IDS,
            agents=(AGENT,),
            balance=10_000.0,
            price_per_minute=PRICE_PER_MINUTE,
            max_concurrent=64,
            time_scale=TIME_SCALE,
            seed=SEED,
            scripts=SCRIPTS,
            faults=Faults(duplicate_webhooks=0.05, out_of_order=0.05, early_webhook=0.05),
        )
    )
    slack = SlackStandIn()
    tracker = Tracker(MAX_ATTEMPTS)
    current = _Run(
        imported=imported, sim=sim, slack=slack, tracker=tracker, view=view, started=started
    )
    magpipe_url = await sim.start()
    try:
        slack_url = await slack.start()
        cfg = demo_config(
            magpipe=magpipe_url,
            token=sim.config.token,
            secret=sim.config.webhook_secret,
            store=store_url,
            slack=slack_url,
        )
        watcher = bus.Subscription(
            name="demo-tracker",
            handler=tracker,
            patterns=(*TERMINAL_TYPES, "call.retry_scheduled", "call.retries_exhausted",
                      "delivery.exhausted"),
            policy=bus.DeliveryPolicy(concurrency=32),
        )  # fmt: skip
        daemon = Daemon(cfg, subscriptions=[*subscriptions_from(cfg), watcher])
        _introduce(view, imported, magpipe_url, slack_url)
        summary = await _drive(daemon, current)
    finally:
        view.stop()
        await slack.stop()
        await sim.stop()
    view.summary(summary)
    if summary.problems:
        print(
            f"orchestrator demo: {len(summary.problems)} consistency check(s) failed (above)",
            file=sys.stderr,
        )
        return 1
    return 0


def _introduce(view: View, imported: Imported, magpipe: str, slack: str) -> None:
    """What is about to run, before the progress display starts."""
    refused = f"{imported.invalid} invalid rows refused"
    if imported.examples:
        more = ", ..." if imported.invalid > len(imported.examples) else ""
        refused += f" (lines {', '.join(str(e.line) for e in imported.examples)}{more})"
    lines = [
        f"campaign {imported.name!r}: {imported.rows} rows read, {imported.calls} calls queued, "
        + refused,
        f"simulator {magpipe} (simulated time x{1 / TIME_SCALE:g}), Slack stand-in {slack}",
        f"rules: busy and no-answer retried (up to {MAX_ATTEMPTS} attempts); failed, timed-out "
        "and given-up calls to Slack; timed-out and given-up calls to the log",
    ]
    for line in lines:
        view.note(line)


async def _drive(daemon: Daemon, run: _Run) -> Summary:
    """Run the daemon until the campaign has ended, showing progress; the summary is taken
    while the store is still open."""
    runner = asyncio.create_task(daemon.run(), name="daemon")
    run.view.start()
    status = 1
    try:
        while "api" not in daemon.urls:
            if runner.done():
                raise DemoError(f"the daemon stopped during start-up (status {runner.result()})")
            await asyncio.sleep(0.01)
        await _watch(daemon, runner, run)
        summary = await _summarise(daemon.store, run)
    finally:
        daemon.stopping.set()
        try:
            status = await runner
        finally:
            run.view.stop()
    if status != 0:
        summary.problems.append(f"the daemon exited with status {status}")
    return summary


async def _watch(daemon: Daemon, runner: asyncio.Task[int], run: _Run) -> None:
    """Poll the store and redraw the progress until the campaign has ended; DemoError if
    the daemon stops first or the deadline passes."""
    deadline = run.started + DEADLINE
    while True:
        _alive(daemon, runner)
        try:
            run.state = await _state(daemon.store, run.imported.campaign_id)
        except exceptions.StoreError:
            _alive(daemon, runner)  # a signal closed the store under the query
            raise
        run.view.update(run.snapshot())
        if run.state.finished(run.imported.calls):
            return
        if time.monotonic() > deadline:
            waiting = {k: v for k, v in run.state.by_status.items() if not CallStatus(k).terminal}
            raise DemoError(
                f"the campaign did not end within {DEADLINE:g}s: still {waiting or 'nothing'} "
                f"(deliveries pending: {run.state.pending})"
            )
        await asyncio.sleep(POLL)


def _alive(daemon: Daemon, runner: asyncio.Task[int]) -> None:
    """Raise unless the daemon is still running (and not stopping)."""
    if daemon.stopping.is_set():
        # SIGINT or SIGTERM: the daemon stops gracefully, the campaign is left unfinished.
        raise DemoInterrupted("interrupted: the campaign did not end")
    if runner.done():
        raise DemoError(f"the daemon stopped on its own (status {runner.result()})")


async def _summarise(store: Store, run: _Run) -> Summary:
    """The closing numbers, and the consistency checks between the store, the events the
    handlers saw, the Slack stand-in and the provider's own records."""
    imported, tracker, sim = run.imported, run.tracker, run.sim
    state = run.state
    assert state is not None
    campaign = await store.campaign(imported.campaign_id)
    assert campaign is not None
    dead = await store.list_deliveries(state="dead", limit=5)
    cost = sum(tracker.durations.values()) / 60 * PRICE_PER_MINUTE
    charged = sim.config.balance - sim.balance
    placed = {c.id: c for c in sim.calls}
    per_call = Counter(attempt for attempt, _ in tracker.final.values())
    checks: list[str] = []
    problems: list[str] = []

    def check(ok: bool, passed: str, failed: str) -> None:
        (checks if ok else problems).append(passed if ok else failed)

    ended = sum(state.by_status.values())
    check(
        ended == imported.calls and len(tracker.final) == imported.calls,
        f"{ended}/{imported.calls} calls ended",
        f"{imported.calls} calls queued, {ended} ended in the store, "
        f"{len(tracker.final)} seen ending by the handlers",
    )
    check(
        campaign["rows_total"] == imported.rows and campaign["rows_invalid"] == imported.invalid,
        f"{imported.rows} rows counted",
        f"the campaign counts {campaign['rows_total']} rows ({campaign['rows_invalid']} "
        f"invalid), the import read {imported.rows} ({imported.invalid} invalid)",
    )
    check(
        state.attempts == len(sim.calls) == len(tracker.attempts)
        and state.attempts == imported.calls + len(tracker.retries),
        f"{state.attempts} attempts = {len(sim.calls)} provider dials",
        f"{state.attempts} attempts in the store, {len(sim.calls)} dials at the provider, "
        f"{len(tracker.attempts)} attempt outcomes seen, {len(tracker.retries)} retries",
    )
    outcomes = Counter(status for _, status in tracker.final.values())
    check(
        outcomes == Counter(state.by_status),
        "outcomes agree",
        f"outcomes in the store {dict(state.by_status)} != seen by handlers {dict(outcomes)}",
    )
    mismatched = [
        pid
        for pid, status in tracker.provider.items()
        if status != CallStatus.TIMED_OUT
        and (pid not in placed or CallStatus.from_provider(placed[pid].status) != status)
    ]
    check(
        not mismatched,
        "each matches the provider's record",
        f"{len(mismatched)} outcomes differ from the provider's records, e.g. {mismatched[:3]}",
    )
    spent = float(campaign["spent"])
    check(
        abs(cost - spent) < 1e-6 and abs(cost - charged) < 1e-6,
        "cost = campaign spend = provider charges",
        f"estimated cost {cost:.6f}, campaign spend {spent:.6f}, provider charged {charged:.6f}",
    )
    check(
        run.slack.received == len(tracker.to_slack),
        f"{run.slack.received} Slack messages for {len(tracker.to_slack)} events",
        f"the Slack stand-in got {run.slack.received} messages for "
        f"{len(tracker.to_slack)} events routed to it",
    )
    check(
        not dead and tracker.dead == 0 and sim.stats()["rejected"] == 0,
        "no dead deliveries",
        f"{len(dead)} dead deliveries, {sim.stats()['rejected']} placements refused",
    )
    return Summary(
        campaign=imported.name,
        rows=imported.rows,
        calls=imported.calls,
        invalid=imported.invalid,
        invalid_examples=[(e.line, e.reason) for e in imported.examples],
        outcomes=dict(state.by_status),
        attempts=state.attempts,
        attempts_per_call=dict(per_call),
        max_attempts=MAX_ATTEMPTS,
        retries=len(tracker.retries),
        gave_up=len(tracker.gave_up),
        looked_up=len(tracker.looked_up),
        durations=list(tracker.durations.values()),
        cost=cost,
        price_per_minute=PRICE_PER_MINUTE,
        caller_ids=dict(Counter(c.from_ for c in sim.calls)),
        slack=run.slack.received,
        elapsed=time.monotonic() - run.started,
        time_scale=TIME_SCALE,
        checks=checks,
        problems=problems,
    )
