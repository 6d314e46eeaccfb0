"""The ``hubspot`` handler: logs each finished call as a HubSpot call engagement (CRM v3).

Route terminal events to it (``call.completed``, ``call.no_answer``...; other events are
skipped). Each becomes one ``POST /crm/v3/objects/calls``: title, an HTML body with the
outcome and the transcript, direction OUTBOUND, status, duration, both numbers, the recording
(HubSpot takes only https links) and an association (type 194, call to contact) with the
contact whose id is in the call's metadata under ``contact_id_key``. Without one, the call is
logged unassociated, or, with ``match_contact_by_phone``, associated with the one contact
whose ``phone`` or ``mobilephone`` equals the number dialled (none if several match).

Exactly one engagement per event, however often it is delivered: the engagement id is kept in
``ctx.kv`` under the event id and checked first. A create that HubSpot applied but whose
answer was lost (a timeout, a crash before the kv write) leaves no kv entry; so a later try
(``ctx.attempt > 1``) first searches HubSpot for the event's marker: the title, which ends in
the event id, or with ``dedupe_property`` a custom text property holding it. HubSpot's search
index lags writes by a few seconds; the retry schedule's first wait (5 s) covers that.

Answers: 429 is retried after Retry-After, else after what its ``policyName`` implies (a
second, ten seconds, an hour for the daily limit); 5xx and transport errors are retried; 401
and 403 (a revoked token, missing scopes: every call would fail alike) disable the instance,
so its deliveries wait for a fixed token and a reload instead of dying one by one; any other
4xx, such as a 400 validation error, is permanent and carries HubSpot's message.
"""

from __future__ import annotations

import html
import json
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr, field_validator

from orchestrator import Context, DeliveryError, Event, HandlerGone, Options
from orchestrator.plugin import (
    Duration,
    check,
    check_url,
    effective,
    finite,
    human_duration,
    iso,
    post,
    retry_after,
)

BASE_URL = "https://api.hubapi.com"
CALL_TO_CONTACT = 194
BODY_LIMIT = 60_000
#: Our terminal statuses as HubSpot's hs_call_status values.
STATUS = {
    "completed": "COMPLETED",
    "busy": "BUSY",
    "no_answer": "NO_ANSWER",
    "failed": "FAILED",
    "canceled": "CANCELED",
    "rejected": "FAILED",  # the provider refused to place it
    "timed_out": "FAILED",  # the watchdog ended it
}
#: Seconds to wait on a 429 without Retry-After, by HubSpot's ``policyName``.
POLICY_WAIT = {"SECONDLY": 1.0, "TEN_SECONDLY_ROLLING": 10.0, "DAILY": 3600.0}


class HubSpotOptions(Options):
    """Options of the hubspot handler; ``token`` is a private app's access token."""

    token: SecretStr
    base_url: str = BASE_URL
    contact_id_key: str = "hubspot_contact_id"
    match_contact_by_phone: bool = False
    owner_id: str | None = None
    dedupe_property: str | None = None
    timeout: Duration = 10.0

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value).rstrip("/")

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("the token is empty")
        return value


class HubSpotHandler:
    """Log terminal call events as HubSpot call engagements, once per event."""

    type_name: ClassVar[str] = "hubspot"
    options_model: ClassVar[type[Options]] = HubSpotOptions

    def __init__(self, name: str, options: HubSpotOptions) -> None:
        self.name = name
        self.options = options

    async def handle(self, event: Event, ctx: Context) -> None:
        """Create the engagement for a finished call, unless it exists already."""
        options = effective(ctx.options, self.options)
        status = STATUS.get(event.status or "")
        if status is None or event.type != f"call.{event.status}":
            await ctx.log.adebug("hubspot.skipped", reason="not a finished call")
            return
        key = f"engagement:{event.id}"
        stored = await ctx.kv.get(key)
        if stored is not None:
            await ctx.log.ainfo("hubspot.already_logged", engagement_id=stored.get("id"))
            return
        api = Api(ctx, options, self.name)
        props = properties(event, status, options)
        marker = options.dedupe_property or "hs_call_title"
        if ctx.attempt > 1:
            found = await api.find_call(marker, props[marker])
            if found is not None:
                await ctx.kv.set(key, {"id": found})
                await ctx.log.ainfo("hubspot.found_logged", engagement_id=found)
                return
        contact = await self._contact(api, event, options, ctx)
        created = await api.create_call(props, contact)
        await ctx.kv.set(key, {"id": created})
        await ctx.log.ainfo("hubspot.logged", engagement_id=created, contact_id=contact)

    async def _contact(
        self, api: Api, event: Event, options: HubSpotOptions, ctx: Context
    ) -> str | None:
        value = event.call.metadata.get(options.contact_id_key)
        if value not in (None, ""):
            return str(value)
        if not options.match_contact_by_phone:
            await ctx.log.ainfo("hubspot.no_contact", metadata_key=options.contact_id_key)
            return None
        found = await api.contacts_by_phone(event.call.to)
        if len(found) == 1:
            return found[0]
        await ctx.log.ainfo("hubspot.no_contact", phone_matches=len(found))
        return None


class Api:
    """The few HubSpot CRM requests the handler makes, with its answers mapped to outcomes."""

    def __init__(self, ctx: Context, options: HubSpotOptions, plugin: str) -> None:
        self.ctx = ctx
        self.options = options
        self.plugin = plugin

    async def create_call(self, props: dict[str, str], contact: str | None) -> str:
        """Create the engagement; its id."""
        payload: dict[str, Any] = {"properties": props}
        if contact is not None:
            payload["associations"] = [
                {
                    "to": {"id": contact},
                    "types": [
                        {
                            "associationCategory": "HUBSPOT_DEFINED",
                            "associationTypeId": CALL_TO_CONTACT,
                        }
                    ],
                }
            ]
        body = await self.request("/crm/v3/objects/calls", payload)
        if not body.get("id"):
            # It may exist: the next try searches before creating.
            raise DeliveryError("HubSpot's answer to the create has no id", plugin=self.plugin)
        return str(body["id"])

    async def find_call(self, prop: str, value: str) -> str | None:
        """The id of a call engagement whose ``prop`` equals ``value``, if any."""
        body = await self.request(
            "/crm/v3/objects/calls/search",
            {"filterGroups": [_eq(prop, value)], "properties": [prop], "limit": 1},
        )
        return _ids(body)[0] if _ids(body) else None

    async def contacts_by_phone(self, number: str) -> list[str]:
        """Ids of (at most two) contacts whose phone or mobile phone is ``number``."""
        body = await self.request(
            "/crm/v3/objects/contacts/search",
            {
                "filterGroups": [_eq("phone", number), _eq("mobilephone", number)],
                "properties": ["phone", "mobilephone"],
                "limit": 2,
            },
        )
        return _ids(body)

    async def request(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload``; the JSON answer, or the DeliveryError it calls for."""
        token = self.options.token.get_secret_value()
        response = await post(
            self.ctx,
            self.options.base_url + path,
            plugin=self.plugin,
            service="HubSpot",
            within=self.options.timeout,
            json=payload,
            headers={"authorization": f"Bearer {token}"},
        )
        body = _json(response)
        if response.is_success and body is not None:
            return body
        error = body or {}
        category = str(error.get("category") or error.get("errorType") or "")
        message = str(error.get("message") or response.content[:200].decode("utf-8", "replace"))
        detail = f"{category}: {message}"[:500].replace(token, "**********")
        if response.status_code in (401, 403):
            raise HandlerGone(
                f"HubSpot refused the token (HTTP {response.status_code} {detail})",
                plugin=self.plugin,
            )
        if response.status_code == 429:
            raise DeliveryError(
                f"HubSpot rate limit {error.get('policyName') or ''}: {message}"[:500],
                retry_after=_rate_wait(response, error),
                plugin=self.plugin,
            )
        check(response, plugin=self.plugin, service="HubSpot", detail=detail)
        raise DeliveryError("HubSpot's answer is not a JSON object", plugin=self.plugin)


def properties(event: Event, status: str, options: HubSpotOptions) -> dict[str, str]:
    """The engagement's properties (HubSpot takes every value as a string)."""
    call = event.call
    seconds = finite(event.duration)
    title = f"AI call to {call.to}: {event.status.replace('_', ' ') if event.status else ''}"
    props = {
        "hs_timestamp": iso(event.occurred_at - (seconds or 0.0)) or "",
        "hs_call_title": title if options.dedupe_property else f"{title} [{event.id}]",
        "hs_call_body": body(event),
        "hs_call_direction": "OUTBOUND",
        "hs_call_status": status,
        "hs_call_from_number": call.from_,
        "hs_call_to_number": call.to,
    }
    if seconds is not None:
        props["hs_call_duration"] = str(round(seconds * 1000))
    if event.recording_url and event.recording_url.startswith("https://"):
        props["hs_call_recording_url"] = event.recording_url
    if options.owner_id:
        props["hubspot_owner_id"] = options.owner_id
    if options.dedupe_property:
        props[options.dedupe_property] = event.id
    return props


def body(event: Event) -> str:
    """The engagement's notes, as the HTML HubSpot shows: outcome, reason, transcript."""
    call = event.call
    seconds = finite(event.duration)
    outcome = [str(event.status).replace("_", " ")]
    if seconds is not None:
        outcome.append(human_duration(seconds))
    outcome.append(f"attempt {call.attempt}")
    parts = [f"<p><strong>Outcome:</strong> {html.escape(' · '.join(outcome))}</p>"]
    if call.campaign:
        parts.append(f"<p><strong>Campaign:</strong> {html.escape(call.campaign)}</p>")
    if event.error and (event.error.get("message") or event.error.get("code")):
        reason = str(event.error.get("message") or event.error.get("code"))
        parts.append(f"<p><strong>Reason:</strong> {html.escape(reason)}</p>")
    if event.transcript:
        text = event.transcript.strip()
        if len(text) > BODY_LIMIT:
            text = text[:BODY_LIMIT] + "…"
        lines = "<br>".join(html.escape(line) for line in text.splitlines())
        parts.append(f"<p><strong>Transcript</strong><br>{lines}</p>")
    parts.append(f"<p>Call {html.escape(call.id)} · event {html.escape(event.id)}</p>")
    return "".join(parts)


def _eq(prop: str, value: str) -> dict[str, Any]:
    return {"filters": [{"propertyName": prop, "operator": "EQ", "value": value}]}


def _ids(body: dict[str, Any]) -> list[str]:
    results = body.get("results")
    if not isinstance(results, list):
        return []
    return [str(r["id"]) for r in results if isinstance(r, dict) and r.get("id")]


def _json(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _rate_wait(response: httpx.Response, error: dict[str, Any]) -> float:
    """Seconds to wait after a 429: Retry-After, else the policy's window."""
    header = retry_after(response.headers.get("retry-after"))
    if header is not None:
        return header
    policy = str(error.get("policyName") or "")
    if policy in POLICY_WAIT:
        return POLICY_WAIT[policy]
    interval = response.headers.get("x-hubspot-ratelimit-interval-milliseconds", "")
    return int(interval) / 1000 if interval.isdigit() else 10.0
