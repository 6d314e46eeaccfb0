"""Small real HTTP servers on loopback that answer as Slack and HubSpot do, for the plugin tests.

Each records every request it gets (:class:`Request`) and does the real work a service would
(post the message, create the engagement, search), answering with that service's success and
error shapes. A failure script overrides the next answers of one route::

    slack.script("api", rate_limited_slack(retry_after=1))   # the first post gets a 429
    hubspot.script("create", Answer(502, apply=True))        # created, but the answer is lost
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

Real = Callable[["Request"], Awaitable[web.Response]]


@dataclass(frozen=True)
class Answer:
    """A scripted answer: ``body`` a str is sent as text, anything else as JSON. With
    ``apply`` the server does the real work first and then answers this (a lost answer)."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    apply: bool = False

    def response(self) -> web.Response:
        if isinstance(self.body, str) or self.body is None:
            return web.Response(
                status=self.status, text=self.body or "", headers=dict(self.headers)
            )
        return web.json_response(self.body, status=self.status, headers=dict(self.headers))


@dataclass
class Request:
    """One request as the server received it."""

    route: str
    path: str
    headers: dict[str, str]
    raw: bytes
    at: float
    answered: int = 0

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


class FakeServer:
    """An aiohttp server on 127.0.0.1 and an ephemeral port; subclasses add routes."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.url = ""
        self._scripts: dict[str, deque[Answer]] = {}
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def script(self, route: str, *answers: Answer) -> None:
        """Answer the next requests to ``route`` with ``answers``, in order, then as usual."""
        self._scripts.setdefault(route, deque()).extend(answers)

    def of(self, route: str) -> list[Request]:
        """The requests ``route`` received."""
        return [r for r in self.requests if r.route == route]

    async def start(self) -> Self:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def handler(self, route: str, real: Real) -> Callable[[web.Request], Awaitable[web.Response]]:
        """An aiohttp handler that records the request, then answers from the script or
        ``real``."""

        async def serve(request: web.Request) -> web.Response:
            record = Request(
                route=route,
                path=request.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                raw=await request.read(),
                at=time.monotonic(),
            )
            self.requests.append(record)
            queued = self._scripts.get(route)
            scripted = queued.popleft() if queued else None
            response = await real(record) if scripted is None or scripted.apply else None
            if scripted is not None:
                response = scripted.response()
            assert response is not None
            record.answered = response.status
            return response

        return serve


class Receiver(FakeServer):
    """Any webhook endpoint: ``POST /events`` answers 200 ``{"ok": true}``."""

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/events", self.handler("events", self._accept))

    @property
    def endpoint(self) -> str:
        return f"{self.url}/events"

    async def _accept(self, request: Request) -> web.Response:
        return web.json_response({"ok": True})


# -- Slack -----------------------------------------------------------------------------------


class SlackFake(FakeServer):
    """Slack: incoming webhooks (``POST /services/...``: 200 ``ok``, or a status and a plain
    text error code) and the Web API's ``chat.postMessage`` (200 ``{"ok": ...}``, 429 with
    Retry-After when rate limited). ``messages`` holds what was posted."""

    def __init__(
        self,
        *,
        token: str = "xoxb-1111-2222-fakefakefake",
        channels: Iterable[str] = ("C0CALLS",),
        archived: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.token = token
        self.channels = set(channels)
        self.archived = set(archived)
        self.hook_path = f"/services/T0FAKE/B0FAKE/{secrets.token_hex(12)}"
        self.messages: list[dict[str, Any]] = []

    @property
    def webhook_url(self) -> str:
        return self.url + self.hook_path

    @property
    def api_url(self) -> str:
        return self.url + "/api/chat.postMessage"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/services/{tail:.+}", self.handler("webhook", self._webhook))
        app.router.add_post("/api/chat.postMessage", self.handler("api", self._api))

    async def _webhook(self, request: Request) -> web.Response:
        if request.path != self.hook_path:
            return web.Response(status=404, text="no_service")
        try:
            payload = request.json
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(payload, dict) or not (payload.get("text") or payload.get("blocks")):
            return web.Response(status=400, text="no_text")
        self.messages.append(payload)
        return web.Response(text="ok", content_type="text/html")

    async def _api(self, request: Request) -> web.Response:
        auth = request.headers.get("authorization")
        if not auth:
            return _slack_error("not_authed")
        if auth != f"Bearer {self.token}":
            return _slack_error("invalid_auth")
        try:
            payload = request.json
        except ValueError:
            return _slack_error("invalid_json")
        channel = payload.get("channel")
        if channel in self.archived:
            return _slack_error("is_archived")
        if channel not in self.channels:
            return _slack_error("channel_not_found")
        if not (payload.get("text") or payload.get("blocks")):
            return _slack_error("no_text")
        self.messages.append(payload)
        ts = f"{time.time():.6f}"
        return web.json_response(
            {"ok": True, "channel": channel, "ts": ts, "message": {"text": payload.get("text")}}
        )


def _slack_error(code: str) -> web.Response:
    return web.json_response({"ok": False, "error": code})


def slack_api_error(code: str, status: int = 200, retry_after: float | None = None) -> Answer:
    """A Web API error answer (``{"ok": false, "error": code}``)."""
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return Answer(status, {"ok": False, "error": code}, headers)


def slack_rate_limited(retry_after: float = 1) -> Answer:
    """The Web API's rate limit: HTTP 429, Retry-After, ``ratelimited``."""
    return slack_api_error("ratelimited", 429, retry_after)


def webhook_error(status: int, code: str, retry_after: float | None = None) -> Answer:
    """An incoming webhook's error: a status and a plain text code."""
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return Answer(status, code, headers)


# -- HubSpot ---------------------------------------------------------------------------------

CALL_STATUSES = {
    "BUSY",
    "CALLING_CRM_USER",
    "CANCELED",
    "COMPLETED",
    "CONNECTING",
    "FAILED",
    "IN_PROGRESS",
    "NO_ANSWER",
    "QUEUED",
    "RINGING",
}


class HubSpotFake(FakeServer):
    """HubSpot's CRM v3: create a call (``POST /crm/v3/objects/calls``, 201), search calls and
    contacts (``.../search``, EQ filters, groups ORed). A wrong bearer token gets 401; a bad
    create 400 VALIDATION_ERROR, each in HubSpot's error shape. ``calls`` holds the
    engagements by id."""

    def __init__(
        self, *, token: str = "pat-na1-fake-0000", contacts: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        super().__init__()
        self.token = token
        self.calls: dict[str, dict[str, Any]] = {}
        self.contacts = [dict(c) for c in contacts]
        self._next = 51000

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/crm/v3/objects/calls", self.handler("create", self._create))
        app.router.add_post(
            "/crm/v3/objects/calls/search", self.handler("search_calls", self._search_calls)
        )
        app.router.add_post(
            "/crm/v3/objects/contacts/search",
            self.handler("search_contacts", self._search_contacts),
        )

    def _refused(self, request: Request) -> web.Response | None:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return hubspot_error(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at https://developers.hubspot.com",
            ).response()
        return None

    async def _create(self, request: Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        payload = request.json
        props = payload.get("properties") or {}
        problems = []
        if not props.get("hs_timestamp"):
            problems.append(("hs_timestamp", "REQUIRED", "hs_timestamp is required"))
        status = props.get("hs_call_status")
        if status is not None and status not in CALL_STATUSES:
            problems.append(
                ("hs_call_status", "INVALID_OPTION", f"{status} was not one of the allowed options")
            )
        url = props.get("hs_call_recording_url")
        if url is not None and not str(url).startswith("https://"):
            problems.append(("hs_call_recording_url", "INVALID_URL", "must be a secure https URL"))
        if problems:
            detail = [
                {"isValid": False, "message": m, "error": e, "name": n} for n, e, m in problems
            ]
            return hubspot_error(
                400, "VALIDATION_ERROR", f"Property values were not valid: {json.dumps(detail)}"
            ).response()
        known = {str(c["id"]) for c in self.contacts}
        for association in payload.get("associations") or []:
            types = association.get("types") or []
            target = str(association.get("to", {}).get("id"))
            if target not in known or types != [
                {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}
            ]:
                return hubspot_error(
                    400, "VALIDATION_ERROR", f"One or more associations are invalid: {target}"
                ).response()
        self._next += 1
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        record: dict[str, Any] = {
            "id": str(self._next),
            "properties": {
                **{k: str(v) for k, v in props.items()},
                "hs_object_id": str(self._next),
            },
            "associations": payload.get("associations") or [],
            "createdAt": now,
            "updatedAt": now,
            "archived": False,
        }
        self.calls[record["id"]] = record
        return web.json_response(
            {k: v for k, v in record.items() if k != "associations"}, status=201
        )

    async def _search_calls(self, request: Request) -> web.Response:
        return self._search(request, list(self.calls.values()))

    async def _search_contacts(self, request: Request) -> web.Response:
        return self._search(request, self.contacts)

    def _search(self, request: Request, objects: list[dict[str, Any]]) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        query = request.json
        groups = query.get("filterGroups") or []
        found = [o for o in objects if not groups or any(_matches(o, g) for g in groups)]
        wanted = query.get("properties") or []
        results = [
            {"id": str(o["id"]), "properties": {p: o["properties"].get(p) for p in wanted}}
            for o in found[: int(query.get("limit") or 10)]
        ]
        return web.json_response({"total": len(found), "results": results})


def _matches(obj: Mapping[str, Any], group: Mapping[str, Any]) -> bool:
    for f in group.get("filters") or []:
        assert f["operator"] == "EQ", f"the fake knows EQ only, not {f['operator']}"
        value = obj["properties"].get(f["propertyName"])
        if value is None or str(value).lower() != str(f["value"]).lower():
            return False
    return True


def hubspot_error(status: int, category: str, message: str, **extra: Any) -> Answer:
    """An error in HubSpot's shape."""
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }
    return Answer(status, body)


def hubspot_rate_limited(
    policy: str = "TEN_SECONDLY_ROLLING", retry_after: float | None = 1
) -> Answer:
    """HubSpot's 429: ``errorType`` RATE_LIMIT, the ``policyName``, maybe Retry-After."""
    body = {
        "status": "error",
        "message": "You have reached your ten_secondly_rolling limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": str(uuid.uuid4()),
        "policyName": policy,
        "groupName": "publicapi:private-app-api-ten-secondly:1234567:7654321",
    }
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return Answer(429, body, headers)
