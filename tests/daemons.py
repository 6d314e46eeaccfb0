"""Helpers for tests that run the real thing: the simulator and the daemon as subprocesses, a
recorder HTTP server in the test process, and the calls between them over loopback sockets.

Every process started here is registered so a fixture's teardown can kill what is left. The
fixtures themselves live in the test modules, made by the factories at the end of this file
(``_reap = reap_fixture()``, ``recorder = recorder_fixture(fail_first=5)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web

from orchestrator.phone import validate_number

ROOT = Path(__file__).resolve().parent.parent
SIM_TOKEN = "sim-token"
API_TOKEN = "test-api-token"
FROM_NUMBER = "+16045551234"
TERMINAL = frozenset(
    {"completed", "busy", "no_answer", "failed", "canceled", "rejected", "timed_out"}
)
# Lifecycle order of the statuses an event can announce (terminal ones share the last rank).
RANK = {
    "queued": 0,
    "dialing": 1,
    "initiated": 2,
    "ringing": 3,
    "in_progress": 4,
    **dict.fromkeys(TERMINAL, 5),
}


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def provider_status(outcome: str) -> str:
    """Our status for a simulator outcome (``no-answer`` is ``no_answer``)."""
    return outcome.replace("-", "_")


def sign(secret: str, body: bytes) -> str:
    """The ``x-magpipe-signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def destinations(count: int, start: int = 0) -> list[str]:
    """``count`` distinct valid destination numbers ``+1415555NNNN``."""
    numbers = [f"+1415555{i:04d}" for i in range(start, start + count)]
    for number in numbers:
        validate_number(number)
    return numbers


# -- processes ---------------------------------------------------------------------------------


class Process:
    """A subprocess whose stdout and stderr go to a log file."""

    registry: list[Process] = []  # every process ever started, for teardown

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the process, appending to its log."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} {self.argv}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
            )
        Process.registry.append(self)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return f"--- {self.name} log tail ({self.log_path}) ---\n" + "\n".join(
            text.splitlines()[-lines:]
        )

    def kill(self) -> int | None:
        """SIGKILL and reap; the exit status (None if it was not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the exit status (SIGKILL if it does not stop in time)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not stop within {timeout}s of SIGTERM\n{self.log_tail()}"
            ) from None

    @classmethod
    def kill_all(cls) -> None:
        """Kill every process these helpers started that is still running."""
        for proc in cls.registry:
            with contextlib.suppress(Exception):
                proc.kill()
        cls.registry.clear()


def _wait_http(url: str, proc: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if not proc.alive:
            raise AssertionError(f"{proc.name} exited early ({last!r})\n{proc.log_tail()}")
        try:
            response = httpx.get(url, timeout=1.0)
            if response.status_code == 200:
                return
            last = response.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(
        f"{proc.name} not ready at {url} after {timeout}s ({last!r})\n" + (proc.log_tail())
    )


async def _await_http(url: str, proc: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    async with httpx.AsyncClient(timeout=1.0) as http:
        while time.monotonic() < deadline:
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited early ({last!r})\n{proc.log_tail()}")
            try:
                response = await http.get(url)
                if response.status_code == 200:
                    return
                last = response.status_code
            except httpx.TransportError as exc:
                last = exc
            await asyncio.sleep(0.05)
    raise AssertionError(
        f"{proc.name} not ready at {url} after {timeout}s ({last!r})\n" + (proc.log_tail())
    )


class SimulatorProcess(Process):
    """``orchestrator simulator`` on a free port."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        seed: int = 1,
        time_scale: float = 0.002,
        dialect: str = "documented",
        max_concurrent: int = 50,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        faults: Mapping[str, float] | None = None,
        scripts: Mapping[str, Sequence[str]] | None = None,
        name: str = "simulator",
        conference_limit: float | None = None,
        script_faults: Mapping[str, str] | None = None,
        rate_limit: int | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            sys.executable,
            "-m",
            "orchestrator",
            "--log-level",
            "warning",
            "simulator",
            "--port",
            str(self.port),
            "--token",
            SIM_TOKEN,
            "--seed",
            str(seed),
            "--time-scale",
            str(time_scale),
            "--dialect",
            dialect,
            "--max-concurrent",
            str(max_concurrent),
        ]
        if webhook_url is not None:
            argv += ["--webhook-url", webhook_url]
        if webhook_secret is not None:
            argv += ["--webhook-secret", webhook_secret]
        for fault, probability in (faults or {}).items():
            argv += ["--fault", f"{fault}={probability}"]
        for number, outcomes in (scripts or {}).items():
            argv += ["--script", f"{number}={','.join(outcomes)}"]
        if conference_limit is not None:
            argv += ["--conference-limit", str(conference_limit)]
        if rate_limit is not None:
            argv += ["--rate-limit", str(rate_limit)]
        for number, fault in (script_faults or {}).items():
            argv += ["--script-fault", f"{number}={fault}"]
        super().__init__(name, argv, tmp_path / f"{name}.log")

    def wait_ready(self, timeout: float = 20.0) -> None:
        _wait_http(self.url + "/_simulator/stats", self, timeout)

    def calls(self) -> list[dict[str, Any]]:
        """``GET /_simulator/calls``."""
        response = httpx.get(self.url + "/_simulator/calls", timeout=10.0)
        response.raise_for_status()
        return list(response.json())

    def requests(self) -> list[dict[str, Any]]:
        """``GET /_simulator/requests``: every provider API request, ``{endpoint, at}``."""
        response = httpx.get(self.url + "/_simulator/requests", timeout=10.0)
        response.raise_for_status()
        return list(response.json())

    def stats(self) -> dict[str, Any]:
        """``GET /_simulator/stats``."""
        response = httpx.get(self.url + "/_simulator/stats", timeout=10.0)
        response.raise_for_status()
        return dict(response.json())


def start_simulator(tmp_path: Path, **options: Any) -> SimulatorProcess:
    """Start a simulator subprocess and wait until ``/_simulator/stats`` answers."""
    sim = SimulatorProcess(tmp_path, **options)
    sim.start()
    sim.wait_ready()
    return sim


#: A request budget no test reaches (the documented one would slow every test to 100 a minute).
UNLIMITED = {"per_minute": 1_000_000, "per_hour": 1_000_000_000}


@dataclass
class DaemonConfig:
    """What a test varies in the daemon's YAML config."""

    simulator_url: str
    store_path: Path
    recorder_url: str | None = None
    webhook_secret: str = ""
    max_live_calls: int = 10
    calls_per_second: float = 50.0
    max_call_duration: str = "4s"
    magpipe_timeout: str = "5s"
    delivery: dict[str, Any] = field(
        default_factory=lambda: {
            "timeout": "2s",
            "max_attempts": 20,
            "schedule": ["0.2s", "0.5s", "1s"],
            "breaker_cooldown": "0.3s",
            "breaker_max_cooldown": "1s",
        }
    )
    webhook_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    store_url: str | None = None  # instead of the SQLite file at store_path
    plugins: dict[str, Any] = field(default_factory=dict)  # more plugin instances
    rules: list[dict[str, Any]] = field(default_factory=list)  # more rules
    public_url: str | None = None  # where the provider is told to send webhooks
    # magpipe.reconcile; None: look-ups on, at test speed (1 s, 1 s, grace 2 s, 6000/min).
    reconcile: dict[str, Any] | None = None
    dialer: dict[str, Any] = field(default_factory=dict)  # more dialer settings
    # magpipe.rate_limit; None: far above anything a test sends (the simulator enforces none
    # unless started with rate_limit).
    rate_limit: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        plugins: dict[str, Any] = dict(self.plugins)
        rules: list[dict[str, Any]] = list(self.rules)
        if self.recorder_url is not None:
            plugins["recorder"] = {
                "use": "http",
                "url": self.recorder_url,
                "delivery": self.delivery,
            }
            rules.append({"name": "record all", "on": "call.*", "do": "recorder"})
        return {
            "magpipe": {
                "base_url": self.simulator_url,
                "token": SIM_TOKEN,
                "timeout": self.magpipe_timeout,
                "webhook_secret": self.webhook_secret,
                "reconcile": self.reconcile
                or {"after": "1s", "every": "1s", "ambiguous_grace": "2s", "max_per_minute": 6000},
                "rate_limit": self.rate_limit or UNLIMITED,
            },
            "defaults": {"from": FROM_NUMBER},
            "webhooks": {
                "listen": f"127.0.0.1:{self.webhook_port}",
                "public_url": self.public_url or f"http://127.0.0.1:{self.webhook_port}",
            },
            "api": {"listen": f"127.0.0.1:{self.api_port}", "token": API_TOKEN},
            "store": self.store_url or f"sqlite://{self.store_path.resolve()}",
            "dialer": {
                "max_live_calls": self.max_live_calls,
                "calls_per_second": self.calls_per_second,
                "max_call_duration": self.max_call_duration,
                **self.dialer,
            },
            "plugins": plugins,
            "rules": rules,
        }


def write_config(tmp_path: Path, cfg: DaemonConfig, name: str = "orchestrator.yaml") -> Path:
    """Write ``cfg`` as YAML in ``tmp_path``; return the file."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg.as_dict(), sort_keys=False))
    return path


class DaemonProcess(Process):
    """``orchestrator run --config FILE``; restartable on the same config (and store)."""

    def __init__(
        self, tmp_path: Path, cfg: DaemonConfig, *, shutdown_grace: float | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = write_config(tmp_path, cfg)
        self.api_url = f"http://127.0.0.1:{cfg.api_port}"
        self.webhook_url = f"http://127.0.0.1:{cfg.webhook_port}"
        argv = [sys.executable, "-m", "orchestrator", "run", "--config", str(self.config_path)]
        if shutdown_grace is not None:
            argv += ["--shutdown-grace", str(shutdown_grace)]
        super().__init__("daemon", argv, tmp_path / "daemon.log")

    def wait_ready(self, timeout: float = 20.0) -> None:
        _wait_http(self.api_url + "/healthz", self, timeout)

    async def await_ready(self, timeout: float = 20.0) -> None:
        await _await_http(self.api_url + "/healthz", self, timeout)

    def api(self) -> httpx.Client:
        """A sync client for the control API, authenticated."""
        return httpx.Client(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=10.0,
        )

    def async_api(self) -> httpx.AsyncClient:
        """An async client for the control API, authenticated."""
        return httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=10.0,
        )


def start_daemon(tmp_path: Path, cfg: DaemonConfig, **options: Any) -> DaemonProcess:
    """Start a daemon subprocess and wait until ``/healthz`` answers."""
    daemon = DaemonProcess(tmp_path, cfg, **options)
    daemon.start()
    daemon.wait_ready()
    return daemon


async def start_daemon_async(tmp_path: Path, cfg: DaemonConfig, **options: Any) -> DaemonProcess:
    """:func:`start_daemon` for async tests: the wait does not block the event loop (a recorder
    in the test process keeps answering)."""
    daemon = DaemonProcess(tmp_path, cfg, **options)
    daemon.start()
    await daemon.await_ready()
    return daemon


async def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, daemon: DaemonProcess
) -> None:
    """Poll ``predicate`` every 10 ms; fail with the daemon's log after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{daemon.log_tail()}")
        await asyncio.sleep(0.01)


# -- the recorder ------------------------------------------------------------------------------


@dataclass
class Received:
    """One request the recorder got."""

    body: dict[str, Any]
    idempotency_key: str | None
    answered: int
    at: float


class Recorder:
    """An aiohttp server in the test process standing in for an event handler's endpoint.

    It records every request in arrival order and answers 200, except the first ``fail_first``
    requests (500) so the daemon's retries are exercised. ``delay`` holds each answer back,
    which keeps deliveries in flight for crash tests.
    """

    def __init__(self, *, fail_first: int = 0, delay: float = 0.0) -> None:
        self.fail_first = fail_first
        self.delay = delay
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/events"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        failing = len(self.received) < self.fail_first
        answered = 500 if failing else 200
        self.received.append(
            Received(
                body=body,
                idempotency_key=request.headers.get("idempotency-key"),
                answered=answered,
                at=time.monotonic(),
            )
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        if failing:
            return web.json_response({"error": "induced failure"}, status=500)
        return web.json_response({"ok": True})

    @property
    def accepted(self) -> list[dict[str, Any]]:
        """Bodies answered 200, in arrival order."""
        return [r.body for r in self.received if r.answered == 200]

    def accepted_ids(self) -> set[str]:
        return {b["id"] for b in self.accepted}


# -- the control API ---------------------------------------------------------------------------


async def queue_calls(
    api: httpx.AsyncClient, numbers: Iterable[str], **extra: Any
) -> dict[str, str]:
    """POST one call per number; return {call id: destination}."""
    queued: dict[str, str] = {}
    for number in numbers:
        response = await api.post("/v1/calls", json={"to": number, **extra})
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "queued", body
        queued[body["id"]] = number
    return queued


async def list_all_calls(api: httpx.AsyncClient, page: int = 50) -> list[dict[str, Any]]:
    """Every call, following the ``next`` cursor."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": page}
        if after is not None:
            params["after"] = after
        response = await api.get("/v1/calls", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        out.extend(body["calls"])
        after = body["next"]
        if after is None:
            return out


async def get_calls(api: httpx.AsyncClient, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``GET /v1/calls/{id}`` for each id (with attempts and events)."""
    out: dict[str, dict[str, Any]] = {}
    for call_id in ids:
        response = await api.get(f"/v1/calls/{call_id}")
        assert response.status_code == 200, response.text
        out[call_id] = response.json()
    return out


async def wait_all_terminal(
    api: httpx.AsyncClient,
    ids: Iterable[str],
    daemon: DaemonProcess,
    *,
    timeout: float,
    recorder: Recorder | None = None,
) -> dict[str, dict[str, Any]]:
    """Poll until every call is terminal (and, with a recorder, every one of their events
    reached it); return the calls in detail. Fails with the stragglers and the daemon log."""
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    pending: dict[str, str] = {}
    undelivered: set[str] = set()
    while True:
        if not daemon.alive:
            raise AssertionError(f"the daemon died\n{daemon.log_tail()}")
        calls = {c["id"]: c for c in await list_all_calls(api, page=200) if c["id"] in wanted}
        pending = {i: calls[i]["status"] if i in calls else "MISSING" for i in wanted}
        pending = {i: s for i, s in pending.items() if s not in TERMINAL}
        if not pending:
            detail = await get_calls(api, wanted)
            if recorder is None:
                return detail
            all_events = {e["id"] for c in detail.values() for e in c["events"]}
            undelivered = all_events - recorder.accepted_ids()
            if not undelivered:
                return detail
        if time.monotonic() > deadline:
            sample = dict(list(pending.items())[:10])
            raise AssertionError(
                f"after {timeout}s: {len(pending)} call(s) not terminal, e.g. {sample}; "
                f"{len(undelivered)} event(s) not delivered to the recorder\n" + daemon.log_tail()
            )
        await asyncio.sleep(0.2)


# -- checks ------------------------------------------------------------------------------------


def check_events(call: dict[str, Any]) -> list[str]:
    """Problems with one call's events and attempts as the API shows them (empty if none)."""
    problems: list[str] = []
    everything = call["events"]
    types = [e["type"] for e in everything]
    where = f"call {call['id']} ({call['to']}) events {types}"
    # Lifecycle events announce a status; others (call.requeued) say something else.
    events = [e for e in everything if e["status"] is not None]
    types = [e["type"] for e in events]
    if not events or types[0] != "call.queued":
        problems.append(f"{where}: does not start with call.queued")
    if types[-1:] != [f"call.{call['status']}"]:
        problems.append(f"{where}: does not end with call.{call['status']}")
    terminal = [e for e in events if e["status"] in TERMINAL]
    if len(terminal) != 1:
        problems.append(f"{where}: {len(terminal)} terminal events")
    ranks = [RANK[e["status"]] for e in events]
    if ranks != sorted(set(ranks)):
        problems.append(f"{where}: not strictly forward")
    for event in events:
        if event["type"] != f"call.{event['status']}" or event["call"]["id"] != call["id"]:
            problems.append(f"{where}: event {event['id']} is inconsistent: {event}")
    if len({e["id"] for e in everything}) != len(everything):
        problems.append(f"{where}: repeated event ids")
    for event in events:
        source = (event.get("data") or {}).get("source")
        if source not in (None, "lookup"):
            problems.append(f"{where}: event {event['id']} has an unknown source {source!r}")
    attempts = call.get("attempts") or []
    if not attempts or attempts[-1]["status"] != call["status"]:
        problems.append(f"call {call['id']}: attempts {attempts} do not end in {call['status']}")
    if any(a["ambiguous"] for a in attempts if a["status"] in TERMINAL):
        problems.append(f"call {call['id']}: a terminal attempt is still marked ambiguous")
    return problems


def dialed_once(sim_calls: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The simulator's calls by destination; fails if any destination was dialed twice (records
    of certain failures, where no phone rang, do not count)."""
    calls = [c for c in sim_calls if c.get("rang", True)]
    dialed = Counter(c["to"] for c in calls)
    twice = {to: n for to, n in dialed.items() if n > 1}
    assert not twice, f"destinations dialed more than once: {twice}"
    return {c["to"]: dict(c) for c in calls}


def check_deliveries(recorder: Recorder, calls: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Problems with what the recorder got (empty if none): every request carries the event id
    as its idempotency key and is an event some call lists, with that event's type, status and
    call; a redelivery is the same body as the first delivery; every listed event was accepted;
    and each call's events arrived in the order of its event log."""
    problems: list[str] = []
    listed = {e["id"]: e for c in calls.values() for e in c["events"]}
    first: dict[str, dict[str, Any]] = {}
    for received in recorder.received:
        body = received.body
        if received.idempotency_key != body["id"]:
            problems.append(f"idempotency-key {received.idempotency_key!r} is not the event id")
        event = listed.get(body["id"])
        if event is None:
            problems.append(f"the recorder got an event no call lists: {body}")
            continue
        if (body["type"], body["status"], body["call"]["id"]) != (
            event["type"],
            event["status"],
            event["call"]["id"],
        ):
            problems.append(f"delivered event {body['id']} differs from the listed one: {body}")
        if first.setdefault(body["id"], body) != body:
            problems.append(f"a redelivery of {body['id']} differs from the first delivery")
    missing = set(listed) - recorder.accepted_ids()
    if missing:
        problems.append(f"{len(missing)} event(s) never delivered, e.g. {sorted(missing)[:3]}")
    return problems + check_recorder_order(recorder, calls)


def check_recorder_order(recorder: Recorder, calls: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Problems with the order in which the recorder first accepted each call's events: it must
    follow the order of the call's event log (seq order, as the API lists it)."""
    problems: list[str] = []
    position = {e["id"]: i for c in calls.values() for i, e in enumerate(c["events"])}
    seen: dict[str, list[int]] = {}
    first: set[str] = set()
    for body in recorder.accepted:
        if body["id"] in first:
            continue
        first.add(body["id"])
        if body["id"] not in position:
            problems.append(f"recorder got event {body['id']} that no call lists: {body}")
            continue
        seen.setdefault(body["call"]["id"], []).append(position[body["id"]])
    for call_id, order in seen.items():
        if order != sorted(order):
            types = [calls[call_id]["events"][i]["type"] for i in order]
            problems.append(f"call {call_id}: recorder saw events out of order: {types}")
    return problems


def json_dumps(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True)[:3000]


# -- fixture factories -------------------------------------------------------------------------


def reap_fixture() -> Any:
    """An autouse fixture for a test module: after each test, kill every process still running
    that these helpers started. Use as ``_reap = reap_fixture()``."""

    @pytest.fixture(autouse=True)
    def _reap_processes() -> Iterator[None]:
        yield
        Process.kill_all()

    return _reap_processes


def recorder_fixture(**options: Any) -> Any:
    """A ``recorder`` fixture: a started ``Recorder(**options)``, stopped after the test. Use as
    ``recorder = recorder_fixture(fail_first=5)``."""

    @pytest.fixture
    async def recorder() -> AsyncIterator[Recorder]:
        rec = Recorder(**options)
        await rec.start()
        yield rec
        await rec.stop()

    return recorder
