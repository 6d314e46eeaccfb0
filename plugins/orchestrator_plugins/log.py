"""The ``log`` handler: writes each event to the daemon's structured log."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import field_validator

from orchestrator import Context, Event, Options
from orchestrator.plugin import effective


class LogOptions(Options):
    """Options of the log handler: the level of its lines (a rule may pick another)."""

    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class LogHandler:
    """Log every event it receives with the call's outcome fields (``ctx.log`` already carries
    the call id, event id and event type)."""

    type_name: ClassVar[str] = "log"
    options_model: ClassVar[type[Options]] = LogOptions

    def __init__(self, name: str, options: LogOptions) -> None:
        self.name = name
        self.options = options

    async def handle(self, event: Event, ctx: Context) -> None:
        """Write one line for ``event``."""
        options = effective(ctx.options, self.options)
        call = event.call
        fields = {
            "event_id": event.id,
            "call_id": call.id,
            "to": call.to,
            "campaign": call.campaign,
            "attempt": call.attempt,
            "provider_call_id": call.provider_call_id,
            "status": event.status,
            "duration": event.duration,
            "recording_url": event.recording_url,
            "error": dict(event.error) if event.error else None,
        }
        await ctx.log.alog(_LEVELS[options.level], event.type, **fields)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
