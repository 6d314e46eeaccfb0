"""The control API's application: bearer-token authentication, the health checks, metrics, and
the routes of :mod:`.calls`, :mod:`.campaigns` and :mod:`.operations`. Every route but the
health checks needs ``Authorization: Bearer <api.token>``. Every error is JSON in one shape
(:func:`.common.error`), aiohttp's own 404 and 405 included."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from orchestrator import config, exceptions
from orchestrator.api.calls import CallRoutes
from orchestrator.api.campaigns import CampaignRoutes
from orchestrator.api.common import MAX_BODY, Handler, error, http_error
from orchestrator.api.dry_run import Plan
from orchestrator.api.operations import OperationsRoutes
from orchestrator.estimate import Limits
from orchestrator.metrics import CONTENT_TYPE_LATEST, Metrics
from orchestrator.store import Store

log = structlog.get_logger(__name__)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The errors aiohttp raises (404 for an unknown path, 405 for a wrong method, ...) in the
    API's JSON error shape. It wraps the authentication, which still answers first: a request
    without the token gets its 401 whatever the path, as before."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error(exc)


class ControlApi:
    """The aiohttp app behind ``api.listen``."""

    def __init__(
        self,
        store: Store,
        *,
        token: str | None,
        defaults: config.Defaults,
        on_queued: Callable[[], None],
        ready: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]],
        metrics: Metrics | None = None,
        plan: Plan | None = None,
    ) -> None:
        self.store = store
        #: The daemon's dialing limits, for the estimate of a dry-run import.
        self.plan = plan or Plan(limits=Limits(calls_per_second=1.0, max_live_calls=5))
        self._token = token.encode() if token else None
        self.defaults = defaults
        self.on_queued = on_queued
        self.ready = ready
        self.metrics = metrics or Metrics()

    def app(self) -> web.Application:
        """The API application."""
        app = web.Application(middlewares=[_json_errors, self._auth], client_max_size=MAX_BODY)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_text)
        for routes in (CallRoutes(self), CampaignRoutes(self), OperationsRoutes(self)):
            routes.register(app)
        return app

    async def metrics_text(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus exposition (behind the API token like the rest)."""
        try:
            body = await self.metrics.render(self.store.gauges)
        except exceptions.StoreError as exc:
            return error(503, "STORE_UNAVAILABLE", str(exc))
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/healthz", "/readyz"):
            return await handler(request)
        if self._token is None:
            return error(403, "API_DISABLED", "set api.token to use the control API")
        # Undecodable header bytes arrive as surrogates: compare them as the bytes they were.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, b"Bearer " + self._token):
            return error(401, "UNAUTHORIZED", "missing or wrong bearer token")
        try:
            return await handler(request)
        except exceptions.StoreError as exc:
            log.error("api.store_failed", error=str(exc))
            return error(503, "STORE_UNAVAILABLE", "the store is unavailable")

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive."""
        return web.json_response({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        """Store and provider usable. It needs no token, so of the store it says only ``ok``
        or ``not ok``, never why (a driver's error may name hosts, users or paths): the
        daemon's log and ``status`` say why. The provider's state is a fixed word."""
        ok, detail = await self.ready()
        if "store" in detail:  # a driver's error text: never to an unauthenticated caller
            detail["store"] = "ok" if detail["store"] == "ok" else "not ok"
        return web.json_response({"ok": ok, **detail}, status=200 if ok else 503)
