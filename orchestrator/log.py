"""Logging setup: structlog, JSON when not on a TTY, secrets scrubbed from every line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "**********"


class Redactor:
    """A structlog processor that replaces every known secret in every string value.

    Secrets are registered once at start-up from the config (tokens, webhook secrets); the
    processor is the last line of defence if one of them slips into an event or a message.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Register more secret values (empty and very short ones are ignored)."""
        for secret in secrets:
            # Very short values would mangle ordinary words and protect nothing.
            if secret and len(secret) >= 4 and secret not in self._secrets:
                self._secrets.append(secret)
        self._secrets.sort(key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        """``value`` with every secret replaced; containers are scrubbed recursively."""
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        return value

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        if not self._secrets:
            return event_dict
        for key, value in event_dict.items():
            event_dict[key] = self.scrub(value)
        return event_dict


def configure(
    *,
    level: str = "info",
    json: bool | None = None,
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
) -> Redactor:
    """Configure structlog (and the stdlib root logger) for the whole process.

    ``json=None`` picks JSON lines unless ``stream`` is a TTY. Returns the redactor so that
    secrets found later (a config reload) can be added to it.
    """
    stream = stream or sys.stderr
    redactor = redactor or Redactor()
    if json is None:
        json = not stream.isatty()
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info if json else _noop,
        redactor,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Library loggers (aiohttp access logs, asyncpg) go through the same scrubbing.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[structlog.stdlib.add_log_level, redactor],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Their INFO chatter (one access line per webhook) would drown ours.
    root.setLevel(max(numeric, logging.WARNING))
    return redactor


def _noop(logger: WrappedLogger, name: str, event_dict: MutableMapping[str, Any]) -> Any:
    return event_dict
