"""Rough edges of the command line, each against the real thing: ``python -m orchestrator``
subprocesses writing to real pipes (and a real terminal), the daemon's own control API
(``ControlApi``) served on a loopback port over a SQLite store, and the modules a command
imports as Python reports them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from orchestrator import cli, config, remote, rules
from orchestrator.api import ControlApi
from orchestrator.connectors.sqlite import SQLiteConnector
from orchestrator.model import Event, NewCall
from orchestrator.store import Store
from tests.daemons import free_port
from tests.test_cli import EXAMPLE, run

ORCHESTRATOR = [sys.executable, "-m", "orchestrator"]
TOKEN = "cli-edges-api-token"
ROUTE = "tell the audit service"
URL = "https://audit.example.invalid/hooks/calls?tenant=acme-eu-west&source=orchestrator"
#: A dead letter's error whose end matters: the URL it names comes after 60 characters.
LONG_ERROR = (
    f"ConnectError reaching the audit service: POST {URL} refused the connection; "
    "last answer before that was HTTP 503 from the load balancer"
)
#: Packages a thin ``--help`` has no use for.
HEAVY = {"pydantic", "httpx", "aiohttp", "structlog", "rich", "yaml", "jinja2", "phonenumbers"}


# -- 1. a pipe closed early ends the command quietly ----------------------------------------


def _stderr_after_reader_goes(args: list[str], *, lines: int) -> tuple[int, str, list[str]]:
    """Run the CLI with stdout a pipe; read ``lines`` lines (0: none), close the pipe, and
    return (exit status, stderr, the lines read), as ``| head -N`` does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGPIPE_")}
    proc = subprocess.Popen(
        [*ORCHESTRATOR, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None and proc.stderr is not None
    read = [proc.stdout.readline().decode() for _ in range(lines)]
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    return proc.wait(timeout=60), stderr, read


@pytest.mark.parametrize(
    "args",
    [
        ["plugins", "list"],
        ["plugins", "list", "--json"],
        ["config", "schema"],
        ["config", "check", str(EXAMPLE)],
        ["--help"],
    ],
    ids=" ".join,
)
def test_a_reader_gone_before_the_output_is_no_error(args: list[str]) -> None:
    """The pipe is closed before the command writes (it is still importing): its first write
    fails, deterministically."""
    status, stderr, _ = _stderr_after_reader_goes(args, lines=0)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert status in (0, cli.EXIT_PIPE_CLOSED), stderr


@pytest.mark.parametrize("args", [["config", "schema"], ["plugins", "list"]], ids=" ".join)
def test_head_one_is_no_error(args: list[str]) -> None:
    status, stderr, [first] = _stderr_after_reader_goes(args, lines=1)
    assert first.strip()
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert status in (0, cli.EXIT_PIPE_CLOSED), stderr


# -- the daemon's control API, over a SQLite store with one dead letter ------------------------


class ControlApiServer:
    """The daemon's real control API on a loopback port, served from a thread of its own (so a
    test can run the CLI as a blocking subprocess), over a SQLite store holding one dead letter
    whose last error is :data:`LONG_ERROR`."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "state.db"
        self.port = free_port()
        self.config_path = tmp_path / "orchestrator.yaml"
        self.config_path.write_text(
            f"magpipe: {{token: x}}\napi: {{listen: '127.0.0.1:{self.port}', token: {TOKEN}}}\n"
        )
        self.dead_id = ""
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self) -> ControlApiServer:
        self._thread.start()
        assert self._ready.wait(30), "the control API did not start"
        if self._failed is not None:
            raise self._failed
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._failed = exc
            self._ready.set()

    async def _serve(self) -> None:
        def router(event: Event) -> list[str]:
            return [ROUTE] if event.type == "call.queued" else []

        store = Store(SQLiteConnector(f"sqlite://{self.db}"), router=router)
        await store.open()
        try:
            await store.create_call(NewCall(to="+14155550100", from_="+16045551234"))
            [delivery] = await store.claim_deliveries(ROUTE, "test", limit=1, lease=30)
            assert await store.finish_delivery(delivery, "test", error=LONG_ERROR)
            self.dead_id = delivery.id

            async def ready() -> tuple[bool, dict[str, Any]]:
                return True, {"store": "ok", "provider": "ok"}

            control = ControlApi(
                store,
                token=TOKEN,
                defaults=config.Defaults.model_validate({"from": "+16045551234"}),
                on_queued=lambda: None,
                ready=ready,
            )
            runner = web.AppRunner(control.app())
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()
        finally:
            await store.close()


@pytest.fixture
def daemon_api(tmp_path: Path) -> Iterator[ControlApiServer]:
    with ControlApiServer(tmp_path) as server:
        yield server


# -- 2. deliveries list prints the whole last error ------------------------------------------


def test_deliveries_list_prints_the_whole_last_error(daemon_api: ControlApiServer) -> None:
    done = run("deliveries", "list", "--config", str(daemon_api.config_path))
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split() == ["ID", "ROUTE", "STATE", "TRIES", "CALL", "LAST", "ERROR"]
    # Not a terminal: the row is one line, the error whole at its end (grep finds the URL).
    assert row.startswith(daemon_api.dead_id) and ROUTE in row
    assert row.endswith(LONG_ERROR)
    assert row.index(LONG_ERROR) == header.index("LAST ERROR")


@pytest.mark.parametrize("columns", [200, 80])
def test_deliveries_list_on_a_terminal_wraps_the_last_error(
    daemon_api: ControlApiServer, columns: int
) -> None:
    """On a terminal, the error is wrapped to its width, each word whole (the URL too), none
    cut: under its header when the other columns leave room (200 columns), else under the row
    (80 columns: the ids alone take more than 100)."""
    main, terminal = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGPIPE_")}
    proc = subprocess.Popen(
        [*ORCHESTRATOR, "deliveries", "list", "--config", str(daemon_api.config_path)],
        stdout=terminal,
        stderr=subprocess.PIPE,
        env={**env, "COLUMNS": str(columns)},
    )
    os.close(terminal)
    output = b""
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(main, 65536):
            output += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    header, row, *more = output.decode().replace("\r\n", "\n").splitlines()
    column = header.index("LAST ERROR")
    assert row.startswith(daemon_api.dead_id) and more
    if columns - column >= remote.MIN_WRAP:
        assert all(line[:column].strip() == "" for line in more)
        wrapped = [row[column:], *(line[column:] for line in more)]
    else:
        assert len(row) < column  # the row's other cells, then its error on the lines under it
        assert all(line.startswith(remote.UNDER) and line[4] != " " for line in more)
        wrapped = [line.removeprefix(remote.UNDER) for line in more]
    assert " ".join(wrapped) == LONG_ERROR
    assert URL in wrapped  # a word longer than the room stays whole, on a line of its own
    assert all(len(line) <= columns for line in more if URL not in line)


def test_a_table_wraps_only_its_last_column() -> None:
    rows = [("a", None, "one two three four five six seven eight nine ten eleven twelve")]
    text = remote.table(("X", "WHO", "WHAT"), rows, width=40)
    assert text.splitlines() == [
        "X  WHO  WHAT",
        "a  -    one two three four five six",  # 32 columns of room: 40 less the first two
        "        seven eight nine ten eleven",
        "        twelve",
    ]
    assert remote.table(("X", "WHAT"), [("a", "first\nsecond")]) == "X  WHAT\na  first\n   second"
    assert remote.table(("X", "WHAT"), rows[:0]) == "X  WHAT"


# -- 3. replaying an id that is not a dead letter fails, and says so ----------------------------


def test_replaying_an_unknown_id_fails_and_says_why(daemon_api: ControlApiServer) -> None:
    done = run("deliveries", "replay", "nonexistent-id", "--config", str(daemon_api.config_path))
    assert done.returncode == remote.EXIT_REFUSED
    assert done.stdout == "replayed 0 deliveries\n"
    assert done.stderr.splitlines()[-1] == (
        "orchestrator: nonexistent-id: not replayed: no dead letter has this id "
        "(no delivery has it, or it is pending or done)"
    )


def test_replay_names_each_id_it_could_not_replay(daemon_api: ControlApiServer) -> None:
    cfg = str(daemon_api.config_path)
    done = run("deliveries", "replay", daemon_api.dead_id, "nope", "--config", cfg)
    assert done.returncode == remote.EXIT_REFUSED
    assert done.stdout == "replayed 1 delivery\n"
    complaints = [line for line in done.stderr.splitlines() if "not replayed" in line]
    assert complaints == [f"orchestrator: nope: {remote.NOT_DEAD}"]
    again = run("deliveries", "replay", daemon_api.dead_id, "--config", cfg, "--json")
    assert again.returncode == remote.EXIT_REFUSED  # pending now: not a dead letter any more
    assert json.loads(again.stdout)["skipped"] == [daemon_api.dead_id]
    assert f"orchestrator: {daemon_api.dead_id}: {remote.NOT_DEAD}" in again.stderr
    everything = run("deliveries", "replay", "--all-dead", "--config", cfg)
    assert (everything.returncode, everything.stdout) == (0, "replayed 0 deliveries\n")


# -- 4. plugins list: plain text, durations as written, the delivery options once ------------


def test_plugins_list_is_plain_text_with_the_delivery_options() -> None:
    done = run("plugins", "list")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "`" not in text and ":class:" not in text
    assert "(ctx.log already carries the call id" in text
    assert "  delay: duration, default 10m: " in text  # not 600.0
    assert "  max_delay: duration, default 1d: " in text
    assert "  timeout: duration, default 10s" in text
    head, _, section = text.partition("\n\ndelivery options, of every plugin instance ")
    assert section.startswith("(plugins.NAME.delivery):\n")
    assert "concurrency" not in head  # listed once, in their own section
    listed = [line.split(":")[0].strip() for line in section.splitlines()[1:]]
    assert listed == list(rules.DeliveryOptions.model_fields)
    assert "  schedule: list of durations, default [5s, 30s, 2m, 10m, 30m, 1h, 2h, 4h, 8h]: " in (
        section
    )
    assert "  breaker_max_cooldown: duration, default 10m: " in section
    assert "  jitter: float, default 0.2: " in section
    assert all(line.count(": ") >= 2 for line in section.splitlines()[1:])  # each described


def test_plain_text_and_duration_text() -> None:
    assert cli.plain_text("POST to ``url``; see :class:`~orchestrator.plugin.Context`.") == (
        "POST to url; see Context."
    )
    assert cli.plain_text(":py:func:`orchestrator.plugin.post` and `x`") == (
        "orchestrator.plugin.post and x"
    )
    assert cli.plain_text(":ref:`the guide <plugins>`, `docs <https://x.invalid>`_") == (
        "the guide, docs"
    )
    assert cli.plain_text("**never** twice") == "never twice"
    assert [cli.duration_text(s) for s in (600.0, 30, 86400, 90, 0.5, 2.5, 0, 5400)] == [
        "10m", "30s", "1d", "90s", "500ms", "2.5s", "0s", "90m",
    ]  # fmt: skip
    for seconds in (600.0, 90, 0.5, 2.5, 0, 5400):
        assert config.parse_duration(cli.duration_text(seconds)) == seconds


# -- 5. a thin command line: parsing imports nothing heavy -----------------------------------

IMPORTS = """
import json, runpy, sys
import orchestrator
before = set(sys.modules)
sys.argv = ["orchestrator", *sys.argv[1:]]
try:
    runpy.run_module("orchestrator", run_name="__main__")
except SystemExit:
    pass
print(json.dumps({"package": sorted(before), "after": sorted(sys.modules)}), file=sys.stderr)
"""


def _modules(*args: str) -> tuple[set[str], set[str]]:
    """The modules imported by ``import orchestrator``, and those after ``orchestrator ARGS``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGPIPE_")}
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    found = json.loads(done.stderr.strip().splitlines()[-1])
    return set(found["package"]), set(found["after"])


def test_help_imports_nothing_heavy_beyond_the_package() -> None:
    package, after = _modules("--help")
    added = after - package
    assert not {m for m in added if m.split(".")[0] in HEAVY}, sorted(added)
    assert {m for m in added if m.startswith("orchestrator")} <= {
        "orchestrator.__main__",
        "orchestrator.cli",
        "orchestrator.exceptions",  # the standard library's only
        "orchestrator.remote",
    }


def test_help_imports_no_heavy_package() -> None:
    package, after = _modules("--help")
    eager = {m.split(".")[0] for m in package} & HEAVY
    if eager:
        pytest.xfail(
            f"orchestrator/__init__.py imports {', '.join(sorted(eager))} with the package "
            "(its names should be imported lazily, PEP 562)"
        )
    assert not {m.split(".")[0] for m in after} & HEAVY


def test_config_check_imports_neither_the_simulator_nor_the_daemon() -> None:
    _, after = _modules("config", "check", str(EXAMPLE))
    for name in (
        "aiohttp",
        "orchestrator.provider.simulator",
        "orchestrator.daemon",
        "orchestrator.testing",
        "orchestrator.api",
    ):
        assert name not in after, name


def test_simulator_options_are_parsed_by_the_simulator() -> None:
    helped = run("simulator", "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: orchestrator simulator ") and "--time-scale" in (
        helped.stdout
    )
    wrong = run("simulator", "--time-scale", "fast")
    assert wrong.returncode == 2 and "argument --time-scale: invalid float value" in wrong.stderr
    unknown = run("plugins", "list", "--bogus")
    assert unknown.returncode == 2 and "unrecognized arguments: --bogus" in unknown.stderr
    listed = run("--help")
    assert listed.returncode == 0 and "simulator" in listed.stdout
