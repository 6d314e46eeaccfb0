"""The ``http`` handler: POSTs each event as JSON to any endpoint, signed per Standard Webhooks.

Signing follows https://www.standardwebhooks.com: ``webhook-id`` (the event id, stable across
redeliveries, so a receiver can drop repeats), ``webhook-timestamp`` (unix seconds of this
try) and ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``. A secret
``whsec_<base64>`` is base64-decoded into the key, as the spec and its reference libraries do;
any other string is used as its UTF-8 bytes (``standardwebhooks.Webhook(secret.encode())``
verifies it: that library base64-decodes every *string* secret, so a plain one must be handed
to it as bytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import ClassVar

import httpx
from pydantic import SecretStr, field_validator

from orchestrator import Context, Event, Options
from orchestrator.plugin import (
    Duration,
    OptionalSecret,
    check,
    check_url,
    effective,
    post,
    snippet,
)

KEY_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: ``whsec_<base64>`` decoded, else the string's UTF-8 bytes."""
    if not secret.startswith(KEY_PREFIX):
        return secret.encode()
    encoded = secret.removeprefix(KEY_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a whsec_ secret must continue in standard base64") from None
    if not key:
        raise ValueError("the whsec_ secret is empty")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class HttpOptions(Options):
    """Options of the http handler. An empty ``secret`` (``${SECRET:-}`` unset) means unsigned."""

    url: str
    secret: OptionalSecret = None
    headers: dict[str, str] = {}
    timeout: Duration = 10.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            signing_key(value.get_secret_value())
        return value


class HttpHandler:
    """POST the event JSON to ``url``.

    2xx is success; 410 disables the instance; 429, 5xx, 408/409/425 and transport errors are
    retried (honouring Retry-After); any other answer is a permanent failure. Each try is
    signed afresh (a receiver rejects old timestamps) with the same ``webhook-id``, which is
    also sent as ``idempotency-key``.
    """

    type_name: ClassVar[str] = "http"
    options_model: ClassVar[type[Options]] = HttpOptions

    def __init__(self, name: str, options: HttpOptions) -> None:
        self.name = name
        self.options = options

    async def handle(self, event: Event, ctx: Context) -> None:
        """Deliver one event."""
        options = effective(ctx.options, self.options)
        body = json.dumps(event.to_json()).encode()
        timestamp = int(time.time())
        headers = httpx.Headers(options.headers)
        headers["content-type"] = "application/json"
        headers["idempotency-key"] = event.id
        headers["webhook-id"] = event.id
        headers["webhook-timestamp"] = str(timestamp)
        if options.secret is not None:
            key = signing_key(options.secret.get_secret_value())
            headers["webhook-signature"] = sign(key, event.id, timestamp, body)
        response = await post(
            ctx,
            options.url,
            plugin=self.name,
            service="the endpoint",
            within=options.timeout,
            content=body,
            headers=headers,
        )
        check(response, plugin=self.name, service="the endpoint", detail=snippet(response, 120))
        await ctx.log.adebug("http.delivered", status=response.status_code)
