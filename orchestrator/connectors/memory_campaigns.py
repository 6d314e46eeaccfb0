"""The in-memory connector's campaign and do-not-call queries (see :mod:`.memory`): each
method is the named query of ``queries.sql`` of the same name, as SQLite answers it."""

from __future__ import annotations

from typing import Any

from orchestrator.connectors.memory_tables import (
    Params,
    Result,
    Storage,
    eq,
    le,
    lt,
    ordered,
    pick,
    take,
)
from orchestrator.connectors.protocol import Row

#: The call statuses that are not final.
_OPEN = frozenset({"queued", "dialing", "initiated", "ringing", "in_progress"})


class CampaignQueries(Storage):
    """Campaigns, their imports, progress and spend; the do-not-call list."""

    def active_campaigns(self, p: Params) -> Result:
        rows = self._where("campaigns", lambda r: eq(r["status"], "active"))
        return self._select(ordered(rows, "id"))

    def insert_campaign(self, p: Params) -> Result:
        values = pick(p, "id name status settings priority share budget price_per_minute")
        values |= {"reason": None, "spent": 0, "dialed": 0, "rows_total": 0, "rows_invalid": 0}
        values |= {"importing": 0, "importing_until": 0, "talk_seconds": 0, "talked": 0}
        values |= {"created_at": p["now"], "updated_at": p["now"]}
        return self._one(self._insert("campaigns", values))

    def get_campaign(self, p: Params) -> Result:
        return self._select(self._where("campaigns", lambda r: eq(r["id"], p["id"])))

    def list_campaigns(self, p: Params) -> Result:
        rows = ordered(self.tables["campaigns"].values(), "-created_at", "id")
        return self._select(take(rows, p["limit"]))

    def set_campaign_status(self, p: Params) -> Result:
        rows = self._where(
            "campaigns",
            lambda r: (
                eq(r["id"], p["id"])
                and (eq(r["status"], p["from_a"]) or eq(r["status"], p["from_b"]))
            ),
        )
        changes = {"status": p["status"], "reason": p["reason"], "updated_at": p["now"]}
        updated = self._update("campaigns", rows, lambda r: changes)
        return updated, len(updated)

    def count_campaign_rows(self, p: Params) -> Result:
        rows = self._where("campaigns", lambda r: eq(r["id"], p["id"]))

        def changes(row: Row) -> Params:
            return {
                "rows_total": row["rows_total"] + p["total"],
                "rows_invalid": row["rows_invalid"] + p["invalid"],
                "updated_at": p["now"],
            }

        return [], len(self._update("campaigns", rows, changes))

    def campaign_dialed(self, p: Params) -> Result:
        rows = self._where("campaigns", lambda r: eq(r["id"], p["id"]))
        return [], len(self._update("campaigns", rows, lambda r: {"dialed": r["dialed"] + 1}))

    def campaign_spent(self, p: Params) -> Result:
        rows = self._where("campaigns", lambda r: eq(r["id"], p["id"]))

        def changes(r: Row) -> Params:
            return {
                "spent": r["spent"] + p["cost"],
                "talk_seconds": r["talk_seconds"] + p["seconds"],
                "talked": r["talked"] + 1,
                "updated_at": p["now"],
            }

        updated = self._update("campaigns", rows, changes)
        return updated, len(updated)

    def campaign_live(self, p: Params) -> Result:
        counts: dict[Any, int] = {}
        for row in self._where(
            "attempts", lambda r: eq(r["live"], 1) and r["campaign"] is not None
        ):
            counts[row["campaign"]] = counts.get(row["campaign"], 0) + 1
        return self._select([{"campaign": k, "live": v} for k, v in sorted(counts.items())])

    def set_campaign_settings(self, p: Params) -> Result:
        rows = self._where(
            "campaigns", lambda r: eq(r["id"], p["id"]) and not eq(r["status"], "canceled")
        )
        changes = pick(p, "settings priority share budget price_per_minute")
        changes["updated_at"] = p["now"]
        updated = self._update("campaigns", rows, lambda r: changes)
        return updated, len(updated)

    def reprioritize_campaign_queue(self, p: Params) -> Result:
        rows = self._where(
            "attempts", lambda r: eq(r["campaign"], p["campaign"]) and eq(r["status"], "queued")
        )
        return [], len(self._update("attempts", rows, lambda r: {"priority": p["priority"]}))

    def campaign_open_call(self, p: Params) -> Result:
        rows = self._where(
            "calls",
            lambda r: eq(r["campaign"], p["campaign"]) and r["status"] in _OPEN,
        )
        return self._select([{"open": 1} for _ in rows[:1]])

    def campaign_pending_delivery(self, p: Params) -> Result:
        calls = self.tables["calls"]
        for row in self.tables["deliveries"].values():
            call = calls.get(row["call_id"])
            pending = eq(row["state"], "pending") and call is not None
            if pending and call is not None and eq(call["campaign"], p["campaign"]):
                return self._select([{"pending": 1}])
        return self._select([])

    def campaign_last_call(self, p: Params) -> Result:
        rows = self._where("calls", lambda r: eq(r["campaign"], p["campaign"]))
        return self._select(take(ordered(rows, "-id"), 1))

    def begin_import(self, p: Params) -> Result:
        rows = self._where("campaigns", lambda r: eq(r["id"], p["id"]))
        updated = self._update(
            "campaigns", rows, lambda r: {"imports": r["imports"] + 1, "updated_at": p["now"]}
        )
        return [{"imports": r["imports"]} for r in updated], len(updated)

    def insert_campaign_error(self, p: Params) -> Result:
        values = {
            "pk": f"{p['campaign_id']}\0{p['import_no']}\0{p['line']}",
            **pick(p, "campaign_id import_no line reason"),
        }
        row = self._insert("campaign_errors", values, on_conflict=("pk",))
        return [], 0 if row is None else 1

    def list_campaign_errors(self, p: Params) -> Result:
        after = (p["after_import"], p["after_line"])

        def wanted(r: Row) -> bool:
            return eq(r["campaign_id"], p["campaign_id"]) and (
                lt(after[0], r["import_no"])
                or (eq(after[0], r["import_no"]) and lt(after[1], r["line"]))
            )

        out = [
            {k: r[k] for k in ("campaign_id", "import_no", "line", "reason")}
            for r in self._where("campaign_errors", wanted)
        ]
        return self._select(take(ordered(out, "import_no", "line"), p["limit"]))

    def campaign_progress(self, p: Params) -> Result:
        groups: dict[Any, list[int]] = {}
        for row in self._where("calls", lambda r: eq(r["campaign"], p["campaign"])):
            calls, attempts, retries = groups.setdefault(row["status"], [0, 0, 0])
            groups[row["status"]] = [
                calls + 1,
                attempts + row["attempts"],
                retries + (1 if row["attempts"] > 1 else 0),
            ]
        return self._select(
            [
                {"status": k, "calls": v[0], "attempts": v[1], "retries": v[2]}
                for k, v in groups.items()
            ]
        )

    def cancel_campaign_calls(self, p: Params) -> Result:
        rows = self._where(
            "calls", lambda r: eq(r["campaign"], p["campaign"]) and eq(r["status"], "queued")
        )
        changes = {"status": "canceled", "reason": "CAMPAIGN_CANCELED"}
        changes |= {"ended_at": p["now"], "updated_at": p["now"]}
        return [], len(self._update("calls", rows, lambda r: changes))

    def cancel_campaign_queue(self, p: Params) -> Result:
        rows = self._where(
            "attempts",
            lambda r: eq(r["campaign"], p["campaign"]) and eq(r["status"], "queued"),
        )
        changes = {"status": "canceled", "error_code": "CAMPAIGN_CANCELED"}
        changes |= {"error_message": p["reason"], "ended_at": p["now"]}
        return [], len(self._update("attempts", rows, lambda r: changes))

    def is_do_not_call(self, p: Params) -> Result:
        rows = self._where("do_not_call", lambda r: eq(r["number"], p["number"]))
        return self._select([{"number": r["number"], "reason": r["reason"]} for r in rows])

    def add_do_not_call(self, p: Params) -> Result:
        values = {"number": p["number"], "reason": p["reason"], "added_at": p["now"]}
        row = self._insert("do_not_call", values, on_conflict=("number",))
        return [], 0 if row is None else 1

    def list_do_not_call(self, p: Params) -> Result:
        rows = self._where("do_not_call", lambda r: lt(p["after"], r["number"]))
        out = [{k: r[k] for k in ("number", "reason", "added_at")} for r in rows]
        return self._select(take(ordered(out, "number"), p["limit"]))

    def remove_do_not_call(self, p: Params) -> Result:
        rows = self._where("do_not_call", lambda r: eq(r["number"], p["number"]))
        return [], self._delete("do_not_call", rows)

    def queued_by_hold(self, p: Params) -> Result:
        campaigns = self.tables["campaigns"]
        counts: dict[str, int] = {}
        for row in self._where("attempts", lambda r: eq(r["status"], "queued")):
            campaign = campaigns.get(row["campaign"]) if row["campaign"] is not None else None
            if campaign is not None and eq(campaign["status"], "paused"):
                hold = "paused_campaign"
            elif lt(p["now"], row["not_before"]):
                hold = "later"
            else:
                hold = "ready"
            counts[hold] = counts.get(hold, 0) + 1
        return self._select([{"hold": k, "n": v} for k, v in sorted(counts.items())])

    def count_dead_deliveries(self, p: Params) -> Result:
        dead = self._where("deliveries", lambda r: eq(r["state"], "dead"))
        return self._select([{"n": len(dead)}])

    def start_campaign_import(self, p: Params) -> Result:
        rows = self._where("campaigns", lambda r: eq(r["id"], p["id"]))

        def changes(r: Row) -> Params:
            return {"importing": r["importing"] + 1, "importing_until": p["until"]}

        return [], len(self._update("campaigns", rows, changes))

    def extend_campaign_import(self, p: Params) -> Result:
        rows = self._where("campaigns", lambda r: eq(r["id"], p["id"]))
        return [], len(self._update("campaigns", rows, lambda r: {"importing_until": p["until"]}))

    def end_campaign_import(self, p: Params) -> Result:
        rows = self._where("campaigns", lambda r: eq(r["id"], p["id"]))

        def changes(r: Row) -> Params:
            return {
                "importing": max(r["importing"] - 1, 0),
                "importing_until": 0 if r["importing"] <= 1 else r["importing_until"],
            }

        return [], len(self._update("campaigns", rows, changes))

    def lock_campaign(self, p: Params) -> Result:
        return self._select(self._where("campaigns", lambda r: eq(r["id"], p["id"])))

    def complete_campaign(self, p: Params) -> Result:
        rows = self._where(
            "campaigns",
            lambda r: (
                eq(r["id"], p["id"])
                and eq(r["status"], "active")
                and le(r["importing_until"], p["now"])
            ),
        )
        changes = {"status": "completed", "reason": None, "updated_at": p["now"]}
        updated = self._update("campaigns", rows, lambda r: changes)
        return updated, len(updated)

    def reopen_campaign(self, p: Params) -> Result:
        rows = self._where(
            "campaigns", lambda r: eq(r["id"], p["id"]) and eq(r["status"], "completed")
        )
        changes = {"status": "active", "reason": None, "updated_at": p["now"]}
        return [], len(self._update("campaigns", rows, lambda r: changes))

    def unfinished_campaigns(self, p: Params) -> Result:
        rows = self._where(
            "campaigns",
            lambda r: eq(r["status"], "active") and le(r["importing_until"], p["now"]),
        )
        return self._select(ordered(rows, "id"))

    def list_open_campaigns(self, p: Params) -> Result:
        rows = self._where("campaigns", lambda r: r["status"] in ("active", "paused"))
        return self._select(take(ordered(rows, "-created_at", "id"), p["limit"]))

    def campaign_queued_numbers(self, p: Params) -> Result:
        counts: dict[str, int] = {}
        for row in self._where(
            "attempts", lambda r: eq(r["campaign"], p["campaign"]) and eq(r["status"], "queued")
        ):
            counts[row["to_number"]] = counts.get(row["to_number"], 0) + 1
        return self._select([{"to_number": k, "n": v} for k, v in sorted(counts.items())])
