"""Campaigns: many calls imported at once and dialled under shared settings.

A campaign holds what its calls share (caller ids, agent, purpose, calling window, attempts,
priority, share of the dialer, budget). Its rows are written in bulk, a chunk per transaction,
so a million-row import streams through bounded memory. Imported calls do not emit one
``call.queued`` each (the campaign's progress reports them); everything after that is the
ordinary lifecycle.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator import exceptions, phone
from orchestrator.connectors.protocol import Row
from orchestrator.model import Event, NewCall, new_id, new_token
from orchestrator.store.ledger import Ledger
from orchestrator.windows import CallingWindow


class CampaignStatus:
    """A campaign's states: only ``active`` campaigns are dialled. ``completed``: every call
    is final, its handlers are done with them and no import is under way (new rows make it
    ``active`` again); ``canceled`` is for good."""

    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELED = "canceled"

    #: The states a campaign is still working in (``status`` shows only these by default).
    OPEN = ("active", "paused")


#: Seconds an import is taken to be under way after its last chunk (a crashed import stops
#: holding its campaign open after this).
IMPORT_LEASE = 120.0


class CampaignSettings(BaseModel):
    """What a campaign's calls share; row values (``purpose``, ``goal``...) override them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_numbers: tuple[str, ...] = Field(
        default=(), description="caller ids to dial from (the least busy is used)"
    )
    agent_id: str | None = None
    purpose: str | None = None
    goal: str | None = None
    template_id: str | None = None
    window: CallingWindow | None = Field(
        default=None, description="when the recipient may be called, in their local time"
    )
    max_attempts: int | None = Field(default=None, ge=1, le=50)
    priority: int = Field(default=0, ge=-100, le=100)
    share: float = Field(default=1.0, gt=0, description="weight among campaigns dialling at once")
    budget: float | None = Field(
        default=None, ge=0, le=1e12, description="stop when this much is spent"
    )
    price_per_minute: float = Field(
        default=0.0, ge=0, le=1e6, description="for spend and the budget"
    )
    expected_call_minutes: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description="what a call is expected to last until the campaign's own calls tell "
        "(the budget counts live calls at this, then at their average)",
    )

    @field_validator("from_numbers")
    @classmethod
    def _numbers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for number in value:
            phone.validate_number(number, field="from_numbers")
        return value


#: The call statuses between the claim and the final status.
LIVE_STATUSES = frozenset({"dialing", "initiated", "ringing", "in_progress"})

#: The reason a campaign paused for its budget starts with this (a raised budget resumes it).
BUDGET_REACHED = "budget reached"


def call_cost(campaign: Row) -> float:
    """What one more call of ``campaign`` is expected to cost: its own average call length so
    far (every ended call, unanswered ones too), or its ``expected_call_minutes`` before any
    call has ended, at its price per minute."""
    talked = int(campaign["talked"])
    if talked > 0:
        minutes = float(campaign["talk_seconds"]) / talked / 60.0
    else:
        minutes = settings_of(campaign["settings"]).expected_call_minutes
    return minutes * float(campaign["price_per_minute"])


def budget_allows(campaign: Row, live: int = 0) -> bool:
    """Whether ``campaign`` may start one more call: its spend, what its ``live`` calls are
    expected to cost and that call's expected cost stay within its budget (None: no limit)."""
    if campaign["budget"] is None:
        return True
    expected = call_cost(campaign) * (live + 1)
    # A hair of tolerance: spend adds up float fractions of a minute.
    return float(campaign["spent"]) + expected <= float(campaign["budget"]) + 1e-9


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with ``patch`` applied as a JSON merge patch (RFC 7396): objects merge key by
    key, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@functools.lru_cache(maxsize=256)
def settings_of(stored: str) -> CampaignSettings:
    """A campaign row's ``settings`` column, parsed once per distinct value: the claim reads
    it for every candidate, and a frozen model is safe to share."""
    return CampaignSettings.model_validate_json(stored)


@dataclass(frozen=True, kw_only=True)
class RowError:
    """A row of an import that could not become a call: its line and why."""

    line: int
    reason: str


class Campaigns(Ledger):
    """Campaign operations; :class:`~orchestrator.store.Store` builds on it."""

    async def create_campaign(self, name: str, settings: CampaignSettings) -> Row:
        """A new active campaign (no rows yet)."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            row = await tx.fetchone(
                "insert_campaign",
                id=new_id(),
                name=name,
                status=CampaignStatus.ACTIVE,
                settings=settings.model_dump_json(),
                priority=settings.priority,
                share=settings.share,
                budget=settings.budget,
                price_per_minute=settings.price_per_minute,
                now=now,
            )
            await self._notify(tx, "dial")
        assert row is not None
        return row

    async def begin_import(self, campaign_id: str) -> int:
        """Number a new import into the campaign (1, 2, ...): its refused rows are kept
        under it, since every file starts again at line 1."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            row = await tx.fetchone("begin_import", id=campaign_id, now=now)
            if row is not None:
                await tx.execute("start_campaign_import", id=campaign_id, until=now + IMPORT_LEASE)
        if row is None:
            raise exceptions.InputError(f"no campaign {campaign_id}")
        return int(row["imports"])

    async def end_import(self, campaign_id: str) -> None:
        """The import under way has ended (all its chunks are in): the campaign may complete
        once its calls are final."""
        async with self.connector.transaction() as tx:
            await tx.execute("end_campaign_import", id=campaign_id)

    async def import_rows(
        self,
        campaign_id: str,
        calls: Sequence[NewCall],
        errors: Sequence[RowError] = (),
        *,
        import_no: int = 1,
    ) -> None:
        """Queue one chunk of an import (its valid calls and its refused rows) in one
        transaction; the campaign's settings fill what a row leaves out. ``import_no`` (from
        :meth:`begin_import`) says which import the refused rows' lines belong to."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            # Locked: a completion of the campaign waits, then sees these rows.
            campaign = await tx.fetchone("lock_campaign", id=campaign_id)
            if campaign is None:
                raise exceptions.InputError(f"no campaign {campaign_id}")
            if campaign["status"] == CampaignStatus.CANCELED:
                raise exceptions.InputError(f"campaign {campaign_id} is canceled")
            if calls:  # a completed campaign has work again
                await tx.execute("reopen_campaign", id=campaign_id, now=now)
            await tx.execute("extend_campaign_import", id=campaign_id, until=now + IMPORT_LEASE)
            settings = settings_of(campaign["settings"])
            call_rows: list[dict[str, Any]] = []
            attempt_rows: list[dict[str, Any]] = []
            for new in calls:
                call_id = new_id()
                from_number = new.from_ or (settings.from_numbers or ("",))[0]
                call_rows.append(
                    {
                        "id": call_id,
                        "to_number": new.to,
                        "from_number": from_number,
                        "agent_id": new.agent_id or settings.agent_id,
                        "campaign": campaign_id,
                        "metadata": json.dumps(dict(new.metadata), sort_keys=True),
                        "purpose": new.purpose or settings.purpose,
                        "goal": new.goal or settings.goal,
                        "template_id": new.template_id or settings.template_id,
                        "now": now,
                    }
                )
                attempt_rows.append(
                    {
                        "id": new_id(),
                        "call_id": call_id,
                        "to_number": new.to,
                        "from_number": from_number,
                        "webhook_token": new_token(),
                        "priority": settings.priority,
                        "not_before": now,
                        "now": now,
                        "campaign": campaign_id,
                    }
                )
            await tx.executemany("bulk_insert_call", call_rows)
            await tx.executemany("bulk_insert_attempt", attempt_rows)
            await tx.executemany(
                "insert_campaign_error",
                [{"campaign_id": campaign_id, "import_no": import_no, **asdict(e)} for e in errors],
            )
            await tx.execute(
                "count_campaign_rows",
                id=campaign_id,
                total=len(calls) + len(errors),
                invalid=len(errors),
                now=now,
            )
            if calls:
                await self._notify(tx, "dial")

    async def campaign(self, campaign_id: str) -> Row | None:
        """The campaign's row, or None."""
        async with self.connector.transaction() as tx:
            return await tx.fetchone("get_campaign", id=campaign_id)

    async def campaigns(self, *, limit: int = 100, open_only: bool = False) -> list[Row]:
        """Campaigns, newest first; ``open_only``: the active and paused ones."""
        query = "list_open_campaigns" if open_only else "list_campaigns"
        async with self.connector.transaction() as tx:
            return await tx.fetch(query, limit=limit)

    async def campaign_progress(self, campaign_id: str) -> dict[str, Any]:
        """Calls by state, in states that add up to the calls: ``queued`` (first attempt not
        yet made), ``waiting_retry`` (queued again after an attempt), ``live`` (dialing to in
        progress) and each final status; and the attempts made so far (a queued attempt is not
        one)."""
        async with self.connector.transaction() as tx:
            rows = await tx.fetch("campaign_progress", campaign=campaign_id)
        by_status = {str(r["status"]): int(r["calls"]) for r in rows}
        by_state: dict[str, int] = {}
        queued_calls = 0
        for r in rows:
            status, calls = str(r["status"]), int(r["calls"])
            if status == "queued":
                retries = int(r["retries"] or 0)
                queued_calls = calls
                by_state["queued"] = calls - retries
                by_state["waiting_retry"] = retries
            elif status in LIVE_STATUSES:
                by_state["live"] = by_state.get("live", 0) + calls
            else:
                by_state[status] = calls
        return {
            "calls": sum(by_status.values()),
            "by_status": by_status,
            "by_state": {k: v for k, v in by_state.items() if v},
            "attempts": sum(int(r["attempts"] or 0) for r in rows) - queued_calls,
        }

    async def queued_numbers(self, campaign_id: str) -> dict[str, int]:
        """The numbers the campaign still has to dial, with how many calls each."""
        async with self.connector.transaction() as tx:
            rows = await tx.fetch("campaign_queued_numbers", campaign=campaign_id)
        return {str(r["to_number"]): int(r["n"]) for r in rows}

    async def set_campaign(self, campaign_id: str, patch: Mapping[str, Any]) -> Row | None:
        """Change some of a campaign's settings (a JSON merge patch, RFC 7396: nested objects
        such as ``window`` are merged, ``null`` removes a key), validated as at creation, in one
        transaction with the campaign locked (two changes at once both count). Queued calls take
        a new priority at once; a campaign paused for its budget resumes if the new budget pays
        for another call. None if there is no such campaign or it is canceled; pydantic's
        ValidationError (or InputError for a caller id) if the result is not valid."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            row = await tx.fetchone("lock_campaign", id=campaign_id)
            if row is None or row["status"] == CampaignStatus.CANCELED:
                return None
            before = settings_of(row["settings"])
            merged = merge_patch(json.loads(row["settings"]), patch)
            settings = CampaignSettings.model_validate(merged)
            row = await tx.fetchone(
                "set_campaign_settings", id=campaign_id, settings=settings.model_dump_json(),
                priority=settings.priority, share=settings.share, budget=settings.budget,
                price_per_minute=settings.price_per_minute, now=now,
            )  # fmt: skip
            if row is None:
                return None
            if settings.priority != before.priority:
                await tx.execute(
                    "reprioritize_campaign_queue", campaign=campaign_id, priority=settings.priority
                )
            held = row["status"] == CampaignStatus.PAUSED and str(row["reason"] or "").startswith(
                BUDGET_REACHED
            )
            if held and budget_allows(row):
                row = await tx.fetchone(
                    "set_campaign_status", id=campaign_id, status=CampaignStatus.ACTIVE,
                    reason=None, from_a=CampaignStatus.PAUSED, from_b=CampaignStatus.PAUSED,
                    now=now,
                )  # fmt: skip
            await self._notify(tx, "dial")
        return row

    async def finish_campaigns(self) -> list[Event]:
        """Mark ``completed`` each open campaign whose calls are all final, whose handlers are
        done with them (a retry may yet queue one again) and that no import is filling; one
        ``campaign.completed`` each, about its newest call."""
        now = self.clock()
        events: list[Event] = []
        async with self.connector.transaction() as tx:
            for campaign in await tx.fetch("unfinished_campaigns", now=now):
                cid = campaign["id"]
                # Deliveries first: a retry handler queues its call again before its delivery
                # is done, so once none is pending, a call it queued is seen as open below.
                if await tx.fetchone("campaign_pending_delivery", campaign=cid) is not None:
                    continue
                if await tx.fetchone("campaign_open_call", campaign=cid) is not None:
                    continue
                call = await tx.fetchone("campaign_last_call", campaign=cid)
                if call is None:
                    continue  # nothing was ever imported: an empty campaign waits for rows
                # Only if still active and no import began meanwhile (PostgreSQL re-reads the
                # row after waiting for an import's lock).
                done = await tx.fetchone("complete_campaign", id=cid, now=now)
                if done is None:
                    continue
                progress = await tx.fetch("campaign_progress", campaign=cid)
                call, attempt = await self._call_attempt(tx, call["id"], int(call["attempts"]))
                event = await self._emit(
                    tx, call, attempt, None, now=now, type_="campaign.completed",
                    dedupe_key=f"{cid}:campaign.completed:{done['updated_at']}",
                    data={"campaign": cid, "name": campaign["name"],
                          "calls": {str(r["status"]): int(r["calls"]) for r in progress},
                          "spent": round(float(campaign["spent"]), 4)},
                )  # fmt: skip
                if event is not None:
                    events.append(event)
        return events

    async def campaign_errors(
        self, campaign_id: str, *, after: tuple[int, int] = (0, 0), limit: int = 100
    ) -> list[Row]:
        """The rows the campaign's imports refused, by import and line, after the cursor
        ``after`` (an (import, line) pair)."""
        async with self.connector.transaction() as tx:
            return await tx.fetch(
                "list_campaign_errors",
                campaign_id=campaign_id,
                after_import=after[0],
                after_line=after[1],
                limit=limit,
            )

    async def pause_campaign(self, campaign_id: str, *, reason: str) -> Row | None:
        """Stop claiming the campaign's calls (live ones finish); None unless it was active."""
        return await self._set_status(
            campaign_id, CampaignStatus.PAUSED, reason, CampaignStatus.ACTIVE
        )

    async def resume_campaign(self, campaign_id: str) -> Row | None:
        """Dial a paused campaign again; None unless it was paused."""
        return await self._set_status(
            campaign_id, CampaignStatus.ACTIVE, None, CampaignStatus.PAUSED
        )

    async def cancel_campaign(
        self, campaign_id: str, *, reason: str, hangup: bool = False
    ) -> Row | None:
        """End the campaign: its queued and scheduled attempts are canceled (in bulk, without
        one event per call), live calls finish, or with ``hangup`` are looked up once more at
        once and hung up at the provider. None if it was already canceled."""
        now = self.clock()
        async with self.connector.transaction() as tx:
            row = await tx.fetchone(
                "set_campaign_status", id=campaign_id, status=CampaignStatus.CANCELED,
                reason=reason, from_a=CampaignStatus.ACTIVE, from_b=CampaignStatus.PAUSED,
                now=now,
            )  # fmt: skip
            if row is None:
                return None
            await tx.execute("cancel_campaign_calls", campaign=campaign_id, reason=reason, now=now)
            await tx.execute("cancel_campaign_queue", campaign=campaign_id, reason=reason, now=now)
            if hangup:
                await tx.fetch("end_campaign_calls", campaign=campaign_id)
        return row

    async def _set_status(
        self, campaign_id: str, status: str, reason: str | None, was: str
    ) -> Row | None:
        now = self.clock()
        async with self.connector.transaction() as tx:
            row = await tx.fetchone(
                "set_campaign_status", id=campaign_id, status=status, reason=reason,
                from_a=was, from_b=was, now=now,
            )  # fmt: skip
            if row is not None and status == CampaignStatus.ACTIVE:
                await self._notify(tx, "dial")
        return row

    async def add_do_not_call(self, number: str, *, reason: str | None = None) -> bool:
        """Never call ``number`` again (checked at every claim); False if already listed."""
        phone.validate_number(number, field="number")
        async with self.connector.transaction() as tx:
            added = await tx.execute(
                "add_do_not_call", number=number, reason=reason, now=self.clock()
            )
        return added > 0

    async def do_not_call(self, *, after: str = "", limit: int = 100) -> list[Row]:
        """The API's do-not-call list, by number after the cursor ``after``."""
        async with self.connector.transaction() as tx:
            return await tx.fetch("list_do_not_call", after=after, limit=limit)

    async def remove_do_not_call(self, number: str) -> bool:
        """Take ``number`` off the list; False if it was not there."""
        async with self.connector.transaction() as tx:
            return await tx.execute("remove_do_not_call", number=number) > 0
