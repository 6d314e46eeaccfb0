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
