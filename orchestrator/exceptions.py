"""Every error the orchestrator raises, in one tree.

Library errors (httpx, aiohttp, database drivers) are wrapped where they enter, so callers only
ever catch these::

    OrchestratorError                 code, message, call_id, rule, plugin
    ├── ConfigError                   a config file or value is wrong (file, line, key)
    │   ├── InvalidConfig             every problem found, each with its key path
    │   ├── RenderError               a template failed on an event       (templates)
    │   └── DncFileError              a do-not-call file is unreadable    INVALID_DNC_FILE
    ├── InputError                    refused locally: nothing was sent
    │   ├── InvalidNumber             not a valid, dialable E.164 number   INVALID_PHONE_NUMBER
    │   ├── InvalidMetadata           metadata is not a flat JSON object   INVALID_METADATA
    │   ├── UnknownTimeZone           cannot tell the person's local time  UNKNOWN_TIME_ZONE
    │   └── InvalidImport             a campaign file cannot be read       INVALID_IMPORT
    │       └── UnsupportedFormat     neither CSV nor JSON lines           UNSUPPORTED_FORMAT
    ├── DeliveryError                 a handler's delivery failed (retry_after, permanent)
    │   └── HandlerGone               HTTP 410: the handler instance is disabled
    ├── CommandFailed                 a CLI command against the daemon failed (exit status)
    ├── DemoError                     the demo could not run to its end
    │   └── DemoInterrupted           SIGINT or SIGTERM before the campaign ended
    ├── StoreError                    the store (SQLite, PostgreSQL) failed
    │   └── StoreBusy                 no transaction could begin in time (database held)
    ├── IdempotencyConflict           an Idempotency-Key reused for another request
    └── MagpipeError                  the provider's side; status, retry
        ├── ProviderRefused           a definite refusal        retry: POINTLESS
        │   ├── InvalidPhoneNumber    INVALID_PHONE_NUMBER
        │   ├── Unauthorized          UNAUTHORIZED (alias: unauthorized)
        │   ├── InsufficientBalance   INSUFFICIENT_BALANCE (alias: insufficient_credits)
        │   ├── AgentNotFound         AGENT_NOT_FOUND (alias: no_agent_assigned)
        │   ├── NumberNotOwned        NUMBER_NOT_OWNED
        │   ├── CallNotFound          a look-up or hang-up of a call the provider has no record of
        │   └── UnexpectedRefusal     an unknown code, a bare string or a non-JSON 4xx body
        ├── ProviderUnavailable       certainly not placed      retry: SAFE
        │   ├── RateLimited           HTTP 429 (retry_after)
        │   ├── ServiceUnavailable    HTTP 503: refused before processing
        │   ├── ConnectFailed         the request never reached the provider
        │   ├── PlacementFailed       a 500 "Failed to start PSTN leg" (and its three kin): the
        │   │                         provider gave up before any phone rang
        │   └── LookupFailed          a look-up or hang-up got no usable answer: ask again later
        └── AmbiguousPlacement        a call may have been placed   retry: UNSAFE
                                      (timeout or dropped connection after the request was
                                      sent, another 500/502/504, a success without a call id)

``retry`` tells the dialer what a failed placement allows: SAFE means send it again (after
``retry_after`` if set), UNSAFE means never resend it (the person may already be ringing; wait for
a webhook or the watchdog), POINTLESS means the same request will be refused again.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any


class Retry(StrEnum):
    """Whether a failed placement may be sent again."""

    SAFE = "safe"
    UNSAFE = "unsafe"
    POINTLESS = "pointless"


class OrchestratorError(Exception):
    """Root of every orchestrator error; carries a stable ``code`` and optional context."""

    code: str = "ORCHESTRATOR_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        call_id: str | None = None,
        rule: str | None = None,
        plugin: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.call_id = call_id
        self.rule = rule
        self.plugin = plugin

    def context(self) -> dict[str, str]:
        """The context fields that are set, for structured logs."""
        fields = {"call_id": self.call_id, "rule": self.rule, "plugin": self.plugin}
        return {k: v for k, v in fields.items() if v is not None}

    def __str__(self) -> str:
        ctx = " ".join(f"{k}={v}" for k, v in self.context().items())
        return f"{self.code}: {self.message}" + (f" ({ctx})" if ctx else "")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class ConfigError(OrchestratorError):
    """A configuration file or value is invalid; the message names file, line and key."""

    code = "CONFIG_ERROR"


class InvalidConfig(ConfigError):
    """A ConfigError whose problems are data (:attr:`problems`: each with its key path), so a
    caller can report every one, not only the first."""

    def __init__(self, message: str, *, problems: Sequence[Any] = ()) -> None:
        super().__init__(message)
        #: Each a :class:`orchestrator.config.Problem` (kept untyped here: exceptions import
        #: nothing of the project).
        self.problems: list[Any] = list(problems)


class RenderError(ConfigError):
    """A template could not be rendered against an event (the message names its key)."""


class DncFileError(ConfigError):
    """A do-not-call file could not be read, or has lines that are not valid numbers."""

    code = "INVALID_DNC_FILE"

    def __init__(self, message: str, *, problems: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class InputError(OrchestratorError):
    """Input refused by local validation; nothing was sent to the provider."""

    code = "INVALID_INPUT"


class InvalidNumber(InputError):
    """A phone number that is not a valid, dialable E.164 number."""

    code = "INVALID_PHONE_NUMBER"


class InvalidMetadata(InputError):
    """Call metadata that is not a flat JSON object of scalar values."""

    code = "INVALID_METADATA"


class UnknownTimeZone(InputError):
    """We cannot tell what time it is where the person is, so we cannot tell if we may call."""

    code = "UNKNOWN_TIME_ZONE"


class InvalidImport(InputError):
    """A campaign file as a whole cannot be imported (its rows are not looked at)."""

    code = "INVALID_IMPORT"


class UnsupportedFormat(InvalidImport):
    """Neither the Content-Type nor ``format`` names a format we read."""

    code = "UNSUPPORTED_FORMAT"


class DeliveryError(OrchestratorError):
    """A handler's delivery failed.

    ``retry_after`` asks for a minimum wait before the next try (an endpoint's Retry-After);
    ``permanent`` says retrying cannot help (a 4xx that is the request's fault): the delivery
    is dead at once and ``delivery.exhausted`` is emitted.
    """

    code = "DELIVERY_FAILED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
        plugin: str | None = None,
    ) -> None:
        super().__init__(message, plugin=plugin)
        self.retry_after = retry_after
        self.permanent = permanent


class HandlerGone(DeliveryError):
    """The endpoint is gone for good (HTTP 410): the handler instance is disabled, a
    ``handler.disabled`` event says so, and its deliveries wait until it is enabled again
    (a config reload or a restart)."""

    code = "HANDLER_GONE"

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message, permanent=True, plugin=plugin)


class CommandFailed(OrchestratorError):
    """A command against the running daemon did not succeed, with the exit status it calls
    for (the CLI exits with it)."""

    code = "COMMAND_FAILED"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DemoError(OrchestratorError):
    """The demo could not run to its end (the message says why)."""

    code = "DEMO_FAILED"


class DemoInterrupted(DemoError):
    """SIGINT or SIGTERM stopped the daemon before the campaign ended."""

    code = "DEMO_INTERRUPTED"


class StoreError(OrchestratorError):
    """The store failed; the driver's error is the ``__cause__``."""

    code = "STORE_ERROR"


class StoreBusy(StoreError):
    """No transaction could begin in time (another process held the database): nothing was
    written, and trying again at once would wait as long."""

    code = "STORE_BUSY"


class MagpipeError(OrchestratorError):
    """An error on the provider's side of a request: its code, message and HTTP status."""

    code = "MAGPIPE_ERROR"
    retry: Retry = Retry.UNSAFE

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        provider_code: str | None = None,
        call_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code, call_id=call_id)
        self.status = status
        self.retry_after = retry_after
        # The code exactly as the provider spelled it (e.g. ``insufficient_credits``).
        self.provider_code = provider_code

    def __str__(self) -> str:
        http = f" [HTTP {self.status}]" if self.status is not None else ""
        return super().__str__() + http

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"status={self.status!r}, retry={self.retry.value!r})"
        )


class ProviderRefused(MagpipeError):
    """The provider answered with a definite refusal: sending the same request again is
    pointless."""

    code = "PROVIDER_REFUSED"
    retry = Retry.POINTLESS


class InvalidPhoneNumber(ProviderRefused):
    """The provider says the destination is not a valid E.164 number."""

    code = "INVALID_PHONE_NUMBER"


class Unauthorized(ProviderRefused):
    """The access token is invalid or expired."""

    code = "UNAUTHORIZED"


class InsufficientBalance(ProviderRefused):
    """The account balance cannot pay for a call."""

    code = "INSUFFICIENT_BALANCE"


class AgentNotFound(ProviderRefused):
    """The agent does not exist, or no agent is assigned to the caller id."""

    code = "AGENT_NOT_FOUND"


class NumberNotOwned(ProviderRefused):
    """The caller id is not provisioned in the account."""

    code = "NUMBER_NOT_OWNED"


class UnexpectedRefusal(ProviderRefused):
    """A 4xx answer with an unknown code, a bare string error or a body that is not JSON."""

    code = "UNEXPECTED_RESPONSE"


class ProviderUnavailable(MagpipeError):
    """The request certainly placed no call; it is safe to send again."""

    code = "PROVIDER_UNAVAILABLE"
    retry = Retry.SAFE


class RateLimited(ProviderUnavailable):
    """HTTP 429; ``retry_after`` holds the seconds the provider asked us to wait."""

    code = "RATE_LIMITED"


class ServiceUnavailable(ProviderUnavailable):
    """HTTP 503: the provider refused the request before processing it."""

    code = "SERVICE_UNAVAILABLE"


class ConnectFailed(ProviderUnavailable):
    """The connection could not be made, so the request never reached the provider."""

    code = "CONNECT_FAILED"


class PlacementFailed(ProviderUnavailable):
    """The provider answered 500 with one of the failures it reports before any phone of the
    person rings ("Failed to create call record", "... configure call agent", "... start agent
    SIP leg", "... start PSTN leg"): nobody was rung, so the call may be dialed again."""

    code = "PLACEMENT_FAILED"


class LookupFailed(ProviderUnavailable):
    """A look-up or hang-up (get-call, list-calls, terminate-call) got no usable answer: a
    timeout, a dropped connection, a 5xx or a body not understood. Asking changes nothing at
    the provider, so it is safe to ask again later."""

    code = "LOOKUP_FAILED"


class CallNotFound(ProviderRefused):
    """The provider has no record of the call named in a look-up or hang-up."""

    code = "NOT_FOUND"


class AmbiguousPlacement(MagpipeError):
    """The request may have placed a call (timeout or drop after sending, a 5xx that may
    follow processing, a success without an id). Never resend it: resolve it from webhooks or
    the watchdog."""

    code = "AMBIGUOUS"
    retry = Retry.UNSAFE


# Documented codes and the deployed service's aliases, matched case-insensitively.
REFUSALS: dict[str, type[ProviderRefused]] = {
    "invalid_phone_number": InvalidPhoneNumber,
    "unauthorized": Unauthorized,
    "insufficient_balance": InsufficientBalance,
    "insufficient_credits": InsufficientBalance,
    "agent_not_found": AgentNotFound,
    "no_agent_assigned": AgentNotFound,
    "number_not_owned": NumberNotOwned,
}


class IdempotencyConflict(OrchestratorError):
    """An Idempotency-Key was reused for a different request."""

    code = "IDEMPOTENCY_CONFLICT"
