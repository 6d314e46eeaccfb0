"""Rough edges a user meets first, each against the real thing: ``orchestrator`` subprocesses,
the webhook intake and the control API served on loopback ports over SQLite stores, the http
plugin delivering to a real server, and the repository's own files."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import TestServer
from orchestrator_plugins.http import HttpHandler

from orchestrator import config, intake
from orchestrator.api import ControlApi
from orchestrator.connectors.sqlite import SQLiteConnector
from orchestrator.model import NewCall
from orchestrator.provider.simulator import cli as simulator_cli
from orchestrator.provider.simulator.model import (
    FAULT_NAMES,
    FAULT_PARAMETERS,
    OUTCOME_NAMES,
    Outcome,
    Script,
)
from orchestrator.store import Store
from orchestrator.testing import Harness, make_event, run_rule_tests

ROOT = Path(__file__).resolve().parents[1]
API_TOKEN = "rough-edges-api-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def orchestrator(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m orchestrator ARGS`` as a user runs it (no MAGPIPE_* from this process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGPIPE_")}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


# -- 1. config check: did-you-mean for a misspelled key ----------------------------------------


def test_config_check_suggests_the_key_meant(tmp_path: Path) -> None:
    cfg = tmp_path / "orchestrator.yaml"
    cfg.write_text(
        "magpipe: {token: abcd}\n"
        "dialer:\n"
        "  max_live_cals: 3\n"
        "  window: {start: '09:00', end: '20:00', dayz: [mon]}\n"
        "defaults: {frm: '+16045551234'}\n"
        "colour: red\n"
    )
    done = orchestrator("config", "check", str(cfg))
    assert done.returncode == 1, done.stdout
    lines = [line for line in done.stderr.splitlines() if line.startswith(str(cfg))]
    assert lines == [
        f"{cfg}:3:3 dialer.max_live_cals: unknown key (did you mean 'max_live_calls'?)",
        f"{cfg}:4:42 dialer.window.dayz: unknown key (did you mean 'days'?)",
        # An aliased field is suggested as it is written in the file.
        f"{cfg}:5:12 defaults.frm: unknown key (did you mean 'from'?)",
        # Nothing is close: no guess.
        f"{cfg}:6:1 colour: unknown key",
    ]


def test_known_keys_follow_the_config_models() -> None:
    assert config.known_keys(config.Config, ("dialer",)) == list(config.DialerSettings.model_fields)
    assert config.known_keys(config.Config, ("magpipe", "reconcile")) == list(
        config.ReconcileSettings.model_fields
    )
    assert "days" in (config.known_keys(config.Config, ("dialer", "window")) or [])
    assert config.known_keys(config.Config, ("plugins", "audit")) is None  # free-form


# -- 2. rules test: an event type no event has ------------------------------------------------


RULES_CONFIG = """\
magpipe: {token: abcd}
rules:
  - {name: log outcomes, on: [call.completed, call.failed], do: log}
"""


def test_a_rule_test_with_an_unknown_event_type_fails(tmp_path: Path) -> None:
    (tmp_path / "orchestrator.yaml").write_text(RULES_CONFIG)
    tests = tmp_path / "rules.test.yaml"
    tests.write_text(
        "config: orchestrator.yaml\n"
        "tests:\n"
        "  - name: a typo\n"
        "    event: {type: call.complete}\n"
        "    expect: []\n"
        "  - name: the real type\n"
        "    event: {type: call.completed}\n"
        "    expect: [{rule: log outcomes}]\n"
    )
    done = orchestrator("rules", "test", str(tests))
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines() == [
        "FAIL a typo",
        f"    {tests}:4:13 tests[0].event.type: unknown event type 'call.complete' "
        "(did you mean 'call.completed'?)",
        "PASS the real type",
        "1 passed, 1 failed",
    ]


def test_rule_test_event_types_must_be_ones_an_event_can_have(tmp_path: Path) -> None:
    (tmp_path / "orchestrator.yaml").write_text(RULES_CONFIG)
    tests = tmp_path / "rules.test.yaml"
    cases = [
        "  - {name: a pattern, event: {type: 'call.*'}, expect: []}",
        "  - {name: half a plugin type, event: {type: plugin.audit}, expect: []}",
        "  - {name: a plugin's type, event: {type: plugin.audit.sent}, expect: []}",
        "  - {name: the default type, event: {}, expect: [{rule: log outcomes}]}",
    ]
    tests.write_text("config: orchestrator.yaml\ntests:\n" + "\n".join(cases) + "\n")

    def at(index: int) -> str:
        return f"{tests}:{index + 3}:{cases[index].index('type:') + 1} tests[{index}].event.type"

    run = run_rule_tests(tests)
    assert run.problems == []
    assert [(r.name, r.passed, r.diff) for r in run.results] == [
        ("a pattern", False, [f"{at(0)}: an event's type is not a pattern: 'call.*'"]),
        (
            "half a plugin type",
            False,
            [f"{at(1)}: a plugin's event type is plugin.<instance>.<name>, not 'plugin.audit'"],
        ),
        ("a plugin's type", True, []),
        ("the default type", True, []),
    ]


# -- 3. intake.stale: a harmless repeat is debug ----------------------------------------------


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(SQLiteConnector(f"sqlite://{tmp_path / 'store.db'}"), router=lambda event: [])
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_a_repeated_status_is_logged_at_debug_a_contradicting_one_at_info(
    sqlite_store: Store,
) -> None:
    call, _ = await sqlite_store.create_call(NewCall(to="+14155550100", from_="+16045551234"))
    [attempt] = await sqlite_store.attempts_of(call.id)
    app = intake.Intake(sqlite_store, publish=lambda events: None).app()
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as http:
        url = str(server.make_url(f"{intake.PATH}/{attempt.webhook_token}"))

        async def send(status: str, at: str) -> str:
            body = {"event": "call.status_changed", "call_id": "pc-1", "status": status}
            async with http.post(url, json={**body, "timestamp": at}) as response:
                assert response.status == 200, await response.text()
                outcome: str = (await response.json())["outcome"]
                return outcome

        with structlog.testing.capture_logs() as logs:
            assert await send("initiated", "t1") == "applied"
            assert await send("initiated", "t2") == "stale"  # the same status again
            assert await send("completed", "t3") == "applied"
            assert await send("ringing", "t4") == "stale"  # late, and already passed
            assert await send("busy", "t5") == "stale"  # contradicts the call's outcome
    stale = [(e["status"], e["log_level"]) for e in logs if e["event"] == "intake.stale"]
    assert stale == [("initiated", "debug"), ("ringing", "debug"), ("busy", "info")]
    assert all(e["call_id"] == call.id for e in logs if e["event"] == "intake.stale")


# -- 4. simulator: fault and outcome names in --help; no_answer and no-answer -----------------


def test_simulator_help_lists_the_faults_and_outcomes() -> None:
    done = orchestrator("simulator", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for name in (*FAULT_NAMES, *FAULT_PARAMETERS, *OUTCOME_NAMES):
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), name
    assert "no_answer" in text  # the events' spelling is named as accepted


def simulator_args(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(exit_on_error=False)
    simulator_cli.add_arguments(parser)
    return parser.parse_args(list(args))


def test_script_outcomes_take_either_spelling() -> None:
    ns = simulator_args(
        "--script",
        "+14155550100=no_answer,busy",
        "--script",
        "+14155550101=No-Answer",
        "--script-fault",
        "+14155550102=hang-placement:1",
    )
    scripts = simulator_cli.config_from_args(ns).scripts
    assert scripts["+14155550100"] == Script(outcome=Outcome.NO_ANSWER, then=(Outcome.BUSY,))
    assert scripts["+14155550101"].outcome is Outcome.NO_ANSWER
    assert (scripts["+14155550102"].fault, scripts["+14155550102"].fault_dials) == (
        "hang_placement",
        1,
    )
    assert [Outcome.parse(o.value.replace("-", "_")) for o in Outcome] == list(Outcome)
    with pytest.raises(ValueError, match="unknown outcome 'answered'"):
        Outcome.parse("answered")


def test_a_wrong_script_outcome_names_the_valid_ones() -> None:
    done = orchestrator("simulator", "--script", "+14155550100=answered")
    assert done.returncode == 2
    assert f"outcomes are: {', '.join(OUTCOME_NAMES)}" in done.stderr


# -- 5. control API: 404 and 405 in the API's JSON error shape --------------------------------


@pytest.fixture
async def api_url(sqlite_store: Store) -> AsyncIterator[str]:
    async def ready() -> tuple[bool, dict[str, Any]]:
        return True, {"store": "ok", "provider": "ok"}

    control = ControlApi(
        sqlite_store,
        token=API_TOKEN,
        defaults=config.Defaults(),
        on_queued=lambda: None,
        ready=ready,
    )
    runner = web.AppRunner(control.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def answer(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any], Any]:
    async with http.request(method, url, **kwargs) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, dict(response.headers), await response.json()


async def test_routing_errors_answer_json(api_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        status, _, body = await answer(http, "GET", api_url + "/v1/nothing-here", headers=AUTH)
        assert status == 404
        assert body == {"error": {"code": "NOT_FOUND", "message": "no such route"}}

        status, headers, body = await answer(
            http, "DELETE", api_url + "/v1/campaigns/0193c2a4", headers=AUTH
        )
        assert status == 405
        assert set(headers["Allow"].split(",")) == {"GET", "HEAD", "PATCH"}
        assert body["error"]["code"] == "METHOD_NOT_ALLOWED"
        assert sorted(body["error"]["allowed"]) == ["GET", "HEAD", "PATCH"]
        assert "DELETE" in body["error"]["message"]

        # The health checks need no token, and a wrong method there is JSON too.
        status, headers, body = await answer(http, "POST", api_url + "/healthz")
        assert (status, body["error"]["code"], headers["Allow"]) == (
            405,
            "METHOD_NOT_ALLOWED",
            "GET,HEAD",
        )
        assert (await answer(http, "GET", api_url + "/healthz"))[::2] == (200, {"ok": True})
        # A route that exists still answers as before.
        status, _, body = await answer(http, "GET", api_url + "/v1/campaigns/none", headers=AUTH)
        assert (status, body["error"]["code"]) == (404, "NOT_FOUND")


async def test_authentication_comes_before_routing_as_before(api_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/v1/nothing-here"), ("PATCH", "/v1/campaigns/x")):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                status, _, body = await answer(http, method, api_url + path, headers=headers)
                assert (status, body["error"]["code"]) == (401, "UNAUTHORIZED"), (method, path)


# -- 6. the example config documents what the code does ---------------------------------------


def comment_of(text: str, key: str) -> str:
    """The comment on the line that sets ``key:`` in a YAML text."""
    [line] = [line for line in text.splitlines() if re.match(rf"\s*{re.escape(key)}:", line)]
    assert "#" in line, line
    return line.split("#", 1)[1]


SIGNATURE_HEADER = re.compile(r"\b[a-z0-9-]+-signature\b", re.IGNORECASE)


def test_the_example_config_documents_the_intake_header_and_the_base_url_default() -> None:
    text = (ROOT / "config" / "orchestrator.yaml").read_text()
    documented = SIGNATURE_HEADER.findall(comment_of(text, "webhook_secret"))
    assert documented == [intake.SIGNATURE_HEADER]
    found = re.search(r"default:\s*(\S+)", comment_of(text, "base_url"))
    assert found, comment_of(text, "base_url")
    assert found.group(1) == config.MagpipeSettings.model_fields["base_url"].default


async def test_the_example_config_documents_the_http_plugins_signature_header() -> None:
    """The ``secret`` of the example's http instance names the header a delivery carries."""
    seen: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        seen.extend(h.lower() for h in request.headers if SIGNATURE_HEADER.fullmatch(h))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hooks", receive)
    async with TestServer(app, host="127.0.0.1") as server:
        options = {"url": str(server.make_url("/hooks")), "secret": "a-secret-for-signing"}
        async with Harness(HttpHandler, options) as harness:
            result = await harness.run(make_event())
    assert result.ok, result
    text = (ROOT / "config" / "orchestrator.yaml").read_text()
    audit = text[text.index("  audit:") :]
    assert SIGNATURE_HEADER.findall(comment_of(audit, "secret")) == seen == ["webhook-signature"]


# -- 7. every path the README cites exists ----------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_relative_link_and_path_in_the_readme_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    anchors = {slug(h) for h in re.findall(r"^#+\s+(.+)$", readme, re.MULTILINE)}
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links, "no links found: has the README's syntax changed?"
    for target in links:
        if re.match(r"[a-z]+:", target):
            continue  # https://, mailto:
        path, _, anchor = target.partition("#")
        if path:
            assert (ROOT / path).exists(), f"README links to {target}, which is not here"
        elif anchor:
            assert anchor in anchors, f"README links to #{anchor}, which is no heading"
    cited = re.findall(
        r"`((?:config|docs|examples|orchestrator|plugins|tests|bench)/[^`\s]+)`", readme
    )
    assert cited, "no paths found: has the README's syntax changed?"
    for path in cited:
        assert (ROOT / path).exists(), f"README cites {path}, which is not here"
