"""The ``slack`` handler: posts a readable Block Kit summary of each event to Slack.

Two modes, exactly one per instance: an incoming webhook (``webhook_url``, which names its
channel) or a bot token with a channel (``token`` + ``channel``, through ``chat.postMessage``;
a rule may pick another channel with ``with: {channel: ...}``). The token and the webhook URL
are secrets: they appear in no log line, error message or repr.

How Slack's answers map to delivery outcomes:

* rate limited (HTTP 429, ``ratelimited``), Slack-side trouble (5xx, ``internal_error``...)
  and transport errors are retried, after Retry-After when Slack gives one;
* credentials or a webhook that are dead for every message (``invalid_auth``,
  ``token_revoked``, ``account_inactive``, ``missing_scope``...; a webhook answering
  ``no_service``/``no_team``/``invalid_token``/``channel_not_found`` or 410
  ``channel_is_archived``: the webhook is bound to that channel) raise :class:`HandlerGone`:
  the instance is disabled with one ``handler.disabled`` event and its deliveries wait, so a
  fixed config and a reload deliver the backlog instead of dead-lettering every message;
* anything else is this message's fault (``invalid_payload``, ``invalid_blocks``, and with a
  token ``channel_not_found``/``is_archived``/``not_in_channel``: the channel may be one
  rule's, other rules of the instance still work): permanent, the delivery is dead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import model_validator

from orchestrator import Context, DeliveryError, Event, HandlerGone, Options
from orchestrator.plugin import (
    Duration,
    OptionalSecret,
    check,
    check_url,
    effective,
    human_duration,
    post,
    retry_after,
    snippet,
)

API_URL = "https://slack.com/api/chat.postMessage"
EXCERPT = 300

#: Incoming-webhook answers meaning the webhook itself is dead for every message.
WEBHOOK_GONE = frozenset(
    {"no_service", "no_team", "team_disabled", "invalid_token", "channel_not_found",
     "channel_is_archived", "no_active_hooks"}
)  # fmt: skip
#: Web API errors meaning the token is unusable for every message.
TOKEN_GONE = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
     "missing_scope", "no_permission", "not_allowed_token_type", "team_access_not_granted"}
)  # fmt: skip
#: Web API errors worth another try.
TRANSIENT = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
     "request_timeout", "team_added_to_org", "unexpected_answer"}
)  # fmt: skip

EMOJI = {
    "queued": ":inbox_tray:",
    "initiated": ":outbox_tray:",
    "ringing": ":bell:",
    "in_progress": ":studio_microphone:",
    "completed": ":white_check_mark:",
    "busy": ":no_entry:",
    "no_answer": ":telephone_receiver:",
    "failed": ":x:",
    "canceled": ":no_entry_sign:",
    "rejected": ":x:",
    "timed_out": ":hourglass:",
    "retry_scheduled": ":repeat:",
    "retries_exhausted": ":warning:",
    "delivery.exhausted": ":rotating_light:",
    "handler.disabled": ":rotating_light:",
}


class SlackOptions(Options):
    """Options of the slack handler: ``webhook_url``, or ``token`` and ``channel``."""

    webhook_url: OptionalSecret = None
    token: OptionalSecret = None
    channel: str | None = None
    api_url: str = API_URL
    text: str | None = None
    name_key: str = "name"
    timeout: Duration = 10.0

    @model_validator(mode="after")
    def _one_mode(self) -> SlackOptions:
        if (self.webhook_url is None) == (self.token is None):
            raise ValueError(
                "give either webhook_url (an incoming webhook) or token and channel "
                "(a bot token, chat.postMessage), exactly one of the two"
            )
        if self.token is not None and not self.channel:
            raise ValueError("token needs a channel (a channel id like C0123456789, or #name)")
        if self.webhook_url is not None:
            if self.channel:
                raise ValueError(
                    "channel is for token mode: an incoming webhook posts to its own channel"
                )
            check_url(self.webhook_url.get_secret_value())
        check_url(self.api_url)
        return self


class SlackHandler:
    """Post one message per event; see the module docstring for the error mapping."""

    type_name: ClassVar[str] = "slack"
    options_model: ClassVar[type[Options]] = SlackOptions

    def __init__(self, name: str, options: SlackOptions) -> None:
        self.name = name
        self.options = options

    async def handle(self, event: Event, ctx: Context) -> None:
        """Post the message for ``event``."""
        options = effective(ctx.options, self.options)
        payload = message(event, text=options.text, name_key=options.name_key)
        if options.webhook_url is not None:
            await self._webhook(ctx, options, payload)
        else:
            await self._api(ctx, options, payload)
        await ctx.log.adebug("slack.posted")

    async def _webhook(self, ctx: Context, options: SlackOptions, payload: dict[str, Any]) -> None:
        assert options.webhook_url is not None
        response = await post(
            ctx,
            options.webhook_url.get_secret_value(),
            plugin=self.name,
            service="the Slack webhook",
            within=options.timeout,
            json=payload,
        )
        if response.is_success:
            return
        code = snippet(response, 100)
        if response.status_code in (404, 410) or code in WEBHOOK_GONE:
            raise HandlerGone(
                f"the Slack webhook is gone (HTTP {response.status_code} {code})", plugin=self.name
            )
        check(response, plugin=self.name, service="the Slack webhook", detail=code)

    async def _api(self, ctx: Context, options: SlackOptions, payload: dict[str, Any]) -> None:
        assert options.token is not None
        response = await post(
            ctx,
            options.api_url,
            plugin=self.name,
            service="Slack",
            within=options.timeout,
            json={"channel": options.channel, **payload},
            headers={"authorization": f"Bearer {options.token.get_secret_value()}"},
        )
        error = _api_error(response.content)
        if error in TOKEN_GONE:
            raise HandlerGone(f"Slack refused the token: {error}", plugin=self.name)
        check(response, plugin=self.name, service="Slack", detail=error or snippet(response, 100))
        if error is None:
            return
        if error in TRANSIENT:
            raise DeliveryError(
                f"Slack answered {error}",
                retry_after=retry_after(response.headers.get("retry-after")),
                plugin=self.name,
            )
        raise DeliveryError(f"Slack refused the message: {error}", permanent=True, plugin=self.name)


def _api_error(content: bytes) -> str | None:
    """The Web API's error code (``{"ok": false, "error": ...}``), None when ``ok``; an answer
    that is not a Slack JSON object is ``unexpected_answer`` (retried: a proxy, an outage)."""
    try:
        body = json.loads(content)
    except ValueError:
        return "unexpected_answer"
    if not isinstance(body, dict):
        return "unexpected_answer"
    if body.get("ok") is True:
        return None
    error = body.get("error")
    return error if isinstance(error, str) and error else "unexpected_answer"


def message(event: Event, *, text: str | None = None, name_key: str = "name") -> dict[str, Any]:
    """The Block Kit message for ``event``: ``text`` (a rendered template) or a one-line
    summary as the notification fallback, then who, outcome, duration, attempt, a transcript
    excerpt and the recording link."""
    call = event.call
    status = event.status or event.type.removeprefix("call.")
    emoji = EMOJI.get(status, ":telephone_receiver:")
    name = _name(call.metadata, name_key)
    who = call.to + (f" ({name})" if name else "")
    summary = f"{emoji} Call to {escape(who)}: {status.replace('_', ' ')}"
    if event.duration is not None:
        summary += f" after {human_duration(event.duration)}"
    blocks: list[dict[str, Any]] = []
    if text:
        blocks.append(_section(text[:3000]))
    header = f"{emoji} {event.type}" if event.status is None else f"{emoji} Call {status}"
    blocks.append({"type": "header", "text": {"type": "plain_text", "text": header[:150]}})
    fields = [f"*To*\n{escape(who)}", f"*Outcome*\n{emoji} {escape(status)}"]
    if call.campaign:
        fields.append(f"*Campaign*\n{escape(call.campaign)}")
    if event.duration is not None:
        fields.append(f"*Duration*\n{human_duration(event.duration)}")
    fields.append(f"*Attempt*\n{call.attempt}")
    if event.error:
        reason = event.error.get("message") or event.error.get("code")
        if reason:
            fields.append(f"*Reason*\n{escape(str(reason))[:500]}")
    blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]})
    if event.transcript:
        quoted = "\n".join(f">{line}" for line in excerpt(event.transcript).splitlines())
        blocks.append(_section(f"*Transcript*\n{quoted}"))
    if event.recording_url and event.recording_url.startswith(("https://", "http://")):
        blocks.append(_section(f"<{_link(event.recording_url)}|:headphones: Recording>"))
    context = f"call `{call.id}` · {event.type} · event `{event.id}`"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": text or summary, "blocks": blocks}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _name(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return str(value) if value not in (None, "") else None


def escape(text: str) -> str:
    """Text made literal in Slack mrkdwn (``&``, ``<`` and ``>`` are control characters)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str) -> str:
    return url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")


def excerpt(transcript: str, limit: int = EXCERPT) -> str:
    """The first ``limit`` characters of a transcript, escaped, cut at a word."""
    text = transcript.strip()
    if len(text) > limit:
        cut = text[:limit]
        text = (cut.rsplit(" ", 1)[0] if " " in cut[limit // 2 :] else cut).rstrip() + "…"
    return escape(text)
