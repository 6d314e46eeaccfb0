"""The Magpipe API client: places one outbound call and maps every answer to a result or a
typed error from :mod:`orchestrator.exceptions`.

It speaks both shapes the provider has: the documented one (``to``/``from``, ``call_id``) and the
deployed one (``phone_number``/``caller_id``, ``call_record_id``/``call_sid``).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import httpx
import structlog
from pydantic import SecretStr

from orchestrator import exceptions, phone

DEFAULT_BASE_URL = "https://mtxbiyilvgwhbdptysex.supabase.co"
PLACE_CALL_PATH = "/functions/v1/initiate-bridged-call"

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class CallRequest:
    """One call to place: the seed's body fields. ``from_`` is the caller id (``from``)."""

    to: str
    from_: str
    agent_id: str | None = None
    metadata: Mapping[str, phone.Scalar] = field(default_factory=dict)
    webhook_url: str | None = None
    purpose: str | None = None
    goal: str | None = None
    template_id: str | None = None

    def validate(self) -> CallRequest:
        """Raise :class:`~orchestrator.exceptions.InputError` unless the request may be sent."""
        phone.validate_number(self.to, field="to")
        phone.validate_number(self.from_, field="from")
        phone.validate_metadata(self.metadata)
        return self


@dataclass(frozen=True, kw_only=True)
class PlacedCall:
    """The provider's success answer, whichever shape it came in.

    ``call_id`` is the id the provider's webhooks will name: ``call_id`` in the documented
    shape, ``call_record_id`` (else ``call_sid``) in the deployed one.
    """

    call_id: str
    status: str
    from_number: str | None = None
    to_number: str | None = None
    agent_id: str | None = None
    created_at: datetime | None = None
    call_sid: str | None = None
    agent_call_sid: str | None = None
    call_record_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def queued(self) -> bool:
        """True when the provider holds the call before dialing."""
        return self.status == "queued"


class MagpipeClient:
    """An async client for the Magpipe place-call endpoint over one pooled httpx client.

    The token is kept as a :class:`pydantic.SecretStr`; it appears in no repr, log line or
    exception message, and is scrubbed from error text the provider sends back.
    """

    def __init__(
        self,
        *,
        token: str | SecretStr,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        send_aliases: bool = True,
        max_connections: int = 100,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        self.base_url = base_url.rstrip("/")
        self.send_aliases = send_aliases
        self.timeout = timeout
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def __repr__(self) -> str:
        return f"MagpipeClient(base_url={self.base_url!r}, token='**********')"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections, if this client created them."""
        if self._owns_http:
            await self._http.aclose()

    def body(self, request: CallRequest) -> dict[str, Any]:
        """The JSON body for ``request``; both number spellings when ``send_aliases``."""
        body: dict[str, Any] = {"to": request.to, "from": request.from_}
        if self.send_aliases:
            body["phone_number"] = request.to
            body["caller_id"] = request.from_
        optional = {
            "agent_id": request.agent_id,
            "webhook_url": request.webhook_url,
            "purpose": request.purpose,
            "goal": request.goal,
            "template_id": request.template_id,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if request.metadata:
            body["metadata"] = dict(request.metadata)
        return body

    async def place_call(self, request: CallRequest) -> PlacedCall:
        """Place one call; return the provider's answer or raise a MagpipeError/InputError.

        Invalid input raises before anything is sent. A failure after the request may have
        reached the provider raises :class:`~orchestrator.exceptions.AmbiguousPlacement`.
        """
        body = self.body(request.validate())
        url = self.base_url + PLACE_CALL_PATH
        started = time.perf_counter()
        try:
            response = await self._http.post(
                url,
                json=body,
                headers={"Authorization": f"Bearer {self._token.get_secret_value()}"},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left this process: nothing can have been placed.
            raise exceptions.ConnectFailed(
                f"could not connect to {self.base_url}: {type(exc).__name__}"
            ) from exc
        except httpx.UnsupportedProtocol as exc:
            raise exceptions.ConfigError(f"bad Magpipe base_url {self.base_url!r}") from exc
        except httpx.TransportError as exc:
            # Sent (or partly sent) and then timed out or dropped: the call may be ringing.
            raise exceptions.AmbiguousPlacement(
                f"no answer from the provider after sending ({type(exc).__name__}); "
                "the call may have been placed"
            ) from exc
        latency = time.perf_counter() - started
        try:
            placed = parse_answer(
                response.status_code, response.headers, response.content, secret=self._token
            )
        except exceptions.MagpipeError as exc:
            log.info(
                "magpipe.place_call.failed",
                to=request.to,
                status=response.status_code,
                code=exc.code,
                retry=exc.retry.value,
                latency=round(latency, 4),
            )
            raise
        log.debug(
            "magpipe.place_call",
            to=request.to,
            provider_call_id=placed.call_id,
            provider_status=placed.status,
            latency=round(latency, 4),
        )
        return placed


def parse_answer(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    secret: SecretStr | None = None,
) -> PlacedCall:
    """Map one HTTP answer of the place-call endpoint to a PlacedCall or raise its error.

    The decision is by ``error.code`` first (case-insensitive, with the deployed aliases), and
    by HTTP status only where the body names no known code.
    """
    data: Any
    try:
        data = json.loads(content) if content else None
    except ValueError:
        data = None
    if 200 <= status < 300 and isinstance(data, dict) and "error" not in data:
        placed = _placed(data)
        if placed is not None and data.get("success", True) is not False:
            return placed
        raise exceptions.AmbiguousPlacement(
            "success answer without a call id; the call may have been placed", status=status
        )
    code, message = _error_fields(data, content)
    message = _scrub(message, secret)
    if code is not None:
        refusal = exceptions.REFUSALS.get(code.lower())
        if refusal is not None:
            raise refusal(message, status=status, provider_code=code)
    if status == 429:
        raise exceptions.RateLimited(
            message or "rate limited",
            status=status,
            retry_after=retry_after(headers.get("retry-after")),
            provider_code=code,
        )
    if status in (408, 503):
        raise exceptions.ServiceUnavailable(
            message or "service unavailable",
            status=status,
            retry_after=retry_after(headers.get("retry-after")),
            provider_code=code,
        )
    if status >= 500 or 200 <= status < 300:
        # A 500/502/504 may come after the provider started the call; never assume it did not.
        raise exceptions.AmbiguousPlacement(
            f"provider error{_named(code)}: {message}; the call may have been placed",
            status=status,
            provider_code=code,
        )
    raise exceptions.UnexpectedRefusal(
        f"provider refused the request{_named(code)}: {message}",
        status=status,
        provider_code=code,
    )


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _placed(data: Mapping[str, Any]) -> PlacedCall | None:
    call_id = data.get("call_id") or data.get("call_record_id") or data.get("call_sid")
    if not isinstance(call_id, str) or not call_id:
        return None

    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    return PlacedCall(
        call_id=call_id,
        status=text("status") or "initiated",
        from_number=text("from_number"),
        to_number=text("to_number"),
        agent_id=text("agent_id"),
        created_at=_timestamp(data.get("created_at")),
        call_sid=text("call_sid"),
        agent_call_sid=text("agent_call_sid"),
        call_record_id=text("call_record_id"),
        raw=dict(data),
    )


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _error_fields(data: Any, content: bytes) -> tuple[str | None, str]:
    """(code, message) from ``{"error": {"code", "message"}}``, ``{"error": "text"}`` or a
    body that is not JSON at all."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            message = error.get("message")
            return (
                code if isinstance(code, str) and code else None,
                message if isinstance(message, str) else json.dumps(error)[:300],
            )
        if isinstance(error, str):
            return None, error[:300]
        message = data.get("message")
        if isinstance(message, str):
            return None, message[:300]
        return None, json.dumps(data)[:300]
    snippet = content[:200].decode("utf-8", "replace").strip()
    return None, f"body is not a JSON error object: {snippet!r}" if snippet else "empty body"


def _named(code: str | None) -> str:
    return f" {code!r}" if code else ""


def _scrub(text: str, secret: SecretStr | None) -> str:
    # A provider that echoes the bad token in its message must not leak it into our logs.
    if secret is not None:
        value = secret.get_secret_value()
        if value and value in text:
            text = text.replace(value, "**********")
    return text
