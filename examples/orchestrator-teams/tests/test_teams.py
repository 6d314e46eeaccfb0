"""The teams plugin against a real loopback server that answers as a Teams webhook does.

Only magpipe-orchestrator's public API (``orchestrator``) and its test kit
(``orchestrator.testing``) are used: this is how a third-party plugin is tested.
"""

from __future__ import annotations

import socket
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from orchestrator_teams import TeamsHandler, TeamsOptions, retry_after

from orchestrator import ConfigError
from orchestrator.testing import Harness, make_event

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Endpoint:
    """A Teams incoming webhook on a loopback port: records what it gets, answers ``answers``
    in turn (then 202 Accepted, as a Workflows webhook does)."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    answers: list[web.Response] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        if self.answers:
            return self.answers.pop(0)
        return web.Response(status=202)


@pytest.fixture
async def teams() -> AsyncIterator[Endpoint]:
    endpoint = Endpoint()
    app = web.Application()
    app.router.add_post("/webhookb2/{token}", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    endpoint.url = f"http://127.0.0.1:{port}/webhookb2/s3cr3t-token"
    yield endpoint
    await runner.cleanup()


def facts(body: dict[str, Any]) -> dict[str, str]:
    blocks = body["attachments"][0]["content"]["body"]
    [fact_set] = [b for b in blocks if b["type"] == "FactSet"]
    return {f["title"]: f["value"] for f in fact_set["facts"]}


async def test_posts_an_adaptive_card(teams: Endpoint) -> None:
    event = make_event(
        type="call.completed",
        duration=62.4,
        recording_url="https://recordings.example.com/r/1.mp3",
        call={"campaign": "spring", "attempt": 2},
    )
    result = await Harness(TeamsHandler, {"webhook_url": teams.url}).run(event)
    assert result.ok, result.error
    assert result.messages == ["teams.posted"]
    [body] = teams.received
    attachment = body["attachments"][0]
    assert body["type"] == "message"
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    content = attachment["content"]
    assert content["type"] == "AdaptiveCard"
    assert content["body"][0]["text"] == "Call to +14155550100: completed"
    assert facts(body) == {
        "To": "+14155550100",
        "Outcome": "completed",
        "Attempt": "2",
        "Campaign": "spring",
        "Duration": "62s",
    }
    assert content["actions"] == [
        {"type": "Action.OpenUrl", "title": "Recording", "url": event.recording_url}
    ]


async def test_the_rules_with_is_rendered_per_event(teams: Endpoint) -> None:
    harness = Harness(TeamsHandler, {"webhook_url": teams.url, "title": "Missed call"})
    event = make_event(
        type="call.no_answer", call={"metadata": {"name": "Ada"}}, error={"code": "NO_ANSWER"}
    )
    result = await harness.run(
        event, with_={"text": "{{ call.metadata.name }} did not pick up", "link": "https://crm/1"}
    )
    assert result.ok, result.error
    content = teams.received[0]["attachments"][0]["content"]
    assert [b.get("text") for b in content["body"][:2]] == ["Missed call", "Ada did not pick up"]
    assert facts(teams.received[0])["Reason"] == "NO_ANSWER"
    assert content["actions"][-1]["url"] == "https://crm/1"


@pytest.mark.parametrize(
    ("status", "headers", "outcome", "wait"),
    [
        (429, {"Retry-After": "30"}, "retry", 30.0),
        (503, {}, "retry", None),
        (408, {}, "retry", None),
        (400, {}, "dead", None),
        (413, {}, "dead", None),
        (404, {}, "gone", None),
        (410, {}, "gone", None),
        (403, {}, "gone", None),
    ],
)
async def test_answers_map_to_delivery_outcomes(
    teams: Endpoint, status: int, headers: dict[str, str], outcome: str, wait: float | None
) -> None:
    teams.answers.append(web.Response(status=status, text="nope", headers=headers))
    result = await Harness(TeamsHandler, {"webhook_url": teams.url}).run(make_event())
    assert result.outcome == outcome
    assert result.retry_after == wait
    assert f"HTTP {status}: nope" in str(result.error)
    assert "s3cr3t" not in str(result.error)


async def test_an_unreachable_webhook_is_retried_without_naming_it() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/webhookb2/s3cr3t-token"
    result = await Harness(TeamsHandler, {"webhook_url": url}).run(make_event())
    assert result.outcome == "retry"
    assert "reaching Teams" in str(result.error)
    assert "s3cr3t" not in str(result.error)


def test_options_are_checked_and_the_url_kept_secret() -> None:
    with pytest.raises(ConfigError, match="webhook_url") as caught:
        Harness(TeamsHandler, {"webhook_url": "ftp://s3cr3t@example.com"})
    assert "s3cr3t" not in str(caught.value)
    with pytest.raises(ConfigError, match="webhook_url"):
        Harness(TeamsHandler, {})
    options = TeamsOptions.model_validate({"webhook_url": "https://example.com/s3cr3t"})
    assert "s3cr3t" not in repr(options)


def test_retry_after_reads_seconds_and_dates() -> None:
    assert retry_after("12") == 12.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after("soon") is None
    assert retry_after("inf") is None
    assert retry_after(None) is None


def test_the_entry_point_names_the_handler() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["orchestrator.plugins"]["teams"]
    assert target == "orchestrator_teams:TeamsHandler"
    assert TeamsHandler.type_name == "teams"
