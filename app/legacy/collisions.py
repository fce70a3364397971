"""Which source accounts keep their phone number and email address, and which are not imported.

Decided once, before anything is written, from every source account's key (id, normalised phone,
lower-cased email, times, PIN) and the accounts the target already holds that did not come from an
earlier run of this import. The decisions depend on nothing else, so every run decides the same.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Policy = Literal["report", "keep-latest-activity"]
POLICIES: tuple[Policy, ...] = ("report", "keep-latest-activity")
Resolution = Literal["keep", "unlink", "skip"]
RESOLUTIONS: tuple[Resolution, ...] = ("keep", "unlink", "skip")
_OLDEST = datetime.datetime.min.replace(tzinfo=datetime.UTC)


@dataclass(frozen=True, slots=True)
class AccountKey:
    id: int
    raw_phone: str | None
    phone: str | None
    email_key: str | None
    created_at: datetime.datetime | None  # None: unknown (old rows), taken as the oldest
    last_activity: datetime.datetime | None
    has_pin: bool


@dataclass(frozen=True, slots=True)
class Existing:
    """An account of the target that this import did not write (registered here)."""

    id: int
    phone: str | None
    email_key: str | None


@dataclass(slots=True)
class Plan:
    skipped: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (reason, detail)
    unlinked: dict[int, str] = field(default_factory=dict)  # id -> why its phone is not imported
    email_cleared: dict[int, str] = field(default_factory=dict)  # id -> why its email is not imported
    phone_collisions: list[dict[str, Any]] = field(default_factory=list)
    email_collisions: list[dict[str, Any]] = field(default_factory=list)
    resolve_template: dict[str, Resolution] = field(default_factory=dict)
    resolve_problems: list[str] = field(default_factory=list)


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _activity_order(key: AccountKey) -> tuple[datetime.datetime, datetime.datetime, int]:
    """Most recently active last: last activity, then creation, then the higher id."""
    return (key.last_activity or _OLDEST, key.created_at or _OLDEST, key.id)


def _age_order(key: AccountKey) -> tuple[datetime.datetime, int]:
    """Oldest first; an unknown creation time is older than any known one."""
    return (key.created_at or _OLDEST, key.id)


def plan_accounts(
    keys: Iterable[AccountKey],
    existing: Iterable[Existing],
    *,
    policy: Policy,
    resolutions: Mapping[int, Resolution],
) -> Plan:
    plan = Plan()
    by_id_existing = {account.id: account for account in existing}
    phone_holder = {a.phone: a.id for a in by_id_existing.values() if a.phone}
    email_holder = {a.email_key: a.id for a in by_id_existing.values() if a.email_key}

    importable: list[AccountKey] = []
    for key in keys:
        if key.id in by_id_existing:
            plan.skipped[key.id] = ("id_taken", f"account {key.id} exists in the target and was not imported")
        elif resolutions.get(key.id) == "skip":
            plan.skipped[key.id] = ("resolved_skip", "the --resolve file says skip")
        else:
            importable.append(key)

    groups: dict[str, list[AccountKey]] = defaultdict(list)
    for key in importable:
        if key.phone is not None:
            groups[key.phone].append(key)
    for phone, members in sorted(groups.items()):
        holder = phone_holder.get(phone)
        if len(members) == 1 and holder is None:
            continue
        _decide_phone(plan, phone, members, holder, policy, resolutions)

    # Emails: only among the accounts that are imported, oldest first keeps the address.
    emails: dict[str, list[AccountKey]] = defaultdict(list)
    for key in importable:
        if key.email_key is not None and key.id not in plan.skipped:
            emails[key.email_key].append(key)
    for email_key, members in sorted(emails.items()):
        holder = email_holder.get(email_key)
        if len(members) == 1 and holder is None:
            continue
        ordered = sorted(members, key=_age_order)
        keeper = None if holder is not None else ordered[0]
        for member in ordered:
            if member is not keeper:
                plan.email_cleared[member.id] = (
                    f"held by existing account {holder}"
                    if holder is not None
                    else f"kept by older account {keeper.id if keeper else ''}"
                )
        plan.email_collisions.append(
            {
                "email": email_key,
                "existing_account": holder,
                "kept_by": keeper.id if keeper else None,
                "cleared": [m.id for m in ordered if m is not keeper],
            }
        )
    return plan


def _decide_phone(
    plan: Plan,
    phone: str,
    members: list[AccountKey],
    holder: int | None,
    policy: Policy,
    resolutions: Mapping[int, Resolution],
) -> None:
    ordered = sorted(members, key=_activity_order, reverse=True)
    named = {m.id: resolutions[m.id] for m in ordered if m.id in resolutions}
    outcome: dict[int, str] = {}
    if named:
        decided_by = "resolve"
        keepers = [i for i, r in named.items() if r == "keep"]
        if len(keepers) > 1:
            problem = f"{phone}: the --resolve file keeps {len(keepers)} accounts ({', '.join(map(str, keepers))})"
            plan.resolve_problems.append(problem)
            for m in ordered:
                outcome[m.id] = "not_imported"
                plan.skipped[m.id] = ("resolve_invalid", problem)
        else:
            for m in ordered:
                if m.id in keepers and holder is None:
                    outcome[m.id] = "kept"
                else:
                    outcome[m.id] = "unlinked"
                    plan.unlinked[m.id] = (
                        f"{phone} belongs to existing account {holder}" if holder is not None else f"{phone}: resolved"
                    )
    elif policy == "keep-latest-activity":
        decided_by = policy
        keeper = ordered[0] if holder is None else None
        for m in ordered:
            if m is keeper:
                outcome[m.id] = "kept"
            else:
                outcome[m.id] = "unlinked"
                plan.unlinked[m.id] = (
                    f"{phone} belongs to existing account {holder}"
                    if holder is not None
                    else f"{phone} kept by the more recently active account {ordered[0].id}"
                )
    else:
        decided_by = "report"
        others = ", ".join(str(m.id) for m in ordered)
        for m in ordered:
            outcome[m.id] = "not_imported"
            detail = f"{phone} is also the number of account(s) {others}"
            if holder is not None:
                detail += f" and of existing account {holder}"
            plan.skipped[m.id] = ("phone_collision", detail)
    suggested = ordered[0].id if holder is None else None
    for m in ordered:
        plan.resolve_template[str(m.id)] = "keep" if m.id == suggested else "unlink"
    plan.phone_collisions.append(
        {
            "phone": phone,
            "existing_account": holder,
            "decided_by": decided_by,
            "accounts": [
                {
                    "id": m.id,
                    "phone_as_typed": m.raw_phone,
                    "created_at": _iso(m.created_at),
                    "last_activity": _iso(m.last_activity),
                    "has_pin": m.has_pin,
                    "outcome": outcome[m.id],
                }
                for m in ordered
            ],
        }
    )
