"""The ``retry`` handler: dial a call again after a busy signal, no answer or a failure.

Route the outcomes worth retrying to it::

    - name: retry busy or unanswered
      on: [call.busy, call.no_answer]
      do: retry
      with: {delay: 10m, backoff: 2, max_attempts: 3}

Attempt ``n`` (1 is the first dial) is followed by attempt ``n + 1`` after
``delay * backoff ** (n - 1)``, never sooner than ``min_gap`` after attempt ``n`` ended, until
``max_attempts`` attempts have been made in all; then ``call.retries_exhausted``. The next
attempt's time is counted from the event, so a redelivered event schedules the same attempt
(and the store schedules it only once).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from orchestrator import Context, Event, Options
from orchestrator.plugin import CallStatus, Duration


class RetryOptions(Options):
    """Options of the retry handler."""

    delay: Duration = Field(default=600.0, description="wait before the 2nd attempt")
    backoff: float = Field(default=2.0, ge=1.0, description="each later wait is this x longer")
    max_attempts: int = Field(default=3, ge=1, le=50, description="attempts in all, the 1st too")
    min_gap: Duration = Field(
        default=60.0, description="never dial the same call again sooner than this"
    )
    max_delay: Duration = Field(default=86400.0, description="cap on any single wait")


class RetryHandler:
    """Schedule the next attempt of a call that ended without reaching anyone."""

    type_name: ClassVar[str] = "retry"
    options_model: ClassVar[type[Options]] = RetryOptions

    def __init__(self, name: str, options: RetryOptions) -> None:
        self.name = name
        self.options = options

    async def handle(self, event: Event, ctx: Context) -> None:
        """Schedule attempt ``n + 1`` or give up after ``max_attempts``."""
        options = ctx.options if isinstance(ctx.options, RetryOptions) else self.options
        if event.status is None or not CallStatus(event.status).terminal:
            ctx.log.warning("retry.not_an_outcome", event_type=event.type)
            return
        attempt = event.call.attempt
        if attempt >= options.max_attempts:
            await ctx.calls.give_up(
                f"{attempt} attempt(s) made, the most max_attempts={options.max_attempts} allows"
            )
            ctx.log.info("retry.exhausted", attempts=attempt)
            return
        wait = min(options.max_delay, options.delay * options.backoff ** (attempt - 1))
        at = event.occurred_at + max(wait, options.min_gap)
        scheduled = await ctx.calls.retry(at=at, reason=event.type)
        if scheduled is not None:
            ctx.log.info("retry.scheduled", attempt=attempt + 1, wait=round(at - event.occurred_at))
