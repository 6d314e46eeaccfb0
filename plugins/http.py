"""The ``http`` handler: POSTs each event as JSON to any endpoint."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import ClassVar

import httpx
from pydantic import SecretStr

from orchestrator import client
from orchestrator.model import Event
from orchestrator.plugin import Context, DeliveryError, Options


class HttpOptions(Options):
    """Options of the http handler."""

    url: str
    secret: SecretStr | None = None
    headers: dict[str, str] = {}


class HttpHandler:
    """POST the event JSON to ``url``; any 2xx is success, anything else is retried.

    With a ``secret``, the body is signed: ``x-orchestrator-signature: sha256=<hex HMAC>``.
    The event id is sent as ``idempotency-key`` so the receiver can drop redeliveries.
    """

    type_name: ClassVar[str] = "http"
    options_model: ClassVar[type[Options]] = HttpOptions

    def __init__(self, name: str, options: HttpOptions) -> None:
        self.name = name
        self.options = options

    async def handle(self, event: Event, ctx: Context) -> None:
        """Deliver one event."""
        body = json.dumps(event.to_json()).encode()
        headers = {
            "content-type": "application/json",
            "idempotency-key": event.id,
            **self.options.headers,
        }
        if self.options.secret is not None:
            digest = hmac.new(
                self.options.secret.get_secret_value().encode(), body, hashlib.sha256
            ).hexdigest()
            headers["x-orchestrator-signature"] = f"sha256={digest}"
        try:
            response = await ctx.http.post(self.options.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise DeliveryError(
                f"{type(exc).__name__} posting to the endpoint", plugin=self.name
            ) from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryError(
                f"endpoint answered HTTP {response.status_code}",
                retry_after=client.retry_after(response.headers.get("retry-after")),
                plugin=self.name,
            )
