"""Hostile input against a running daemon: the webhook intake and the control API answer every
bad request with a 4xx and a JSON reason, never a 5xx, and keep serving afterwards."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.daemons import (
    API_TOKEN,
    DaemonConfig,
    DaemonProcess,
    Process,
    SimulatorProcess,
    destinations,
    sign,
    start_daemon,
    start_simulator,
)

SECRET = "whsec_hostile_test"


class Setup:
    def __init__(self, sim: SimulatorProcess, daemon: DaemonProcess) -> None:
        self.sim = sim
        self.daemon = daemon
        self.http = httpx.Client(timeout=10.0)
        self.account_url = daemon.webhook_url + "/webhooks/magpipe"

    def post_signed(
        self, body: bytes, *, url: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self.http.post(
            url or self.account_url,
            content=body,
            headers={
                "content-type": "application/json",
                "x-magpipe-signature": sign(SECRET, body),
                **(headers or {}),
            },
        )

    def live_call(
        self, number: str, daemon: DaemonProcess | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Queue a call (on ``daemon``, else the module's) and wait until the simulator has
        placed it: (our id, its record)."""
        daemon = daemon or self.daemon
        with daemon.api() as api:
            answer = api.post("/v1/calls", json={"to": number})
            assert answer.status_code == 202, answer.text
            call_id = answer.json()["id"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            placed = [c for c in self.sim.calls() if c["to"] == number]
            if placed:
                return call_id, placed[0]
            time.sleep(0.05)
        raise AssertionError(f"the simulator never placed {number}\n{daemon.log_tail()}")

    def call(self, call_id: str, daemon: DaemonProcess | None = None) -> dict[str, Any]:
        """``GET /v1/calls/{id}``."""
        with (daemon or self.daemon).api() as api:
            response = api.get(f"/v1/calls/{call_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp_path: Path = tmp_path_factory.mktemp("hostile")
    # A slow simulator: its own webhooks for a call take seconds, so the tests' webhooks act
    # on calls that are still live.
    sim = start_simulator(tmp_path, seed=2, time_scale=5.0, webhook_secret=SECRET)
    cfg = DaemonConfig(
        simulator_url=sim.url,
        store_path=tmp_path / "state.db",
        webhook_secret=SECRET,
        max_call_duration="60s",
    )
    daemon = start_daemon(tmp_path, cfg)
    setup = Setup(sim, daemon)
    yield setup
    setup.http.close()
    Process.kill_all()


@pytest.fixture(scope="module")
def secretless(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> DaemonProcess:
    """A second daemon on the same simulator, with no webhook secret configured (the setup
    fixture's teardown kills it)."""
    tmp_path: Path = tmp_path_factory.mktemp("hostile-secretless")
    cfg = DaemonConfig(
        simulator_url=setup.sim.url, store_path=tmp_path / "state.db", max_call_duration="60s"
    )
    return start_daemon(tmp_path, cfg)


def _assert_json_4xx(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body


def _webhook(call_id: str, status: str = "completed", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event": "call.status_changed",
        "call_id": call_id,
        "status": status,
        "duration": 12,
        "timestamp": "2026-03-01T12:00:00.000Z",
    }
    body.update(extra)
    return body


def _raw(value: Any) -> bytes:
    """JSON with non-ASCII escaped, so that even a lone surrogate ("\\ud800") can be sent."""
    return json.dumps(value).encode()


def _post_json(api: httpx.Client, body: Any) -> httpx.Response:
    return api.post("/v1/calls", content=_raw(body), headers={"content-type": "application/json"})


# -- the webhook intake ------------------------------------------------------------------------


def test_bad_and_missing_signature(setup: Setup) -> None:
    body = _raw(_webhook("00000000-0000-0000-0000-000000000000"))
    bad = setup.http.post(
        setup.account_url,
        content=body,
        headers={"x-magpipe-signature": sign("not-the-secret", body)},
    )
    _assert_json_4xx(bad, 401, "BAD_SIGNATURE")
    missing = setup.http.post(setup.account_url, content=body)
    _assert_json_4xx(missing, 401, "BAD_SIGNATURE")
    # A signature over another body does not carry over.
    other = setup.http.post(
        setup.account_url,
        content=body + b" ",
        headers={"x-magpipe-signature": sign(SECRET, body)},
    )
    _assert_json_4xx(other, 401, "BAD_SIGNATURE")


def test_unknown_per_call_token(setup: Setup) -> None:
    body = _raw(_webhook("00000000-0000-0000-0000-000000000000"))
    url = setup.account_url + "/not-a-token-of-ours"
    _assert_json_4xx(setup.post_signed(body, url=url), 401, "UNKNOWN_TOKEN")
    # Without a signature the token is all there is, and it is unknown.
    other = _raw(_webhook("00000000-0000-0000-0000-000000000001"))
    _assert_json_4xx(setup.http.post(url, content=other), 401, "UNKNOWN_TOKEN")


def test_a_refused_delivery_stays_refused_when_repeated(setup: Setup) -> None:
    body = _raw(_webhook("00000000-0000-0000-0000-000000000002", status="busy"))
    url = setup.account_url + "/another-token-not-of-ours"
    _assert_json_4xx(setup.http.post(url, content=body), 401, "UNKNOWN_TOKEN")
    _assert_json_4xx(setup.http.post(url, content=body), 401, "UNKNOWN_TOKEN")


def test_per_call_url_is_authenticated_by_its_token(setup: Setup) -> None:
    """A documented-dialect provider does not sign: on the per-call URL the token is the proof
    of origin. A signature that is there must still be right."""
    [number] = destinations(1, start=420)
    call_id, placed = setup.live_call(number)
    url = setup.account_url + "/" + placed["webhook_url"].rsplit("/", 1)[1]
    body = _raw(_webhook(placed["id"], status="in-progress"))
    for signature in (sign("not-the-secret", body), sign(SECRET, body + b" "), "", b"\xff\xfe"):
        wrong = setup.http.post(url, content=body, headers={"x-magpipe-signature": signature})
        _assert_json_4xx(wrong, 401, "BAD_SIGNATURE")
    assert "call.in_progress" not in [e["type"] for e in setup.call(call_id)["events"]]

    unsigned = setup.http.post(url, content=body, headers={"content-type": "application/json"})
    assert unsigned.status_code == 200, unsigned.text
    assert unsigned.json()["outcome"] == "applied"
    assert setup.call(call_id)["status"] == "in_progress"


def test_account_url_needs_the_signature(setup: Setup) -> None:
    """The account-level URL has no token: with a secret configured, an unsigned delivery is
    refused even when it names a live call of ours; the same body signed applies."""
    [number] = destinations(1, start=421)
    call_id, placed = setup.live_call(number)
    body = _raw(_webhook(placed["id"], status="busy", duration=0))
    unsigned = setup.http.post(
        setup.account_url, content=body, headers={"content-type": "application/json"}
    )
    _assert_json_4xx(unsigned, 401, "BAD_SIGNATURE")
    assert setup.call(call_id)["status"] in ("queued", "dialing", "initiated", "ringing")

    signed = setup.post_signed(body)
    assert signed.status_code == 200, signed.text
    assert signed.json()["outcome"] == "applied"
    assert setup.call(call_id)["status"] == "busy"


def test_without_a_secret_only_per_call_urls_are_accepted(
    setup: Setup, secretless: DaemonProcess
) -> None:
    """No secret configured: nothing can authenticate the account-level URL, so it refuses
    everything; the per-call URL still works on its token, and a signature there is ignored
    (there is nothing to check it against)."""
    account_url = secretless.webhook_url + "/webhooks/magpipe"
    body = _raw(_webhook("00000000-0000-0000-0000-000000000000"))
    for headers in ({}, {"x-magpipe-signature": sign(SECRET, body)}):
        refused = setup.http.post(account_url, content=body, headers=headers)
        _assert_json_4xx(refused, 401, "UNAUTHENTICATED")
    unknown = setup.http.post(account_url + "/not-a-token-of-ours", content=body)
    _assert_json_4xx(unknown, 401, "UNKNOWN_TOKEN")

    [number] = destinations(1, start=422)
    call_id, placed = setup.live_call(number, daemon=secretless)
    url = account_url + "/" + placed["webhook_url"].rsplit("/", 1)[1]
    body = _raw(_webhook(placed["id"], status="in-progress"))
    answer = setup.http.post(
        url, content=body, headers={"x-magpipe-signature": sign("anything", body)}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "applied"
    assert setup.call(call_id, daemon=secretless)["status"] == "in_progress"
    assert secretless.alive, secretless.log_tail()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(b'{"event": "call.status_changed", "call_id": ', "MALFORMED_JSON", id="json"),
        pytest.param(b"\xff\xfe\x00garbage", "MALFORMED_JSON", id="not-utf8"),
        pytest.param(b"", "MALFORMED_JSON", id="empty"),
        pytest.param(b"[" * 100_000, "MALFORMED_JSON", id="nested-too-deep"),
        pytest.param(b'{"a": ' * 50_000, "MALFORMED_JSON", id="nested-objects"),
        pytest.param(
            b'{"event": "call.status_changed", "call_id": "x", "status": "busy", "duration": NaN}',
            "MALFORMED_JSON",
            id="nan-literal",
        ),
        pytest.param(b'[{"event": "call.status_changed"}]', "INVALID_BODY", id="array"),
        pytest.param(b'"call.status_changed"', "INVALID_BODY", id="string"),
        pytest.param(_raw(_webhook("x", status=3)), "INVALID_BODY", id="status-number"),
        pytest.param(_raw(_webhook("x", duration="twelve")), "INVALID_BODY", id="duration-text"),
        pytest.param(_raw(_webhook("x", duration=[1])), "INVALID_BODY", id="duration-list"),
        pytest.param(_raw(_webhook("x", duration=-5)), "INVALID_BODY", id="negative-duration"),
        pytest.param(_raw(_webhook("x", metadata="m")), "INVALID_BODY", id="metadata-string"),
        pytest.param(_raw(_webhook("", status="ringing")), "INVALID_BODY", id="empty-call-id"),
        pytest.param(_raw(_webhook("x\ud800")), "INVALID_BODY", id="lone-surrogate"),
        pytest.param(_raw(_webhook("x", transcript="\udfff")), "INVALID_BODY", id="surrogate-2"),
        pytest.param(_raw(_webhook("x", duration=True)), "INVALID_BODY", id="duration-bool"),
        pytest.param(_raw(_webhook("x", duration="12")), "INVALID_BODY", id="duration-string"),
        pytest.param(
            b'{"event": "call.status_changed", "call_id": "x", "status": "busy", "duration": 1e999}',
            "INVALID_BODY",
            id="duration-inf",
        ),
        pytest.param(_raw(_webhook("x", status="exploded")), "UNKNOWN_STATUS", id="status"),
        pytest.param(_raw(_webhook("x", status="timed_out")), "UNKNOWN_STATUS", id="ours"),
        pytest.param(_raw({**_webhook("x"), "event": "call.deleted"}), "UNKNOWN_EVENT", id="event"),
        pytest.param(_raw({"call_id": "x", "status": "busy"}), "UNKNOWN_EVENT", id="no-event"),
        pytest.param(
            _raw({"event": "call.completed", "data": {"status": "completed"}}),
            "INVALID_BODY",
            id="deployed-no-id",
        ),
        pytest.param(
            _raw({"event": "call.completed", "data": []}), "INVALID_BODY", id="deployed-data"
        ),
        pytest.param(
            _raw(
                {
                    "event": "call.completed",
                    "data": {"call_record_id": "x", "duration_seconds": "3"},
                }
            ),
            "INVALID_BODY",
            id="deployed-duration-string",
        ),
        pytest.param(
            b'{"event": "call.completed", "data": {"call_record_id": "x", '
            b'"extracted_data": {"amount": -1e400}}}',
            "INVALID_BODY",
            id="deployed-extracted-inf",
        ),
    ],
)
def test_invalid_bodies_are_400(setup: Setup, body: bytes, code: str) -> None:
    _assert_json_4xx(setup.post_signed(body), 400, code)


def test_huge_body_is_413(setup: Setup) -> None:
    padding = "x" * (1 << 20)
    body = _raw(_webhook("x", transcript=padding))
    _assert_json_4xx(setup.post_signed(body), 413, "TOO_LARGE")

    # The same without a Content-Length (chunked): the intake still stops at the limit.
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    chunked = setup.http.post(
        setup.account_url,
        content=chunks(),
        headers={"x-magpipe-signature": sign(SECRET, body)},
    )
    _assert_json_4xx(chunked, 413, "TOO_LARGE")


def test_unknown_call_with_valid_signature_is_404(setup: Setup) -> None:
    documented = _raw(_webhook("11111111-2222-3333-4444-555555555555", status="busy"))
    _assert_json_4xx(setup.post_signed(documented), 404, "UNKNOWN_CALL")
    deployed = _raw(
        {
            "event": "call.completed",
            "timestamp": "2026-03-01T12:00:00.000Z",
            "data": {
                "call_record_id": "11111111-2222-3333-4444-555555555555",
                "caller_number": "+14155559999",
                "service_number": "+16045551234",
                "duration_seconds": 3,
                "status": "completed",
            },
        }
    )
    _assert_json_4xx(setup.post_signed(deployed), 404, "UNKNOWN_CALL")


def test_daemon_keeps_serving_and_a_valid_webhook_applies(setup: Setup) -> None:
    """After all the abuse above, the daemon is alive and a genuine webhook still applies."""
    for _ in range(3):  # abuse once more right before
        _assert_json_4xx(setup.post_signed(b"{nope"), 400, "MALFORMED_JSON")
    health = setup.http.get(setup.daemon.api_url + "/healthz")
    assert health.status_code == 200
    [number] = destinations(1, start=400)
    call_id, placed = setup.live_call(number)
    token = placed["webhook_url"].rsplit("/", 1)[1]

    # Signed, on the per-call URL the daemon gave the provider, with the provider's call id.
    body = _raw(_webhook(placed["id"], status="in-progress"))
    answer = setup.post_signed(body, url=setup.account_url + "/" + token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outcome"] == "applied"
    # The same delivery again changes nothing.
    again = setup.post_signed(body, url=setup.account_url + "/" + token)
    assert again.status_code == 200 and again.json()["outcome"] == "duplicate", again.text
    # The account-level route matches by the provider's call id.
    final = setup.post_signed(_raw(_webhook(placed["id"], status="no-answer", duration=0)))
    assert final.status_code == 200, final.text
    assert final.json()["outcome"] == "applied"
    with setup.daemon.api() as api:
        call = api.get(f"/v1/calls/{call_id}").json()
    assert call["status"] == "no_answer", call
    assert [e["type"] for e in call["events"]][-2:] == ["call.in_progress", "call.no_answer"]
    # Another provider call id on this call's token is refused.
    conflict = setup.post_signed(
        _raw(_webhook("99999999-0000-0000-0000-000000000000", status="busy")),
        url=setup.account_url + "/" + token,
    )
    _assert_json_4xx(conflict, 409, "CONFLICT")
    assert setup.daemon.alive, setup.daemon.log_tail()


def test_wrong_types_for_a_live_call_change_nothing(setup: Setup) -> None:
    """Bad bodies naming a real, live call are refused, and the call is untouched."""
    [number] = destinations(1, start=403)
    call_id, placed = setup.live_call(number)
    token = placed["webhook_url"].rsplit("/", 1)[1]
    provider_id = placed["id"]
    for body, code in [
        (_webhook(provider_id, status=5), "INVALID_BODY"),
        (_webhook(provider_id, status=None), "INVALID_BODY"),
        (_webhook(provider_id, duration=-1), "INVALID_BODY"),
        (_webhook(provider_id, duration="twelve"), "INVALID_BODY"),
        (_webhook(provider_id, transcript="lone \udc80 surrogate"), "INVALID_BODY"),
        (
            b'{"event": "call.completed", "data": {"call_record_id": "%s", '
            b'"extracted_data": {"total": 1e999}}}' % provider_id.encode(),
            "INVALID_BODY",
        ),
        ({**_webhook(provider_id), "call_id": 7}, "INVALID_BODY"),
        (_webhook(provider_id, status="exploded"), "UNKNOWN_STATUS"),
        (_webhook(provider_id, status="queued"), "UNKNOWN_STATUS"),
        ({**_webhook(provider_id), "event": "call.recording_ready"}, "UNKNOWN_EVENT"),
    ]:
        for url in (setup.account_url, setup.account_url + "/" + token):
            raw = body if isinstance(body, bytes) else _raw(body)
            _assert_json_4xx(setup.post_signed(raw, url=url), 400, code)
    with setup.daemon.api() as api:
        call = api.get(f"/v1/calls/{call_id}").json()
    assert call["status"] not in ("completed", "busy", "no_answer", "failed"), call
    assert all(e["status"] in ("queued", "initiated", "ringing") for e in call["events"]), call


@pytest.mark.parametrize(("duration", "start"), [("12", 402), (True, 404)])
def test_wrongly_typed_duration_is_refused_for_a_live_call(
    setup: Setup, duration: Any, start: int
) -> None:
    [number] = destinations(1, start=start)
    _, placed = setup.live_call(number)
    body = _raw(_webhook(placed["id"], status="completed", duration=duration))
    _assert_json_4xx(setup.post_signed(body), 400, "INVALID_BODY")


def test_non_finite_duration_is_refused(setup: Setup) -> None:
    [number] = destinations(1, start=401)
    call_id, placed = setup.live_call(number)
    body = (
        b'{"event": "call.status_changed", "call_id": "%s", "status": "completed", '
        b'"duration": 1e999}' % placed["id"].encode()
    )
    answer = setup.post_signed(body)
    with setup.daemon.api() as api:
        shown = api.get(f"/v1/calls/{call_id}")
    # Whatever the intake did, the API must still speak standard JSON.
    json.loads(shown.text, parse_constant=lambda name: pytest.fail(f"API emitted {name}"))
    _assert_json_4xx(answer, 400, "INVALID_BODY")


# -- the control API ---------------------------------------------------------------------------


def test_api_needs_the_bearer_token(setup: Setup) -> None:
    url = setup.daemon.api_url + "/v1/calls"
    _assert_json_4xx(setup.http.get(url), 401, "UNAUTHORIZED")
    _assert_json_4xx(
        setup.http.get(url, headers={"Authorization": b"Bearer \xff\xfe"}), 401, "UNAUTHORIZED"
    )
    _assert_json_4xx(
        setup.http.get(url, headers={"Authorization": "Bearer wrong"}), 401, "UNAUTHORIZED"
    )
    _assert_json_4xx(
        setup.http.post(url, json={"to": "+14155550500"}, headers={"Authorization": API_TOKEN}),
        401,
        "UNAUTHORIZED",
    )
    assert setup.http.get(setup.daemon.api_url + "/healthz").status_code == 200


# Bodies that are JSON but not a valid call request (the schema refuses them).
# Bodies that are JSON but not a valid call request (the schema refuses them), with the fields
# the answer must name.
SCHEMA_INVALID = [
    pytest.param({"to": 14155550100}, ["to"], id="to-number"),
    pytest.param({}, ["to"], id="no-to"),
    pytest.param({"to": "+14155550100", "metadata": "x"}, ["metadata"], id="metadata-string"),
    pytest.param({"to": "+14155550100", "surprise": 1}, ["surprise"], id="extra-field"),
    pytest.param([{"to": "+14155550100"}], ["body"], id="array"),
    pytest.param({"to": 1, "from": 2, "goal": []}, ["to", "from", "goal"], id="several"),
    pytest.param({"to": "+14155550100", "purpose": "x\ud800"}, ["purpose"], id="surrogate"),
]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param({"to": "+1555"}, "INVALID_PHONE_NUMBER", id="short"),
        pytest.param({"to": "+1 415 555 0100"}, "INVALID_PHONE_NUMBER", id="spaces"),
        pytest.param({"to": "+10005550100"}, "INVALID_PHONE_NUMBER", id="not-dialable"),
        pytest.param({"to": "14155550100"}, "INVALID_PHONE_NUMBER", id="no-plus"),
        pytest.param({"to": "+14155550100", "from": "+1555"}, "INVALID_PHONE_NUMBER", id="from"),
        pytest.param(
            {"to": "+14155550100", "metadata": {"a": {"b": 1}}}, "INVALID_METADATA", id="nested"
        ),
        pytest.param(
            {"to": "+14155550100", "metadata": {"a": [1, 2]}}, "INVALID_METADATA", id="list"
        ),
        pytest.param(
            {"to": "+14155550100", "metadata": {"_orchestrator_attempt": "x"}},
            "INVALID_METADATA",
            id="reserved",
        ),
        pytest.param(
            {"to": "+14155550100", "metadata": {"_orchestrator": "x"}},
            "INVALID_METADATA",
            id="reserved-prefix",
        ),
        *(pytest.param(p.values[0], None, id=p.id) for p in SCHEMA_INVALID),
    ],
)
def test_api_rejects_invalid_calls(setup: Setup, body: Any, code: str | None) -> None:
    with setup.daemon.api() as api:
        before = len(api.get("/v1/calls", params={"limit": 1000}).json()["calls"])
        _assert_json_4xx(_post_json(api, body), 400, code)
        after = len(api.get("/v1/calls", params={"limit": 1000}).json()["calls"])
    assert after == before, "a refused request queued a call"


@pytest.mark.parametrize(("body", "fields"), SCHEMA_INVALID)
def test_api_schema_errors_name_the_field(setup: Setup, body: Any, fields: list[str]) -> None:
    with setup.daemon.api() as api:
        response = _post_json(api, body)
    _assert_json_4xx(response, 400, "INVALID_REQUEST")
    error = response.json()["error"]
    assert error["fields"] == fields, error
    for name in fields:
        assert f"{name}: " in error["message"], error


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"to": ', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
        pytest.param(b"[" * 100_000, id="nested-too-deep"),
        pytest.param(b'{"to": "+14155550100", "metadata": {"n": NaN}}', id="nan-literal"),
    ],
)
def test_api_rejects_malformed_json(setup: Setup, raw: bytes) -> None:
    with setup.daemon.api() as api:
        response = api.post("/v1/calls", content=raw, headers={"content-type": "application/json"})
        _assert_json_4xx(response, 400, "MALFORMED_JSON")


def test_api_other_bad_requests(setup: Setup) -> None:
    with setup.daemon.api() as api:
        _assert_json_4xx(api.get("/v1/calls/no-such-call"), 404, "NOT_FOUND")
        _assert_json_4xx(api.get("/v1/calls", params={"limit": "x"}), 400, "INVALID_REQUEST")
        _assert_json_4xx(api.get("/v1/calls", params={"limit": 0}), 400, "INVALID_REQUEST")
        huge = _raw({"to": "+14155550100", "purpose": "x" * (1 << 20)})
        _assert_json_4xx(
            api.post("/v1/calls", content=huge, headers={"content-type": "application/json"}),
            413,
            "TOO_LARGE",
        )


def test_idempotency_key(setup: Setup) -> None:
    [number, other] = destinations(2, start=410)
    with setup.daemon.api() as api:
        key = {"Idempotency-Key": "order-4711"}
        first = api.post("/v1/calls", json={"to": number, "metadata": {"k": 1}}, headers=key)
        assert first.status_code == 202, first.text
        assert first.json()["created"] is True
        repeat = api.post("/v1/calls", json={"to": number, "metadata": {"k": 1}}, headers=key)
        assert repeat.status_code == 202, repeat.text
        assert repeat.json()["id"] == first.json()["id"]
        assert repeat.json()["created"] is False
        conflict = api.post("/v1/calls", json={"to": other}, headers=key)
        _assert_json_4xx(conflict, 409, "IDEMPOTENCY_CONFLICT")
        conflict = api.post("/v1/calls", json={"to": number, "metadata": {"k": 2}}, headers=key)
        _assert_json_4xx(conflict, 409, "IDEMPOTENCY_CONFLICT")
        too_long = api.post("/v1/calls", json={"to": other}, headers={"Idempotency-Key": "k" * 201})
        _assert_json_4xx(too_long, 400, "INVALID_REQUEST")
        not_utf8 = api.post("/v1/calls", json={"to": other}, headers={"Idempotency-Key": b"k\xff"})
        _assert_json_4xx(not_utf8, 400, "INVALID_REQUEST")
        calls = api.get("/v1/calls", params={"limit": 1000}).json()["calls"]
    assert [c["to"] for c in calls].count(number) == 1
    assert other not in [c["to"] for c in calls]
    # One placement for the key, however often it was sent.
    deadline = time.monotonic() + 15
    while not [c for c in setup.sim.calls() if c["to"] == number]:
        assert time.monotonic() < deadline, setup.daemon.log_tail()
        time.sleep(0.05)
    assert [c["to"] for c in setup.sim.calls()].count(number) == 1


def test_metrics_need_the_token_and_describe_the_daemon(setup: Setup) -> None:
    """``/metrics`` is Prometheus text behind the API token, with the fleet's gauges."""
    [number] = destinations(1, start=480)
    setup.live_call(number)
    anonymous = httpx.get(setup.daemon.api_url + "/metrics", timeout=10)
    assert anonymous.status_code == 401
    deadline = time.monotonic() + 10
    with setup.daemon.api() as api:
        while True:  # the placing POST's answer is recorded just after the simulator saw it
            text = api.get("/metrics").text
            if 'orchestrator_events_total{type="call.initiated"}' in text:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.1)

    def value(name: str) -> float:
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert found, name
        return float(found.group(1))

    assert value("orchestrator_live_calls") >= 1  # the module's other tests may hold some
    placed = value('orchestrator_placements_total{outcome="placed"}')
    assert placed >= 1
    assert value('orchestrator_provider_request_seconds_count{outcome="placed"}') == placed


# -- issue 15, first findings: YAML aliases, /readyz ------------------------------------------

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]
magpipe: {token: x}
"""


def test_yaml_aliases_are_refused_where_they_are() -> None:
    """A few hundred bytes of nested aliases would expand to gigabytes: the first alias is a
    located error, and nothing is expanded."""
    from orchestrator import config

    doc, problems = config.read("bomb.yaml", text=BILLION_LAUGHS, environ={})
    assert doc is None
    [problem] = problems
    assert problem.where == "bomb.yaml:2:8"  # the first *a
    assert "aliases (*a) are not allowed" in problem.message
    plain, none = config.read("plain.yaml", text="magpipe: {token: x}\n", environ={})
    assert plain is not None and none == []


async def test_readyz_says_not_ok_without_saying_why(tmp_path: Any) -> None:
    """/readyz needs no token: a store error's text (hosts, users, paths) stays out of it."""
    from aiohttp.test_utils import TestClient, TestServer

    from orchestrator import config
    from orchestrator.api import ControlApi
    from orchestrator.connectors.sqlite import SQLiteConnector
    from orchestrator.store import Store

    store = Store(SQLiteConnector(f"sqlite://{tmp_path / 'r.db'}"))
    leak = "connection to server at 10.1.2.3, user admin: password authentication failed"

    async def ready() -> tuple[bool, dict[str, Any]]:
        return False, {"store": leak, "provider": "ok"}

    control = ControlApi(
        store, token="t0ken-for-readyz", defaults=config.Defaults(), on_queued=lambda: None,
        ready=ready,
    )  # fmt: skip
    async with TestClient(TestServer(control.app())) as http:
        answer = await http.get("/readyz")
        body = await answer.json()
    assert answer.status == 503 and body == {"ok": False, "store": "not ok", "provider": "ok"}
    assert "10.1.2.3" not in json.dumps(body)


def test_metadata_is_bounded_and_the_answer_names_the_limit() -> None:
    """Metadata is copied into every event and delivery of a call: 40,000 keys, a huge key or
    a huge value are refused with the limit named; within the limits it passes."""
    from orchestrator import exceptions, phone

    with pytest.raises(exceptions.InvalidMetadata, match="40000 keys: at most 100"):
        phone.validate_metadata({f"k{n}": n for n in range(40_000)})
    with pytest.raises(exceptions.InvalidMetadata, match="characters: at most 100"):
        phone.validate_metadata({"k" * 101: 1})
    with pytest.raises(exceptions.InvalidMetadata, match="bytes as JSON: at most 16384"):
        phone.validate_metadata({"note": "x" * 20_000})
    within = {f"k{n}": "v" * 100 for n in range(100)}
    assert phone.validate_metadata(within) == within
    # What the daemon builds (the caller's metadata plus its own key) is not held to them.
    assert (
        len(phone.validate_metadata({**within, "orchestrator_attempt": "a"}, limits=False)) == 101
    )
