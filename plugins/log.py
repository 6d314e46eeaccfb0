"""The ``log`` handler: writes each event to the daemon's structured log."""

from __future__ import annotations

from typing import ClassVar

from orchestrator.model import Event
from orchestrator.plugin import Context, Options


class LogOptions(Options):
    """Options of the log handler."""

    level: str = "info"


class LogHandler:
    """Log every event it receives, with the call's outcome fields."""

    type_name: ClassVar[str] = "log"
    options_model: ClassVar[type[Options]] = LogOptions

    def __init__(self, name: str, options: LogOptions) -> None:
        self.name = name
        self.level = options.level

    async def handle(self, event: Event, ctx: Context) -> None:
        """Write one line for ``event``."""
        fields = {
            "event_id": event.id,
            "to": event.call.to,
            "attempt": event.call.attempt,
            "status": event.status,
            "duration": event.duration,
            "error": dict(event.error) if event.error else None,
        }
        await ctx.log.alog(_LEVELS.get(self.level, 20), event.type, **fields)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
