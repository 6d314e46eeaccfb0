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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator import exceptions, phone
from orchestrator.connectors.protocol import Row
from orchestrator.model import NewCall, new_id, new_token
from orchestrator.store.ledger import Ledger
from orchestrator.windows import CallingWindow


class CampaignStatus:
    """A campaign's states: only ``active`` campaigns are dialled."""

    ACTIVE = "active"
    PAUSED = "paused"
    CANCELED = "canceled"


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
    budget: float | None = Field(default=None, ge=0, description="stop when this much is spent")
    price_per_minute: float = Field(default=0.0, ge=0, description="for spend and the budget")

    @field_validator("from_numbers")
    @classmethod
    def _numbers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for number in value:
            phone.validate_number(number, field="from_numbers")
        return value


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
        async with self.connector.transaction() as tx:
            row = await tx.fetchone("begin_import", id=campaign_id, now=self.clock())
        if row is None:
            raise exceptions.InputError(f"no campaign {campaign_id}")
        return int(row["imports"])

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
            campaign = await tx.fetchone("get_campaign", id=campaign_id)
            if campaign is None:
                raise exceptions.InputError(f"no campaign {campaign_id}")
            if campaign["status"] == CampaignStatus.CANCELED:
                raise exceptions.InputError(f"campaign {campaign_id} is canceled")
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

    async def campaigns(self, *, limit: int = 100) -> list[Row]:
        """Campaigns, newest first."""
        async with self.connector.transaction() as tx:
            return await tx.fetch("list_campaigns", limit=limit)

    async def campaign_progress(self, campaign_id: str) -> dict[str, Any]:
        """Calls by status and attempts so far."""
        async with self.connector.transaction() as tx:
            rows = await tx.fetch("campaign_progress", campaign=campaign_id)
        by_status = {str(r["status"]): int(r["calls"]) for r in rows}
        return {
            "calls": sum(by_status.values()),
            "by_status": by_status,
            "attempts": sum(int(r["attempts"] or 0) for r in rows),
        }

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
