"""The import's report: a JSON file people act on (docs/legacy-import.md explains every field) and a summary."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.legacy.collisions import Plan
from app.legacy.rules import HistoryStats, Note

REPORT_VERSION = 1


@dataclass(slots=True)
class FailedBatch:
    table: str
    first_id: int
    last_id: int
    source_ids: list[int]
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "source_ids": self.source_ids,
            "error": self.error,
        }


@dataclass(slots=True)
class Report:
    source: str
    dry_run: bool
    options: dict[str, Any]
    started_at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    finished_at: datetime.datetime | None = None
    users_read: int = 0
    users_inserted: int = 0
    users_already_imported: int = 0
    family_managed_without_phone: int = 0
    not_imported: list[dict[str, Any]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    ussd_created: list[int] = field(default_factory=list)
    staff: list[dict[str, Any]] = field(default_factory=list)
    plan: Plan | None = None
    history: HistoryStats | None = None
    history_inserted: int = 0
    history_already_present: int = 0
    next_user_id: int | None = None
    failed_batches: list[FailedBatch] = field(default_factory=list)
    query_log_id: int | None = None

    def not_imported_account(self, user_id: int, reason: str, detail: str) -> None:
        self.not_imported.append({"id": user_id, "reason": reason, "detail": detail})

    def as_dict(self) -> dict[str, Any]:
        plan = self.plan or Plan()
        problems: dict[str, int] = {}
        for note in self.notes:
            problems[note.problem] = problems.get(note.problem, 0) + 1
        reasons: dict[str, int] = {}
        for item in self.not_imported:
            reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
        history: dict[str, Any] | None = None
        if self.history is not None:
            history = {
                **self.history.as_dict(),
                "inserted": self.history_inserted,
                "already_present": self.history_already_present,
            }
        return {
            "version": REPORT_VERSION,
            "source": self.source,
            "dry_run": self.dry_run,
            "options": self.options,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "complete": not self.failed_batches and self.finished_at is not None,
            "users": {
                "read": self.users_read,
                "imported": self.users_read - len(self.not_imported),
                "inserted": self.users_inserted,
                "already_imported": self.users_already_imported,
                "not_imported": len(self.not_imported),
                "not_imported_by_reason": reasons,
                "changed_by_problem": problems,
                "family_managed_without_phone": self.family_managed_without_phone,
                "next_user_id": self.next_user_id,
            },
            "not_imported": self.not_imported,
            "changes": [note.as_dict() for note in self.notes],
            "phone_collisions": plan.phone_collisions,
            "email_collisions": plan.email_collisions,
            "resolve_template": plan.resolve_template,
            "resolve_problems": plan.resolve_problems,
            "ussd_created": self.ussd_created,
            "staff": self.staff,
            "history": history,
            "failed_batches": [batch.as_dict() for batch in self.failed_batches],
            "query_log_id": self.query_log_id,
        }

    def to_json(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self.as_dict()), indent=2) + b"\n"

    def summary(self) -> str:
        data = self.as_dict()
        users = data["users"]
        mode = "DRY RUN (nothing written)" if self.dry_run else "import"
        lines = [
            f"legacy {mode} from {self.source}",
            f"users: {users['read']:,} read, {users['imported']:,} imported"
            f" ({users['inserted']:,} new, {users['already_imported']:,} already there),"
            f" {users['not_imported']:,} not imported",
        ]
        for reason, count in sorted(users["not_imported_by_reason"].items()):
            lines.append(f"  not imported, {reason}: {count:,}")
        for problem, count in sorted(users["changed_by_problem"].items()):
            lines.append(f"  imported with a change, {problem}: {count:,}")
        lines.append(
            f"  phone collisions: {len(data['phone_collisions']):,} numbers;"
            f" email collisions: {len(data['email_collisions']):,} addresses"
        )
        lines.append(f"  USSD-created (password is probably the PIN): {len(self.ussd_created):,}")
        granted = [item for item in self.staff if item["granted"] is not None]
        lines.append(f"  staff accounts: {len(self.staff):,}, {len(granted):,} granted authority by --staff-role")
        if granted:
            lines.append(
                "  granted staff have no password or PIN from the Flask era: give each one a one-time code with"
                " `ladys-essence users recover --phone NUMBER` (the report's `staff` lists them)"
            )
        if users["next_user_id"] is not None:
            lines.append(f"  next registration gets an id >= {users['next_user_id']:,}")
        if data["history"] is not None:
            h = data["history"]
            lines.append(
                f"history: {h['read']:,} read, {h['inserted']:,} inserted, {h['already_present']:,} already there;"
                f" ip not an address {h['ip_not_address']:,}, ip empty {h['ip_empty']:,},"
                f" phone kept as typed {h['phone_as_typed']:,}, time missing {h['created_at_missing']:,}"
            )
        for batch in self.failed_batches:
            lines.append(f"FAILED {batch.table} batch, source ids {batch.first_id}..{batch.last_id}: {batch.error}")
        for problem in plan_problems(data):
            lines.append(f"resolve file: {problem}")
        return "\n".join(lines)


def plan_problems(data: dict[str, Any]) -> list[str]:
    problems: list[str] = data["resolve_problems"]
    return problems
