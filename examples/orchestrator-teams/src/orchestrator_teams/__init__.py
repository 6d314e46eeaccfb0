"""``teams``: post each call event to a Microsoft Teams channel as an Adaptive Card.

A plugin for magpipe-orchestrator, written against its public API only. Configure an
instance with the channel's incoming webhook (a Teams "Workflows" webhook URL) and route
events to it::

    plugins:
      sales_channel: {use: teams, webhook_url: "${TEAMS_WEBHOOK_URL}"}
    rules:
      - name: tell sales about missed calls
        on: [call.no_answer, call.failed]
        do: sales_channel
        with: {text: "{{ call.metadata.name }} did not pick up (attempt {{ call.attempt }})"}

How the endpoint's answers map to delivery outcomes:

* 2xx: delivered;
* 408, 429, 5xx and transport errors: retried on the delivery schedule, never sooner than the
  endpoint's ``Retry-After``;
* 401, 403, 404, 410: the webhook was removed or its URL is wrong, so every message would fail:
  :class:`HandlerGone` disables the instance (its deliveries wait, none is lost) until the
  daemon restarts, with a fixed config;
* any other answer (400, 413...): this message cannot be sent, the delivery fails for good.

The webhook URL carries its own credentials: it is a secret, never logged or put in an error.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr, field_validator

from orchestrator import Context, DeliveryError, Event, HandlerGone, Options
from orchestrator.plugin import retry_after

__all__ = ["TeamsHandler", "TeamsOptions", "card", "retry_after"]

#: Answers that mean the webhook itself is unusable (for every message, not just this one).
GONE = frozenset({401, 403, 404, 410})
#: Answers worth another try besides 5xx.
RETRYABLE = frozenset({408, 429})


class TeamsOptions(Options):
    """Options of the teams plugin; a rule's ``with`` may set any of them per event."""

    webhook_url: SecretStr = Field(description="the channel's incoming webhook URL")
    title: str | None = Field(default=None, description="the card's title (default: a summary)")
    text: str | None = Field(default=None, description="a paragraph under the title")
    link: str | None = Field(default=None, description="a URL for an 'Open' button")
    timeout: float = Field(default=10.0, gt=0, le=60, description="seconds per request")

    @field_validator("webhook_url")
    @classmethod
    def _https(cls, value: SecretStr) -> SecretStr:
        url = httpx.URL(value.get_secret_value())
        if url.scheme not in ("https", "http") or not url.host:
            raise ValueError("must be an absolute https:// URL")  # the URL itself is not echoed
        return value


class TeamsHandler:
    """Posts one Adaptive Card per event to the instance's Teams webhook."""

    type_name: ClassVar[str] = "teams"
    options_model: ClassVar[type[Options]] = TeamsOptions

    def __init__(self, name: str, options: TeamsOptions) -> None:
        self.name = name
        self.options = options

    async def handle(self, event: Event, ctx: Context) -> None:
        """Post the card for ``event``; raise what the answer calls for (module docstring)."""
        options = ctx.options if isinstance(ctx.options, TeamsOptions) else self.options
        payload = card(event, title=options.title, text=options.text, link=options.link)
        try:
            response = await ctx.http.post(
                options.webhook_url.get_secret_value(), json=payload, timeout=options.timeout
            )
        except httpx.TransportError as exc:
            # Name the failure, never the URL (it is a credential).
            raise DeliveryError(f"{type(exc).__name__} reaching Teams", plugin=self.name) from None
        status = response.status_code
        if response.is_success:
            await ctx.log.ainfo("teams.posted", status=status)
            return
        detail = response.text[:200].strip()
        message = f"Teams answered HTTP {status}" + (f": {detail}" if detail else "")
        if status in GONE:
            raise HandlerGone(message, plugin=self.name)
        if status in RETRYABLE or status >= 500:
            wait = retry_after(response.headers.get("retry-after"))
            raise DeliveryError(message, retry_after=wait, plugin=self.name)
        raise DeliveryError(message, permanent=True, plugin=self.name)


def card(
    event: Event, *, title: str | None = None, text: str | None = None, link: str | None = None
) -> dict[str, Any]:
    """The webhook message for ``event``: an Adaptive Card with a title, an optional paragraph,
    the call's facts, and buttons for the recording and ``link``."""
    call = event.call
    outcome = (event.status or event.type).replace("_", " ")
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": title or f"Call to {call.to}: {outcome}",
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
        }
    ]
    if text:
        body.append({"type": "TextBlock", "text": text, "wrap": True})
    facts = [("To", call.to), ("Outcome", outcome), ("Attempt", str(call.attempt))]
    if call.campaign:
        facts.append(("Campaign", call.campaign))
    if event.duration is not None:
        facts.append(("Duration", f"{round(event.duration)}s"))
    if event.error:
        reason = event.error.get("message") or event.error.get("code")
        if reason:
            facts.append(("Reason", str(reason)[:300]))
    body.append({"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in facts]})
    actions = []
    if event.recording_url and event.recording_url.startswith(("https://", "http://")):
        actions.append({"type": "Action.OpenUrl", "title": "Recording", "url": event.recording_url})
    if link:
        actions.append({"type": "Action.OpenUrl", "title": "Open", "url": link})
    content: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    if actions:
        content["actions"] = actions
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": content,
            }
        ],
    }
