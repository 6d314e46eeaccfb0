"""The campaign, do-not-call, dead-letter and status routes of the control API.

In-process against a SQLite store: every bad request is a 4xx with a JSON reason. Against a
real daemon and simulator (subprocesses): an import with bad rows dials the valid ones, pause
stops new dials and resume goes on, cancel ends what waits while live calls finish, the
do-not-call list refuses a number, and a dead letter is replayed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from orchestrator import config
from orchestrator.api import ControlApi
from orchestrator.connectors.sqlite import SQLiteConnector
from orchestrator.store import Store
from tests.daemons import (
    FROM_NUMBER,
    TERMINAL,
    DaemonConfig,
    DaemonProcess,
    Recorder,
    SimulatorProcess,
    destinations,
    start_daemon,
    start_simulator,
)

TOKEN = "campaign-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CSV = {**AUTH, "Content-Type": "text/csv"}


# -- in process --------------------------------------------------------------------------------


class Api:
    def __init__(
        self, client: TestClient[Any, Any], queued: list[int], control: ControlApi
    ) -> None:
        self.client = client
        self.queued = queued
        self.control = control

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {**AUTH, **kwargs.pop("headers", {})}
        response = await self.client.request(method, path, headers=headers, **kwargs)
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()

    async def error(self, method: str, path: str, status: int, code: str, **kwargs: Any) -> Any:
        got, body = await self.call(method, path, **kwargs)
        assert got == status, (got, body)
        assert set(body) == {"error"} and body["error"]["code"] == code, body
        assert body["error"]["message"], body
        return body["error"]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = Store(SQLiteConnector(f"sqlite://{tmp_path / 'api.db'}"), router=lambda event: [])
    await store.open()
    queued: list[int] = []

    async def ready() -> tuple[bool, dict[str, Any]]:
        return True, {"store": "ok", "provider": "ok"}

    control = ControlApi(
        store,
        token=TOKEN,
        defaults=config.Defaults.model_validate({"from": FROM_NUMBER}),
        on_queued=lambda: queued.append(1),
        ready=ready,
    )
    async with TestClient(TestServer(control.app())) as client:
        yield Api(client, queued, control)
    await store.close()


async def test_create_then_import_rows(api: Api) -> None:
    settings = {"from": FROM_NUMBER, "purpose": "Reminder", "budget": 10, "max_attempts": 2}
    status, campaign = await api.call(
        "POST", "/v1/campaigns", json={"name": "spring", "settings": settings}
    )
    assert status == 201, campaign
    assert campaign["status"] == "active" and campaign["settings"]["from_numbers"] == [FROM_NUMBER]
    assert campaign["rows"] == {"total": 0, "invalid": 0} and campaign["budget_left"] == 10
    body = "Mobile,First Name,x\n+14155550100,Ann,1\nbad,Bob,2\n+14155550101,Cy,3\n"
    status, answer = await api.call(
        "POST",
        f"/v1/campaigns/{campaign['id']}/rows",
        params=[("map.to", "Mobile"), ("map.metadata.first", "First Name")],
        data=body.encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert status == 200, answer
    done = answer["import"]
    assert (done["rows"], done["queued"], done["invalid"]) == (3, 2, 1)
    assert [e["line"] for e in done["errors"]] == [3] and done["ignored_columns"] == ["x"]
    assert answer["campaign"]["rows"] == {"total": 3, "invalid": 1}
    assert api.queued  # the dialer was woken
    status, shown = await api.call("GET", f"/v1/campaigns/{campaign['id']}")
    assert shown["progress"] == {
        "calls": 2,
        "by_status": {"queued": 2},
        "by_state": {"queued": 2},
        "attempts": 0,
    }
    status, calls = await api.call("GET", "/v1/calls", params={"campaign": campaign["id"]})
    assert [(c["to"], c["metadata"], c["purpose"]) for c in calls["calls"]] == [
        ("+14155550100", {"first": "Ann"}, "Reminder"),
        ("+14155550101", {"first": "Cy"}, "Reminder"),
    ]


async def test_one_shot_import_with_settings_header(api: Api) -> None:
    rows = b'{"to": "+14155550100", "metadata": {"tier": "gold"}}\n{"to": "nope"}\n'
    settings = {"window": {"start": "09:00", "end": "20:00", "days": ["mon"]}, "priority": 5}
    status, answer = await api.call(
        "POST",
        "/v1/campaigns",
        params={"name": "jsonl"},
        data=rows,
        headers={
            "Content-Type": "application/x-ndjson",
            "X-Campaign-Settings": json.dumps(settings),
        },
    )
    assert status == 201, answer
    assert answer["campaign"]["settings"]["window"]["days"] == ["mon"]
    assert answer["campaign"]["settings"]["priority"] == 5
    assert answer["import"]["errors"][0]["line"] == 2
    # ?format= wins over the Content-Type
    status, answer = await api.call(
        "POST", "/v1/campaigns", params={"name": "f", "format": "csv"}, data=b"to\n+14155550100\n",
        headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert status == 201 and answer["import"]["queued"] == 1


async def test_a_body_far_over_the_json_limit_is_imported(api: Api) -> None:
    numbers = [f"+1415555{i % 1000:04d}" for i in range(40_000)]
    body = ("to,metadata.note\n" + "".join(f"{n},{'x' * 20}\n" for n in numbers)).encode()
    assert len(body) > 1 << 20
    status, answer = await api.call(
        "POST",
        "/v1/campaigns",
        params={"name": "big"},
        data=body,
        headers={"Content-Type": "text/csv"},
    )
    assert status == 201, answer
    assert answer["import"]["queued"] == 40_000


async def test_a_body_that_breaks_off_keeps_the_chunks_written(api: Api) -> None:
    # Served as the daemon serves it (the test server would cancel the handler instead).
    runner = web.AppRunner(api.control.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rows = b"to\n" + "".join(f"+1415555{i % 1000:04d}\n" for i in range(1500)).encode()
    head = (
        "POST /v1/campaigns?name=broken HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: text/csv\r\n"
        f"Content-Length: {len(rows) + 5000}\r\n\r\n"
    ).encode()
    try:
        with structlog.testing.capture_logs() as logs:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head + rows)
            await writer.drain()
            await asyncio.sleep(0.5)  # the server reads what came; then the client goes away
            writer.close()
            deadline = time.monotonic() + 10
            while not any(e["event"] == "api.import_broken" for e in logs):
                assert time.monotonic() < deadline, logs
                await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    _, listed = await api.call("GET", "/v1/campaigns")
    [campaign] = listed["campaigns"]
    # The first chunk of a thousand rows was written; the rest of the body never came.
    assert (campaign["name"], campaign["rows"]["total"]) == ("broken", 1000)


async def test_errors_are_listed_by_line_with_a_cursor(api: Api) -> None:
    body = "to\n" + "".join("bad\n" if i % 2 else "+14155550100\n" for i in range(10))
    status, answer = await api.call(
        "POST",
        "/v1/campaigns",
        params={"name": "e"},
        data=body.encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert status == 201
    path = f"/v1/campaigns/{answer['campaign']['id']}/errors"
    status, page = await api.call("GET", path, params={"limit": 3})
    assert [e["line"] for e in page["errors"]] == [3, 5, 7] and page["next"] == "1:7"
    status, page = await api.call("GET", path, params={"after": "1:7"})
    assert [e["line"] for e in page["errors"]] == [9, 11] and page["next"] is None
    # A second file into the same campaign starts again at line 1: both are kept.
    status, again = await api.call(
        "POST",
        f"/v1/campaigns/{answer['campaign']['id']}/rows",
        data=b"to\nbad\n+14155550101\nworse\n",
        headers={"Content-Type": "text/csv"},
    )
    assert status == 200, again
    assert again["import"]["number"] == 2
    assert [(e["import"], e["line"]) for e in again["import"]["errors"]] == [(2, 2), (2, 4)]
    status, page = await api.call("GET", path, params={"after": "1:9"})
    assert [(e["import"], e["line"]) for e in page["errors"]] == [(1, 11), (2, 2), (2, 4)]
    assert all("'bad'" in e["reason"] or "'worse'" in e["reason"] for e in page["errors"])
    status, page = await api.call("GET", path, params={"after": "5"})  # a bare line: import 1
    assert [(e["import"], e["line"]) for e in page["errors"]][:2] == [(1, 7), (1, 9)]
    await api.error("GET", path, 400, "INVALID_REQUEST", params={"after": "x"})
    await api.error("GET", path, 400, "INVALID_REQUEST", params={"limit": 0})
    await api.error("GET", "/v1/campaigns/nope/errors", 404, "NOT_FOUND")


async def test_transitions(api: Api) -> None:
    status, campaign = await api.call("POST", "/v1/campaigns", json={"name": "t"})
    path = f"/v1/campaigns/{campaign['id']}"
    status, paused = await api.call("POST", path + "/pause", json={"reason": "holiday"})
    assert status == 200 and (paused["status"], paused["reason"]) == ("paused", "holiday")
    error = await api.error("POST", path + "/pause", 409, "INVALID_TRANSITION")
    assert error["campaign_status"] == "paused"
    status, resumed = await api.call("POST", path + "/resume")
    assert resumed["status"] == "active"
    await api.error("POST", path + "/resume", 409, "INVALID_TRANSITION")
    status, canceled = await api.call("POST", path + "/cancel")
    assert canceled["status"] == "canceled"
    for action in ("pause", "resume", "cancel"):
        await api.error("POST", f"{path}/{action}", 409, "INVALID_TRANSITION")
    await api.error(
        "POST",
        f"{path}/rows",
        409,
        "CAMPAIGN_CANCELED",
        data=b"to\n",
        headers={"Content-Type": "text/csv"},
    )
    await api.error("POST", "/v1/campaigns/nope/pause", 404, "NOT_FOUND")
    await api.error("POST", path + "/pause", 400, "INVALID_REQUEST", json={"why": 1})
    await api.error("POST", path + "/pause", 400, "MALFORMED_JSON", data=b"{")


async def test_bad_requests_are_4xx_with_a_reason(api: Api) -> None:
    def csv(name: str | None = "x", **extra: str) -> dict[str, Any]:
        return {
            "params": {"name": name} if name else {},
            "headers": {"Content-Type": "text/csv", **extra},
        }

    await api.error("POST", "/v1/campaigns", 400, "INVALID_REQUEST", json={"settings": {}})
    await api.error("POST", "/v1/campaigns", 400, "INVALID_REQUEST", json={"name": "x", "oops": 1})
    await api.error(
        "POST",
        "/v1/campaigns",
        400,
        "INVALID_REQUEST",
        json={"name": "x", "settings": {"share": 0}},
    )
    await api.error(
        "POST",
        "/v1/campaigns",
        400,
        "INVALID_REQUEST",
        json={"name": "x", "settings": {"window": {"start": "25:00", "end": "09:00"}}},
    )
    error = await api.error(
        "POST",
        "/v1/campaigns",
        400,
        "INVALID_PHONE_NUMBER",
        json={"name": "x", "settings": {"from": "+1 604 555 1234"}},
    )
    assert error["fields"] == ["settings.from_numbers"]
    await api.error(
        "POST",
        "/v1/campaigns",
        400,
        "MALFORMED_JSON",
        data=b"{nope",
        headers={"Content-Type": "application/json"},
    )
    await api.error(
        "POST",
        "/v1/campaigns",
        400,
        "INVALID_REQUEST",
        data=b'{"name": "\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    await api.error("POST", "/v1/campaigns", 400, "INVALID_REQUEST", data=b"to\n", **csv(None))
    await api.error(
        "POST",
        "/v1/campaigns",
        400,
        "MALFORMED_JSON",
        data=b"to\n",
        **csv(**{"X-Campaign-Settings": "{"}),
    )
    await api.error(
        "POST",
        "/v1/campaigns",
        400,
        "INVALID_REQUEST",
        data=b"to\n",
        **csv(**{"X-Campaign-Settings": "[]"}),
    )
    await api.error(
        "POST",
        "/v1/campaigns",
        415,
        "UNSUPPORTED_FORMAT",
        data=b"to\n",
        params={"name": "x"},
        headers={"Content-Type": "text/plain"},
    )
    await api.error(
        "POST",
        "/v1/campaigns",
        415,
        "UNSUPPORTED_FORMAT",
        data=b"to\n",
        params={"name": "x", "format": "xlsx"},
    )
    await api.error("POST", "/v1/campaigns", 400, "INVALID_IMPORT", data=b"name\nAnn\n", **csv())
    await api.error("POST", "/v1/campaigns", 400, "INVALID_IMPORT", data=b"", **csv())
    await api.error(
        "POST",
        "/v1/campaigns",
        400,
        "INVALID_IMPORT",
        data=b"to\n",
        params={"name": "x", "map.phone": "y"},
        headers={"Content-Type": "text/csv"},
    )
    await api.error(
        "POST",
        "/v1/campaigns/nope/rows",
        404,
        "NOT_FOUND",
        data=b"to\n",
        headers={"Content-Type": "text/csv"},
    )
    await api.error("GET", "/v1/campaigns/nope", 404, "NOT_FOUND")
    await api.error("GET", "/v1/campaigns", 400, "INVALID_REQUEST", params={"limit": "lots"})
    # A file refused as a whole creates no campaign.
    _, listed = await api.call("GET", "/v1/campaigns")
    assert listed == {"campaigns": []}
    await api.error("GET", "/v1/deliveries", 400, "INVALID_REQUEST", params={"state": "undead"})
    await api.error("GET", "/v1/deliveries", 400, "INVALID_REQUEST", params={"limit": 5000})
    await api.error("POST", "/v1/deliveries/replay", 400, "INVALID_REQUEST", json={})
    await api.error("POST", "/v1/deliveries/replay", 400, "INVALID_REQUEST", json={"ids": []})
    await api.error(
        "POST",
        "/v1/deliveries/replay",
        400,
        "INVALID_REQUEST",
        json={"ids": ["a"], "all_dead": True},
    )
    await api.error(
        "POST", "/v1/deliveries/replay", 400, "INVALID_REQUEST", json={"ids": ["a"], "route": "h"}
    )
    await api.error("POST", "/v1/deliveries/replay", 400, "MALFORMED_JSON", data=b"")
    await api.error(
        "POST", "/v1/do-not-call", 400, "INVALID_PHONE_NUMBER", json={"number": "4155550100"}
    )
    await api.error("POST", "/v1/do-not-call", 400, "INVALID_REQUEST", json={"number": 4155550100})
    await api.error("POST", "/v1/do-not-call", 400, "INVALID_REQUEST", json=["+14155550100"])
    await api.error("DELETE", "/v1/do-not-call/+14155550100", 404, "NOT_FOUND")


async def test_every_new_route_needs_the_token(api: Api) -> None:
    for method, path in [
        ("POST", "/v1/campaigns"),
        ("GET", "/v1/campaigns"),
        ("GET", "/v1/campaigns/x"),
        ("POST", "/v1/campaigns/x/rows"),
        ("GET", "/v1/campaigns/x/errors"),
        ("POST", "/v1/campaigns/x/pause"),
        ("POST", "/v1/do-not-call"),
        ("DELETE", "/v1/do-not-call/+14155550100"),
        ("GET", "/v1/deliveries"),
        ("POST", "/v1/deliveries/replay"),
        ("GET", "/v1/status"),
    ]:
        response = await api.client.request(method, path, headers={"Authorization": "Bearer x"})
        assert response.status == 401, (method, path)


async def test_do_not_call_add_and_remove(api: Api) -> None:
    status, added = await api.call(
        "POST", "/v1/do-not-call", json={"number": "+14155550100", "reason": "asked"}
    )
    assert (status, added) == (201, {"number": "+14155550100", "added": True})
    status, again = await api.call("POST", "/v1/do-not-call", json={"number": "+14155550100"})
    assert (status, again["added"]) == (200, False)
    await api.call("POST", "/v1/do-not-call", json={"number": "+14155550101"})
    status, page = await api.call("GET", "/v1/do-not-call", params={"limit": 1})
    assert status == 200 and page["next"] == "+14155550100"
    assert [(n["number"], n["reason"]) for n in page["numbers"]] == [("+14155550100", "asked")]
    status, page = await api.call("GET", "/v1/do-not-call", params={"after": page["next"]})
    assert [n["number"] for n in page["numbers"]] == ["+14155550101"] and page["next"] is None
    status, removed = await api.call("DELETE", "/v1/do-not-call/%2B14155550100")
    assert (status, removed) == (200, {"number": "+14155550100", "removed": True})
    status, page = await api.call("GET", "/v1/do-not-call")
    assert [n["number"] for n in page["numbers"]] == ["+14155550101"]


async def test_status_in_process(api: Api) -> None:
    await api.call(
        "POST",
        "/v1/campaigns",
        params={"name": "s"},
        data=b"to\n+14155550100\n",
        headers={"Content-Type": "text/csv"},
    )
    status, body = await api.call("GET", "/v1/status")
    assert status == 200
    assert (body["live"], body["queued"], body["ready"], body["provider"]) == (0, 1, True, "ok")
    assert body["dialing"] == {"paused": False, "reason": None, "until": None, "factor": 1.0}
    assert [c["name"] for c in body["campaigns"]] == ["s"]
    assert set(body["rates"]["per_minute"]) == {
        "placed",
        "placement_errors",
        "webhooks",
        "events",
        "dead_letters",
    }
    assert body["rates"]["window_seconds"] >= 0


# -- a real daemon -----------------------------------------------------------------------------


class Live:
    def __init__(self, sim: SimulatorProcess, daemon: DaemonProcess) -> None:
        self.sim = sim
        self.daemon = daemon
        self.http = daemon.api()

    def placed(self, numbers: set[str]) -> list[dict[str, Any]]:
        return [c for c in self.sim.calls() if c["to"] in numbers]

    def campaign_calls(self, campaign_id: str) -> list[dict[str, Any]]:
        answer = self.http.get("/v1/calls", params={"campaign": campaign_id, "limit": 1000})
        assert answer.status_code == 200, answer.text
        return list(answer.json()["calls"])

    def wait(self, what: str, predicate: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            assert self.daemon.alive, self.daemon.log_tail()
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.daemon.log_tail()}")

    def import_csv(
        self, name: str, body: str, settings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        answer = self.http.post(
            "/v1/campaigns",
            params={"name": name},
            content=body.encode(),
            headers={"Content-Type": "text/csv", "X-Campaign-Settings": json.dumps(settings or {})},
        )
        assert answer.status_code == 201, answer.text
        return dict(answer.json())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp_path: Path = tmp_path_factory.mktemp("campaigns")
    # Calls last 0.2 to 2.6 s, two at a time: a campaign of 30 takes a while to dial.
    sim = start_simulator(tmp_path, seed=5, time_scale=0.01)
    cfg = DaemonConfig(
        simulator_url=sim.url,
        store_path=tmp_path / "state.db",
        max_live_calls=2,
        calls_per_second=20,
        max_call_duration="20s",
    )
    daemon = start_daemon(tmp_path, cfg)
    setup = Live(sim, daemon)
    try:
        yield setup
    finally:
        setup.http.close()
        sim.kill()
        daemon.kill()


@pytest.mark.slow
def test_an_import_dials_its_valid_rows_and_reports_the_others(live: Live) -> None:
    good = destinations(5, start=2000)
    body = (
        "phone,metadata.name,notes\n"  # line 1
        f"{good[0]},Ann,plain\n"  # 2
        f'{good[1]},Bob,"two\nlines"\n'  # 3-4
        "+1415555,Cy,short\n"  # 5
        f'{good[2]},"Dee ""D""",x\n'  # 6
        "415-555-2003,Eve,dashes\n"  # 7
        f"{good[3]},Fay\n"  # 8: a field short
        f"{good[3]},Fay,again\n"  # 9
        f"{good[4]},Gus,x\n"  # 10
    )
    answer = live.import_csv("import", body, {"purpose": "Reminder", "max_attempts": 1})
    done = answer["import"]
    assert (done["rows"], done["queued"], done["invalid"]) == (8, 5, 3)
    assert [e["line"] for e in done["errors"]] == [5, 7, 8]
    assert done["ignored_columns"] == ["notes"]
    campaign_id = answer["campaign"]["id"]

    def finished() -> list[dict[str, Any]] | None:
        calls = live.campaign_calls(campaign_id)
        return calls if len(calls) == 5 and all(c["status"] in TERMINAL for c in calls) else None

    calls = live.wait("the campaign's calls to end", finished)
    assert sorted(c["to"] for c in calls) == sorted(good)
    assert {c["purpose"] for c in calls} == {"Reminder"}
    placed = live.placed(set(good))
    assert sorted(c["to"] for c in placed) == sorted(good)
    by_to = {c["to"]: c for c in placed}
    assert by_to[good[2]]["metadata"]["name"] == 'Dee "D"'
    shown = live.http.get(f"/v1/campaigns/{campaign_id}").json()
    assert shown["rows"] == {"total": 8, "invalid": 3} and shown["dialed"] == 5
    assert shown["progress"]["calls"] == 5 and shown["progress"]["attempts"] == 5
    errors = live.http.get(f"/v1/campaigns/{campaign_id}/errors").json()["errors"]
    assert [e["line"] for e in errors] == [5, 7, 8]


@pytest.mark.slow
def test_pause_resume_and_cancel(live: Live) -> None:
    numbers = destinations(30, start=1000)
    wanted = set(numbers)
    answer = live.import_csv("pausable", "to\n" + "\n".join(numbers) + "\n")
    campaign_id = answer["campaign"]["id"]
    path = f"/v1/campaigns/{campaign_id}"
    live.wait("three dials", lambda: len(live.placed(wanted)) >= 3)
    paused = live.http.post(path + "/pause", json={"reason": "lunch"})
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    time.sleep(1.0)  # a claim made before the pause is placed
    stopped = len(live.placed(wanted))
    time.sleep(2.0)
    assert len(live.placed(wanted)) == stopped < 30
    assert live.http.get(path).json()["progress"]["by_status"].get("queued", 0) > 0

    resumed = live.http.post(path + "/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "active"
    live.wait("dials after resume", lambda: len(live.placed(wanted)) > stopped + 1)

    canceled = live.http.post(path + "/cancel")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["progress"]["by_status"]["canceled"] > 0
    time.sleep(1.0)
    after_cancel = {c["to"] for c in live.placed(wanted)}
    time.sleep(1.5)
    assert {c["to"] for c in live.placed(wanted)} == after_cancel, "dialled after cancel"

    def finished() -> list[dict[str, Any]] | None:
        calls = live.campaign_calls(campaign_id)
        return calls if all(c["status"] in TERMINAL for c in calls) else None

    calls = live.wait("the campaign's calls to end", finished)
    assert len(calls) == 30
    for call in calls:
        if call["to"] in after_cancel:  # was live (or placed): it finished as the provider said
            assert call["status"] != "canceled", call
        else:
            assert (call["status"], call["reason"]) == ("canceled", "CAMPAIGN_CANCELED"), call
    assert live.http.post(path + "/resume").status_code == 409


@pytest.mark.slow
def test_do_not_call_refuses_the_number(live: Live) -> None:
    [number] = destinations(1, start=3000)
    added = live.http.post("/v1/do-not-call", json={"number": number, "reason": "asked us"})
    assert added.status_code == 201, added.text

    def call(number: str) -> dict[str, Any]:
        queued = live.http.post("/v1/calls", json={"to": number})
        assert queued.status_code == 202, queued.text
        call_id = queued.json()["id"]

        def ended() -> dict[str, Any] | None:
            shown = dict(live.http.get(f"/v1/calls/{call_id}").json())
            return shown if shown["status"] in TERMINAL else None

        return dict(live.wait("the call to end", ended))

    refused = call(number)
    assert refused["status"] == "rejected"
    assert refused["attempts"][-1]["error"]["code"] == "DO_NOT_CALL"
    assert live.placed({number}) == []
    removed = live.http.delete(f"/v1/do-not-call/{number}")
    assert removed.status_code == 200, removed.text
    assert call(number)["status"] != "rejected"
    assert len(live.placed({number})) == 1


@pytest.mark.slow
def test_status_of_a_running_daemon(live: Live) -> None:
    [number] = destinations(1, start=3100)
    assert live.http.post("/v1/calls", json={"to": number}).status_code == 202
    live.wait("a placement", lambda: live.placed({number}))
    status = live.http.get("/v1/status")
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["ready"] is True and body["provider"] == "ok" and body["store"] == "ok"
    assert body["dialing"]["paused"] is False
    assert isinstance(body["live"], int) and isinstance(body["queued"], int)
    assert body["totals"]["placements"]["placed"] >= 1
    assert sum(body["totals"]["events"].values()) >= 1


class Refusing(Recorder):
    """A handler endpoint that answers 400 (a permanent failure) while ``refuse`` is set."""

    refuse = True

    async def _handle(self, request: web.Request) -> web.Response:
        if not self.refuse:
            return await super()._handle(request)
        await request.read()
        return web.json_response({"error": "no"}, status=400)


@pytest.fixture
async def refusing() -> AsyncIterator[Refusing]:
    recorder = Refusing()
    await recorder.start()
    yield recorder
    await recorder.stop()


@pytest.mark.slow
async def test_a_dead_letter_is_listed_and_replayed(tmp_path: Path, refusing: Refusing) -> None:
    sim = start_simulator(tmp_path, seed=7, time_scale=0.002)
    cfg = DaemonConfig(
        simulator_url=sim.url,
        store_path=tmp_path / "state.db",
        plugins={"audit": {"use": "http", "url": refusing.url}},
        rules=[{"name": "audit queued", "on": "call.queued", "do": "audit"}],
    )
    daemon = DaemonProcess(tmp_path, cfg)
    try:
        daemon.start()
        await daemon.await_ready()
        async with daemon.async_api() as api:
            [number] = destinations(1, start=3200)
            queued = await api.post("/v1/calls", json={"to": number})
            call_id = queued.json()["id"]
            dead: list[dict[str, Any]] = []
            deadline = time.monotonic() + 20
            while not dead:
                assert time.monotonic() < deadline, daemon.log_tail()
                await asyncio.sleep(0.1)
                listed = await api.get(
                    "/v1/deliveries", params={"state": "dead", "route": "audit queued"}
                )
                dead = listed.json()["deliveries"]
            [letter] = dead
            assert letter["call_id"] == call_id and letter["state"] == "dead"
            assert letter["route"] == "audit queued" and letter["tries"] == 1
            assert "400" in letter["last_error"]
            refusing.refuse = False
            replayed = await api.post("/v1/deliveries/replay", json={"ids": [letter["id"], "nope"]})
            assert replayed.status_code == 200, replayed.text
            assert replayed.json() == {
                "replayed": 1,
                "ids": [letter["id"]],
                "skipped": ["nope"],
                "more": False,
            }
            while not refusing.accepted:
                assert time.monotonic() < deadline + 10, daemon.log_tail()
                await asyncio.sleep(0.1)
            assert refusing.accepted[0]["id"] == letter["event_id"]
            still = await api.get("/v1/deliveries", params={"state": "dead"})
            assert still.json()["deliveries"] == []
            done = (await api.get("/v1/deliveries", params={"state": "done"})).json()
            assert [d["id"] for d in done["deliveries"]] == [letter["id"]]
            again = await api.post("/v1/deliveries/replay", json={"all_dead": True})
            assert again.json()["replayed"] == 0
    finally:
        daemon.kill()
        sim.kill()
