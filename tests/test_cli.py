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
