"""The ``orchestrator`` command as a user runs it: real subprocesses against a simulator
subprocess over loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

TOKEN = "cli-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def simulator_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "simulator",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--seed",
            "3",
            "--time-scale",
            "0.001",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/_simulator/stats", timeout=0.5)
            break
        except httpx.TransportError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            time.sleep(0.1)
    else:
        pytest.fail("the simulator did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAGPIPE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def test_call_prints_the_answer_as_json(simulator_url: str) -> None:
    done = run(
        "call",
        "--to",
        "+14155551234",
        "--from",
        "+16045551234",
        "--metadata",
        "customer_id=cust_123",
        "--purpose",
        "reminder",
        env={"MAGPIPE_BASE_URL": simulator_url, "MAGPIPE_TOKEN": TOKEN},
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["success"] is True and answer["to_number"] == "+14155551234"
    calls = httpx.get(simulator_url + "/_simulator/calls").json()
    assert any(
        c["id"] == answer["call_id"] and c["metadata"] == {"customer_id": "cust_123"} for c in calls
    )
    assert TOKEN not in done.stderr


def test_call_reads_the_config_file(simulator_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(
        f"magpipe: {{base_url: '{simulator_url}', token: '${{MY_TOKEN}}'}}\n"
        "defaults: {from: '+16045551234'}\n"
    )
    done = run("call", "--to", "+14155551234", "--config", str(cfg), env={"MY_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["from_number"] == "+16045551234"


def test_an_invalid_number_fails_with_its_code_and_sends_nothing(simulator_url: str) -> None:
    before = httpx.get(simulator_url + "/_simulator/stats").json()["requests"]
    done = run(
        "call",
        "--to",
        "+1415555",
        "--from",
        "+16045551234",
        env={"MAGPIPE_BASE_URL": simulator_url, "MAGPIPE_TOKEN": TOKEN},
    )
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.strip().splitlines()[-1:]
    assert "INVALID_PHONE_NUMBER" in line
    assert httpx.get(simulator_url + "/_simulator/stats").json()["requests"] == before


def test_a_bad_token_fails_with_unauthorized(simulator_url: str) -> None:
    done = run(
        "call",
        "--to",
        "+14155551234",
        "--from",
        "+16045551234",
        env={"MAGPIPE_BASE_URL": simulator_url, "MAGPIPE_TOKEN": "not-the-token"},
    )
    assert done.returncode == 1
    assert "orchestrator: UNAUTHORIZED: " in done.stderr
    assert "not-the-token" not in done.stderr


def test_no_token_is_a_usage_error() -> None:
    done = run("call", "--to", "+14155551234", "--from", "+16045551234")
    assert done.returncode == 2
    assert "MAGPIPE_TOKEN" in done.stderr


def test_help_shows_an_example() -> None:
    done = run("call", "--help")
    assert done.returncode == 0
    assert "example:" in done.stdout and "orchestrator call --to +14155551234" in done.stdout


# -- config check, config schema, plugins list, rules test -------------------------------------

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "orchestrator.yaml"


def test_config_check_passes_on_the_example() -> None:
    done = run("config", "check", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{EXAMPLE}: OK, 2 plugins, 3 rules\n"
    assert "warning: " in done.stderr and "MAGPIPE_TOKEN is not set" in done.stderr


def test_config_check_can_require_the_environment() -> None:
    done = run("config", "check", "--require-env", str(EXAMPLE))
    assert done.returncode == 1
    assert f"{EXAMPLE}:4:3 magpipe.token: environment variable MAGPIPE_TOKEN is not set" in (
        done.stderr
    )
    done = run("config", "check", "--require-env", str(EXAMPLE), env={"MAGPIPE_TOKEN": "t"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_config_check_prints_every_problem_one_per_line(tmp_path: Path) -> None:
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(
        "magpipe: {token: abcd, timeout: soon}\n"
        "plugins:\n"
        "  audit: {use: htpp, url: https://example.com/x}\n"
        "rules:\n"
        "  - {name: r, on: call.complete, do: audit}\n"
        "  - {name: s, on: call.failed, do: log, if: {status: {matches: '('}}}\n"
        "  - {name: t, on: call.failed, do: log, with: {level: '{{ status '}}\n"
    )
    done = run("config", "check", str(cfg))
    assert done.returncode == 1
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.startswith(str(cfg))]
    assert lines == [
        f"{cfg}:1:24 magpipe.timeout: not a duration: 'soon' (use e.g. 500ms, 10s, 30m, 1h)",
        f"{cfg}:3:11 plugins.audit.use: unknown plugin type 'htpp' (did you mean 'http'?); "
        + lines[1].split("; ", 1)[1],
        f"{cfg}:5:15 rules[0].on: unknown event type 'call.complete' "
        "(did you mean 'call.completed'?)",
        f"{cfg}:6:55 rules[1].if.status.matches: invalid regular expression '(': "
        "missing ), unterminated subpattern at position 0",
        f"{cfg}:7:48 rules[2].with.level: template syntax error: unexpected end of template, "
        "expected 'end of print statement'. (line 1)",
    ]


def test_config_check_of_a_missing_file(tmp_path: Path) -> None:
    done = run("config", "check", str(tmp_path / "absent.yaml"))
    assert done.returncode == 1
    assert "absent.yaml: cannot read" in done.stderr


def test_config_schema_is_json_with_the_plugins_options() -> None:
    done = run("config", "schema")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    mapping = schema["properties"]["plugins"]["additionalProperties"]["discriminator"]["mapping"]
    assert {"http", "log"} <= set(mapping)
    assert "url" in schema["$defs"]["plugin.http"]["properties"]
    assert schema["properties"]["rules"]["items"] == {"$ref": "#/$defs/Rule"}


def test_plugins_list() -> None:
    done = run("plugins", "list")
    assert done.returncode == 0, done.stderr
    assert "\nlog: " in "\n" + done.stdout and "\nhttp: " in "\n" + done.stdout
    assert "  url: str, required" in done.stdout
    listed = json.loads(run("plugins", "list", "--json").stdout)
    http = next(p for p in listed if p["type"] == "http")
    url = next(o for o in http["options"] if o["name"] == "url")
    assert url["required"] is True and url["type"] == "str"


def test_rules_test_passes_on_the_example() -> None:
    done = run("rules", "test", str(ROOT / "config" / "rules.test.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "3 passed, 0 failed"
    assert "PASS a completed call is logged, not audited" in done.stdout


def test_rules_test_shows_what_differs(tmp_path: Path) -> None:
    (tmp_path / "orchestrator.yaml").write_text(
        "plugins: {ops: {use: log}}\n"
        "rules:\n"
        "  - name: tell ops\n"
        "    on: call.failed\n"
        "    if: {call.attempt: {gte: 2}}\n"
        "    do: ops\n"
        "    with: {level: \"{{ 'error' if call.metadata.tier == 'gold' else 'warning' }}\"}\n"
    )
    tests = tmp_path / "rules.test.yaml"
    tests.write_text(
        "config: orchestrator.yaml\n"
        "tests:\n"
        "  - name: gold second failure\n"
        "    event: {type: call.failed, call: {attempt: 2, metadata: {tier: gold}}}\n"
        "    expect: [{rule: tell ops, handler: ops, with: {level: error}}]\n"
        "  - name: first failure\n"
        "    event: {type: call.failed}\n"
        "    expect: [{rule: tell ops, with: {level: warning}}]\n"
        "  - name: silver\n"
        "    event: {type: call.failed, call: {attempt: 3}}\n"
        "    expect: [{rule: tell ops, with: {level: error}}]\n"
    )
    done = run("rules", "test", str(tests))
    assert done.returncode == 1
    assert done.stdout == (
        "PASS gold second failure\n"
        "FAIL first failure\n"
        "    expected rules: 'tell ops'\n"
        "    routed to:      (none)\n"
        "      - tell ops (expected, did not match)\n"
        "FAIL silver\n"
        "    tell ops: with.level: expected 'error', got 'warning'\n"
        "1 passed, 2 failed\n"
    )


def test_rules_test_with_a_broken_test_file(tmp_path: Path) -> None:
    tests = tmp_path / "rules.test.yaml"
    tests.write_text("config: orchestrator.yaml\ntests:\n  - {name: x, event: {}, expect: [{}]}\n")
    done = run("rules", "test", str(tests))
    assert done.returncode == 1
    assert f"{tests}:3:35 tests[0].expect[0].rule: required key is missing" in done.stderr


def test_run_refuses_a_config_with_broken_rules(tmp_path: Path) -> None:
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(
        f"magpipe: {{token: abcd}}\nstore: sqlite://{tmp_path}/x.db\n"
        "rules:\n  - {name: r, on: call.complete, do: log}\n"
    )
    done = run("run", "--config", str(cfg))
    assert done.returncode == 2
    assert (
        f"{cfg}:4:15 rules[0].on: unknown event type 'call.complete' "
        "(did you mean 'call.completed'?)" in done.stderr
    )


# -- commands that talk to a running daemon: campaign, status, deliveries, dnc ------------------


@pytest.fixture(scope="module")
def daemon_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A daemon (and its simulator) whose only route delivers to a port nobody listens on, once:
    every routed event becomes a dead letter. Yields the daemon's config file."""
    from tests.daemons import DaemonConfig, free_port, start_daemon, start_simulator

    tmp_path = tmp_path_factory.mktemp("cli-daemon")
    sim = start_simulator(tmp_path, seed=4, time_scale=0.002)
    cfg = DaemonConfig(
        simulator_url=sim.url,
        store_path=tmp_path / "state.db",
        plugins={
            "nowhere": {
                "use": "http",
                "url": f"http://127.0.0.1:{free_port()}/events",
                "delivery": {"max_attempts": 1, "timeout": "1s"},
            }
        },
        rules=[{"name": "tell nowhere", "on": "call.queued", "do": "nowhere"}],
    )
    daemon = start_daemon(tmp_path, cfg)
    try:
        yield daemon.config_path
    finally:
        daemon.kill()
        sim.kill()


def _closed_window() -> dict[str, object]:
    """A calling window open on no day near today (in any zone): the calls wait, queued, and
    the campaign stays active, neither dialled nor completed."""
    import datetime

    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    today = datetime.datetime.now(datetime.UTC).weekday()
    near = {days[(today + shift) % 7] for shift in (-1, 0, 1)}
    return {"start": "09:00", "end": "17:00", "days": [d for d in days if d not in near]}


@pytest.mark.slow
def test_campaign_commands(daemon_config: Path, tmp_path: Path) -> None:
    cfg = str(daemon_config)
    leads = tmp_path / "leads.csv"
    leads.write_text(
        "Phone,First Name,metadata.tier\n"
        "+14155554000,Ann,gold\n"
        "+1415555,Bob,silver\n"
        '+14155554001,"Cy\nJr",gold\n'
        "+14155554002,Dee,\n"
    )
    done = run(
        "campaign", "import", str(leads), "--name", "cli spring", "--config", cfg,
        "--map", "to=Phone", "--map", "metadata.first=First Name", "--purpose", "Reminder",
        "--settings", json.dumps({"priority": 3, "window": _closed_window()}), "--budget",
        "100", "--price-per-minute", "0.5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    assert first.endswith("(cli spring): 3 row(s) queued, 1 refused"), done.stdout
    assert rest[0].startswith("  line 3: INVALID_PHONE_NUMBER: ")
    campaign_id = first.split()[1]

    shown = run("campaign", "show", campaign_id, "--config", cfg, "--json")
    assert shown.returncode == 0, shown.stderr
    campaign = json.loads(shown.stdout)
    assert campaign["settings"]["priority"] == 3 and campaign["settings"]["purpose"] == "Reminder"
    assert campaign["status"] == "active" and campaign["progress"]["by_state"] == {"queued": 3}
    assert campaign["budget"] == 100 and campaign["rows"] == {"total": 4, "invalid": 1}
    text = run("campaign", "show", campaign_id, "--config", cfg).stdout
    assert "status    active" in text and "rows      4 (1 refused)" in text
    assert " of 100.00 (" in text and "\nspent     " in text
    listing = run("campaign", "list", "--config", cfg).stdout
    assert listing.splitlines()[0].split() == [
        "ID", "NAME", "STATUS", "ROWS", "INVALID", "DIALED", "SPENT", "BUDGET",
    ]  # fmt: skip
    assert campaign_id in listing and "cli spring" in listing
    errors = run("campaign", "errors", campaign_id, "--config", cfg).stdout
    assert errors.startswith("import 1 line 3: INVALID_PHONE_NUMBER")

    paused = run("campaign", "pause", campaign_id, "--reason", "lunch", "--config", cfg)
    assert paused.returncode == 0 and paused.stdout.strip().endswith(": paused"), paused.stderr
    again = run("campaign", "pause", campaign_id, "--config", cfg)
    assert again.returncode == 1 and "INVALID_TRANSITION" in again.stderr
    resumed = run("campaign", "resume", campaign_id, "--config", cfg)
    assert resumed.returncode == 0 and resumed.stdout.strip().endswith(": active")
    canceled = run("campaign", "cancel", campaign_id, "--hangup", "--config", cfg)
    assert canceled.returncode == 0 and canceled.stdout.strip().endswith(": canceled")
    more = run("campaign", "import", str(leads), "--into", campaign_id, "--config", cfg)
    assert more.returncode == 1 and "CAMPAIGN_CANCELED" in more.stderr
    missing = run("campaign", "show", "nope", "--config", cfg)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


@pytest.mark.slow
def test_campaign_import_jsonl_from_stdin(daemon_config: Path) -> None:
    rows = '{"to": "+14155554100", "metadata": {"n": 1}}\n{"to": "+14155554101"}\n'
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "campaign", "import", "-", "--format", "jsonl",
         "--name", "stdin", "--config", str(daemon_config), "--json"],
        input=rows, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["import"]["queued"] == 2 and answer["import"]["format"] == "jsonl"


def test_campaign_import_usage_errors(daemon_config: Path, tmp_path: Path) -> None:
    cfg = str(daemon_config)
    missing = run("campaign", "import", str(tmp_path / "no.csv"), "--name", "x", "--config", cfg)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    odd = tmp_path / "leads.xlsx"
    odd.write_text("x")
    unknown = run("campaign", "import", str(odd), "--name", "x", "--config", cfg)
    assert unknown.returncode == 2 and "--format" in unknown.stderr
    window = run("campaign", "import", str(odd), "--name", "x", "--window", "9", "--config", cfg)
    assert window.returncode == 2 and "HH:MM-HH:MM" in window.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("name\nAnn\n")
    into = run("campaign", "import", str(bad), "--into", "x", "--budget", "3", "--config", cfg)
    assert into.returncode == 2 and "--name" in into.stderr
    refused = run("campaign", "import", str(bad), "--name", "x", "--config", cfg)
    assert refused.returncode == 1 and "INVALID_IMPORT: no column for 'to'" in refused.stderr
    settings = run(
        "campaign", "import", str(bad), "--name", "x", "--from", "+1604", "--config", cfg
    )
    assert settings.returncode == 1 and "INVALID_PHONE_NUMBER" in settings.stderr


@pytest.mark.slow
def test_status_command(daemon_config: Path) -> None:
    done = run("status", "--config", str(daemon_config))
    assert done.returncode == 0, done.stderr
    labels = [line.split("  ")[0] for line in done.stdout.splitlines()[:9]]
    assert labels == [
        "ready", "provider", "store", "dialing", "live calls", "queued", "rates", "placements",
        "dead letters",
    ]  # fmt: skip
    assert "dialing       running" in done.stdout
    status = json.loads(run("status", "--config", str(daemon_config), "--json").stdout)
    assert status["ready"] is True and "per_minute" in status["rates"]


@pytest.mark.slow
def test_deliveries_commands(daemon_config: Path) -> None:
    import yaml

    cfg = str(daemon_config)
    api = yaml.safe_load(daemon_config.read_text())["api"]
    headers = {"Authorization": f"Bearer {api['token']}"}
    answer = httpx.post(
        f"http://{api['listen']}/v1/calls", json={"to": "+14155554200"}, headers=headers
    )
    assert answer.status_code == 202, answer.text
    call_id = answer.json()["id"]
    deadline = time.monotonic() + 20
    while True:
        listed = run("deliveries", "list", "--config", cfg, "--json")
        dead = [d for d in json.loads(listed.stdout)["deliveries"] if d["call_id"] == call_id]
        if dead:
            break
        assert time.monotonic() < deadline, "no dead letter"
        time.sleep(0.3)
    [letter] = dead
    text = run("deliveries", "list", "--route", "tell nowhere", "--config", cfg).stdout
    assert text.splitlines()[0].split() == [
        "ID",
        "ROUTE",
        "STATE",
        "TRIES",
        "CALL",
        "LAST",
        "ERROR",
    ]
    assert letter["id"] in text and "tell nowhere" in text
    replayed = run("deliveries", "replay", letter["id"], "--config", cfg)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "replayed 1 delivery"
    everything = run("deliveries", "replay", "--all-dead", "--config", cfg)
    assert everything.returncode == 0 and everything.stdout.startswith("replayed ")
    usage = run("deliveries", "replay", "--config", cfg)
    assert usage.returncode == 2 and "--all-dead" in usage.stderr


@pytest.mark.slow
def test_dnc_commands(daemon_config: Path) -> None:
    cfg = str(daemon_config)
    added = run("dnc", "add", "+14155554300", "--reason", "asked", "--config", cfg)
    assert (added.returncode, added.stdout) == (0, "+14155554300: added on the list\n")
    again = run("dnc", "add", "+14155554300", "--config", cfg)
    assert again.stdout == "+14155554300: already on the list\n"
    removed = run("dnc", "remove", "+14155554300", "--config", cfg)
    assert (removed.returncode, removed.stdout) == (0, "+14155554300: removed from the list\n")
    gone = run("dnc", "remove", "+14155554300", "--config", cfg)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
    bad = run("dnc", "add", "415-555-4300", "--config", cfg)
    assert bad.returncode == 1 and "INVALID_PHONE_NUMBER" in bad.stderr


def test_daemon_commands_without_a_daemon(tmp_path: Path) -> None:
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(
        f"magpipe: {{token: x}}\napi: {{listen: '127.0.0.1:{free_port()}', token: secret}}\n"
    )
    done = run("status", "--config", str(cfg))
    assert done.returncode == 4 and "cannot reach the daemon" in done.stderr
    cfg.write_text("magpipe: {token: x}\n")
    done = run("campaign", "list", "--config", str(cfg))
    assert done.returncode == 2 and "api.token" in done.stderr
    done = run("campaign", "list")
    assert done.returncode == 2 and "--config" in done.stderr


def test_a_plugins_folder_where_the_daemon_runs_hides_no_built_in(tmp_path: Path) -> None:
    """The built-ins install as ``orchestrator_plugins``: run from a folder with a ``plugins``
    package of its own (a user's, say), every built-in is still there."""
    decoy = tmp_path / "plugins"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy plugins package')\n")
    (decoy / "http.py").write_text("raise ImportError('the decoy http module')\n")
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed = {plugin["type"] for plugin in json.loads(done.stdout)}
    assert {"log", "http", "slack", "hubspot", "retry"} <= listed, listed
