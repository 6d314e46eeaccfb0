"""The Magpipe API client: places calls, looks them up and hangs them up, and maps every answer
to a result or a typed error from :mod:`orchestrator.exceptions`.

It speaks both shapes the provider has: the documented one (``to``/``from``, ``call_id``) and the
deployed one (``phone_number``/``caller_id``, ``call_record_id``/``call_sid``). The provider's
records (``get-call``, ``list-calls``) and hang-ups (``terminate-call``) are the deployed
service's: see :class:`ProviderCall` for their status spellings.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import httpx
import structlog
from pydantic import SecretStr

from orchestrator import exceptions, phone
from orchestrator.model import CallStatus
from orchestrator.provider import DEFAULT_BASE_URL

PLACE_CALL_PATH = "/functions/v1/initiate-bridged-call"
GET_CALL_PATH = "/functions/v1/get-call"
LIST_CALLS_PATH = "/functions/v1/list-calls"
TERMINATE_CALL_PATH = "/functions/v1/terminate-call"
#: list-calls answers at most this many records a page.
LIST_PAGE_MAX = 100

# The 500 answers the deployed placement gives after marking its record failed and before any
# phone of the person rings: certain failures, not ambiguous ones.
CERTAIN_FAILURES = (
    "failed to create call record",
    "failed to configure call agent",
    "failed to start agent sip leg",
    "failed to start pstn leg",
)

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
        phone.validate_metadata(self.metadata, limits=False)
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


@dataclass(frozen=True, kw_only=True)
class ProviderCall:
    """The provider's record of one call, from ``get-call`` or ``list-calls``.

    ``status`` is as the provider spelled it; ``state`` is ours (:meth:`CallStatus.from_record`:
    ``in-progress`` with a hyphen is a call not yet answered, ``in_progress`` an answered one),
    None for a spelling we do not know. ``metadata`` is None from ``list-calls``, which sends
    none (and ``get-call`` drops keys starting with ``_``).
    """

    id: str
    status: str
    state: CallStatus | None
    from_number: str | None = None
    to_number: str | None = None
    direction: str | None = None
    duration: float | None = None
    recording_url: str | None = None
    transcript: str | None = None
    summary: str | None = None
    metadata: Mapping[str, Any] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def terminal(self) -> bool:
        """True when the record shows the call over (its first terminal status is the truth)."""
        return self.state is not None and self.state.terminal

    @property
    def answered(self) -> bool:
        """True when somebody answered (then the agent's leg ends with the call)."""
        return self.state is CallStatus.IN_PROGRESS or (
            self.state is CallStatus.COMPLETED and bool(self.duration)
        )


@dataclass(frozen=True, kw_only=True)
class CallPage:
    """One page of ``list-calls``: newest first, ``has_more`` when older ones match too."""

    calls: tuple[ProviderCall, ...]
    total: int | None
    has_more: bool


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
        #: When the key's request budget frees up, if the last answer said it is spent
        #: (``X-RateLimit-Remaining: 0``); None otherwise. The dialer and the reconciler wait.
        self.exhausted_until: float | None = None
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

    async def get_call(self, call_id: str) -> ProviderCall:
        """The provider's record of one call (``get-call``), by its record id.

        Raises CallNotFound when the provider has no such record, LookupFailed when the answer
        did not come or was not understood, and the usual refusals (Unauthorized, RateLimited).
        """
        data = await self._lookup(GET_CALL_PATH, {"call_id": call_id}, "get-call")
        record = _provider_call(data)
        if record is None:
            raise exceptions.LookupFailed("get-call answered without a call record")
        return record

    async def list_calls(
        self,
        *,
        from_date: datetime | None = None,
        to_date: datetime | None = None,
        phone_number: str | None = None,
        status: str | None = None,
        direction: str | None = "outbound",
        limit: int = LIST_PAGE_MAX,
        offset: int = 0,
    ) -> CallPage:
        """One page of the provider's records (``list-calls``), newest first.

        Offsets shift while calls are being placed: page through a time window with
        :meth:`list_window` instead. ``phone_number`` matches either end of a call.
        """
        body: dict[str, Any] = {"limit": max(1, min(limit, LIST_PAGE_MAX)), "offset": offset}
        optional = {
            "from_date": _iso(from_date),
            "to_date": _iso(to_date),
            "phone_number": phone_number,
            "status": status,
            "direction": direction,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        data = await self._lookup(LIST_CALLS_PATH, body, "list-calls")
        rows = data.get("calls")
        if not isinstance(rows, list):
            raise exceptions.LookupFailed("list-calls answered without a calls list")
        calls = tuple(c for c in (_provider_call(r) for r in rows if isinstance(r, dict)) if c)
        total = data.get("total")
        return CallPage(
            calls=calls,
            total=total if isinstance(total, int) and not isinstance(total, bool) else None,
            has_more=data.get("has_more") is True,
        )

    async def list_window(
        self, start: datetime, end: datetime, *, phone_number: str | None = None
    ) -> AsyncIterator[CallPage]:
        """The pages of every record created between ``start`` and ``end``, newest first, paged
        by narrowing the window (each next page ends where the last one's oldest record was
        created) rather than by offset, so calls placed meanwhile shift nothing.

        One request per page, made when the consumer asks for the page: a caller with a request
        budget spends it before each. Records on the edge of two pages come once.
        """
        seen: set[str] = set()
        upper, offset = end, 0
        while True:
            page = await self.list_calls(
                from_date=start, to_date=upper, phone_number=phone_number, offset=offset
            )
            fresh = tuple(c for c in page.calls if c.id not in seen)
            seen.update(c.id for c in fresh)
            yield CallPage(calls=fresh, total=page.total, has_more=page.has_more)
            if not page.has_more or not page.calls:
                return
            oldest = min((c.created_at for c in page.calls if c.created_at), default=None)
            if oldest is None or oldest >= upper:
                # A whole page created in one instant (or no times): step by offset instead.
                offset += len(page.calls)
            else:
                upper, offset = oldest, 0

    async def terminate_call(self, call_id: str) -> bool:
        """Hang a call up (``terminate-call``): True when the provider ended it, False when it
        has no live call by that id (already over, or unknown). ``call_id`` may be the record
        id or either leg's id (the agent's leg of an unanswered call stays up otherwise)."""
        try:
            data = await self._lookup(TERMINATE_CALL_PATH, {"call_id": call_id}, "terminate-call")
        except exceptions.CallNotFound:
            return False
        return data.get("success") is not False

    async def _lookup(self, path: str, body: Mapping[str, Any], name: str) -> dict[str, Any]:
        """POST a look-up or hang-up and return its JSON object, or raise its typed error."""

        def unanswered(kind: str) -> exceptions.MagpipeError:
            # Asking again changes nothing at the provider: safe, unlike a placement.
            return exceptions.LookupFailed(f"{name}: no answer from the provider ({kind})")

        response = await self._post(path, dict(body), unanswered)
        return parse_lookup(
            response.status_code, response.headers, response.content, name, secret=self._token
        )

    async def _post(
        self,
        path: str,
        body: dict[str, Any],
        unanswered: Callable[[str], exceptions.MagpipeError],
    ) -> httpx.Response:
        """POST to the provider with our token; transport errors become ours: ConnectFailed
        (the request never left), ConfigError (a bad base URL), or ``unanswered(kind)`` for a
        request sent and then timed out or dropped."""
        try:
            response = await self._http.post(
                self.base_url + path,
                json=body,
                headers={"Authorization": f"Bearer {self._token.get_secret_value()}"},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left this process: nothing can have happened.
            raise exceptions.ConnectFailed(
                f"could not connect to {self.base_url}: {type(exc).__name__}"
            ) from exc
        except httpx.UnsupportedProtocol as exc:
            raise exceptions.ConfigError(f"bad Magpipe base_url {self.base_url!r}") from exc
        except httpx.TransportError as exc:
            raise unanswered(type(exc).__name__) from exc
        self.exhausted_until = budget_reset(response.headers)
        return response

    async def place_call(self, request: CallRequest) -> PlacedCall:
        """Place one call; return the provider's answer or raise a MagpipeError/InputError.

        Invalid input raises before anything is sent. A failure after the request may have
        reached the provider raises :class:`~orchestrator.exceptions.AmbiguousPlacement`.
        """
        body = self.body(request.validate())
        started = time.perf_counter()

        def unanswered(kind: str) -> exceptions.MagpipeError:
            # Sent (or partly sent) and then timed out or dropped: the call may be ringing.
            return exceptions.AmbiguousPlacement(
                f"no answer from the provider after sending ({kind}); the call may have been placed"
            )

        response = await self._post(PLACE_CALL_PATH, body, unanswered)
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
    if status == 500 and code is None and message.strip().lower().startswith(CERTAIN_FAILURES):
        # The deployed placement marks its record failed and answers so before any leg rings.
        raise exceptions.PlacementFailed(
            f"the provider failed before dialing: {message}; nobody was rung",
            status=status,
            retry_after=retry_after(headers.get("retry-after")),
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


def parse_lookup(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    name: str,
    *,
    secret: SecretStr | None = None,
) -> dict[str, Any]:
    """Map one answer of ``get-call``, ``list-calls`` or ``terminate-call`` to its JSON object,
    or raise: CallNotFound (404, ``not_found``, ``call_not_found``), Unauthorized, RateLimited
    (429, with ``Retry-After``), LookupFailed (5xx, 408, a body that is not a JSON object) or
    UnexpectedRefusal (any other 4xx)."""
    data: Any
    try:
        data = json.loads(content) if content else None
    except ValueError:
        data = None
    if 200 <= status < 300 and isinstance(data, dict) and "error" not in data:
        return data
    code, message = _error_fields(data, content)
    if code is None and isinstance(data, dict) and isinstance(data.get("error"), str):
        # terminate-call: {"success": false, "error": "call_not_found", "message": ...}
        error = data["error"]
        code = error if re.fullmatch(r"[a-z_]{1,40}", error) else None
        detail = data.get("message")
        message = detail[:300] if isinstance(detail, str) else message
    message = _scrub(message, secret)
    lowered = (code or "").lower()
    if status == 404 or lowered in ("not_found", "call_not_found"):
        raise exceptions.CallNotFound(
            f"{name}: {message or 'no such call'}", status=status, provider_code=code
        )
    if status == 401 or lowered == "unauthorized":
        raise exceptions.Unauthorized(f"{name}: {message}", status=status, provider_code=code)
    if status == 429:
        raise exceptions.RateLimited(
            f"{name}: {message or 'rate limited'}",
            status=status,
            retry_after=retry_after(headers.get("retry-after")),
            provider_code=code,
        )
    if status >= 500 or status == 408 or 200 <= status < 300:
        raise exceptions.LookupFailed(
            f"{name}: provider error{_named(code)}: {message}",
            status=status,
            retry_after=retry_after(headers.get("retry-after")),
            provider_code=code,
        )
    raise exceptions.UnexpectedRefusal(
        f"{name}: provider refused the request{_named(code)}: {message}",
        status=status,
        provider_code=code,
    )


def budget_reset(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """When the key's request budget frees up again (epoch seconds), if an answer's
    ``X-RateLimit-Remaining`` says it is spent; None while requests remain (or when the
    provider sends no such headers, as deployed). ``X-RateLimit-Reset`` is read as epoch
    seconds, or as seconds from now when it is too small to be a date."""
    remaining = headers.get("x-ratelimit-remaining")
    if remaining is None:
        return None
    try:
        if float(remaining) > 0:
            return None
        reset = float(headers.get("x-ratelimit-reset", "") or "nan")
    except ValueError:
        return None
    if not math.isfinite(reset):
        return None
    now = time.time() if now is None else now
    # Small values are a delay (a date would be in 1970): at most an hour, whichever it is.
    until = now + reset if reset < 1e9 else reset
    return min(max(until, now), now + 3600.0)


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "inf" or "nan" parse as floats, and would make a wait without end: not a delay.
        return max(0.0, seconds) if math.isfinite(seconds) else None
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

    return PlacedCall(
        call_id=call_id,
        status=_text(data, "status") or "initiated",
        from_number=_text(data, "from_number"),
        to_number=_text(data, "to_number"),
        agent_id=_text(data, "agent_id"),
        created_at=_timestamp(data.get("created_at")),
        call_sid=_text(data, "call_sid"),
        agent_call_sid=_text(data, "agent_call_sid"),
        call_record_id=_text(data, "call_record_id"),
        raw=dict(data),
    )


def _provider_call(data: Mapping[str, Any]) -> ProviderCall | None:
    """A record of get-call or list-calls, or None when it has no id or status."""
    record_id = data.get("id") or data.get("call_id")
    status = data.get("status")
    if not isinstance(record_id, str) or not record_id or not isinstance(status, str):
        return None

    duration = data.get("duration")
    metadata = data.get("metadata")
    return ProviderCall(
        id=record_id,
        status=status,
        state=CallStatus.from_record(status),
        from_number=_text(data, "from_number"),
        to_number=_text(data, "to_number"),
        direction=_text(data, "direction"),
        duration=(
            float(duration)
            if isinstance(duration, int | float)
            and not isinstance(duration, bool)
            and math.isfinite(duration)
            and duration >= 0
            else None
        ),
        recording_url=_text(data, "recording_url"),
        transcript=_text(data, "transcript"),
        summary=_text(data, "call_summary"),
        metadata=dict(metadata) if isinstance(metadata, dict) else None,
        created_at=_timestamp(data.get("created_at")),
        started_at=_timestamp(data.get("started_at")),
        ended_at=_timestamp(data.get("ended_at")),
        raw=dict(data),
    )


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # Microseconds, as the provider's records have them: a bound cut to milliseconds would
    # leave out the records of the instants it cut off (paging by window would skip them).
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _text(data: Mapping[str, Any], key: str) -> str | None:
    """``data[key]`` if it is a string, else None (a field missing or of another type)."""
    value = data.get(key)
    return value if isinstance(value, str) else None


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    # A time without a zone is the provider's UTC (PostgreSQL timestamps without a zone).
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


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
