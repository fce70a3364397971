"""The admin list's search and pagination against the same filter written in Python, over inserted accounts."""

from __future__ import annotations

import datetime
import math
import random
import re

import pytest

from app.core.phones import PhoneNumberError, normalise_phone
from app.db.models import USER_TYPES
from tests.admin.support import panel_admin

FIRST = ["Aline", "Eric", "Claudine", "Jean", "Divine", "Patrick", "Grace", "Olivier", "Ange", "Yves"]
LAST = ["Uwase", "Habimana", "Mukamana", "Niyonzima", "Ingabire", "Mugisha", "Uwimana", "Nshuti"]
BASE = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
SEPARATORS = re.compile(r"[\s()+./-]")


def _accounts(rng: random.Random, count: int) -> list[dict]:
    accounts = []
    for index in range(count):
        national = f"7{rng.choice('2389')}{rng.randrange(10**7):07d}"
        accounts.append(
            {
                "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                "phone_number": f"+250{national}",
                "email": f"{rng.choice(FIRST).lower()}{index}@{rng.choice(['example.org', 'mail.rw'])}"
                if rng.random() < 0.6
                else None,
                "user_type": rng.choice(USER_TYPES),
                "is_active": rng.random() < 0.8,
                "created_at": BASE + datetime.timedelta(minutes=rng.randrange(100_000)),
            }
        )
    return accounts


def matches(account: dict, search: str) -> bool:
    """The admin list's search, as the panel's users expect it."""
    text = search.strip()
    lowered = text.lower()
    if lowered in account["name"].lower() or (account["email"] and lowered in account["email"].lower()):
        return True
    try:
        if normalise_phone(text, "RW", strict=False) == account["phone_number"]:
            return True
    except PhoneNumberError:
        pass
    digits = "".join(ch for ch in text if ch.isdigit())
    if len(digits) < 3 or SEPARATORS.sub("", text) != digits:
        return False
    return digits in account["phone_number"] or (
        digits.startswith("0") and account["phone_number"].startswith("+250" + digits[1:])
    )


def _searches(rng: random.Random, accounts: list[dict]) -> list[str]:
    searches = ["%", "_", "zz", "o'b", "  ", "07", "078"]
    for _ in range(30):
        account = rng.choice(accounts)
        national = account["phone_number"].removeprefix("+250")
        start = rng.randrange(len(national) - 4)
        local = "0" + national
        searches += [
            account["name"][rng.randrange(3) : rng.randrange(4, len(account["name"]) + 1)].upper(),
            account["phone_number"],
            local,
            f"{local[:4]} {local[4:7]} {local[7:]}",
            "250" + national,
            national[start : start + rng.randrange(3, 6)],
            local[: rng.randrange(3, 7)],
        ]
        if account["email"]:
            searches.append(account["email"].split("@")[rng.randrange(2)][:5])
    return searches


async def test_search_filters_and_pages_match_the_python_filter(client, db):
    headers, me = await panel_admin(client, db)
    rng = random.Random(18)
    accounts = _accounts(rng, 45)
    await db.copy_records_to_table(
        "users",
        records=[
            (
                a["name"],
                a["phone_number"],
                a["email"],
                "!",
                a["user_type"],
                a["is_active"],
                a["created_at"],
                a["created_at"],
            )
            for a in accounts
        ],
        columns=[
            "name",
            "phone_number",
            "email",
            "password_hash",
            "user_type",
            "is_active",
            "created_at",
            "updated_at",
        ],
    )
    rows = await db.fetch("SELECT id, phone_number FROM users")
    ids = {row["phone_number"]: row["id"] for row in rows}
    for account in accounts:
        account["id"] = ids[account["phone_number"]]
    everyone = [*accounts, await _account_row(db, me["user_id"])]

    for search in _searches(rng, accounts):
        query: dict[str, str] = {"search": search}
        if rng.random() < 0.3:
            query["user_type"] = rng.choice(USER_TYPES)
        if rng.random() < 0.3:
            query["is_active"] = rng.choice(["true", "false"])
        expected = [
            a
            for a in everyone
            if (not search.strip() or matches(a, search))
            and ("user_type" not in query or a["user_type"] == query["user_type"])
            and ("is_active" not in query or a["is_active"] == (query["is_active"] == "true"))
        ]
        expected.sort(key=lambda a: (a["created_at"], a["id"]), reverse=True)
        per_page = rng.randrange(1, 16)
        seen: list[int] = []
        page = 1
        while True:
            response = await client.get(
                "/api/admin/users", params={**query, "page": str(page), "per_page": str(per_page)}, headers=headers
            )
            assert response.status_code == 200, (query, response.text)
            body = response.json()
            assert body["total"] == len(expected), (query, body["total"], [a["name"] for a in expected])
            assert body["pages"] == math.ceil(len(expected) / per_page)
            assert (body["current_page"], body["per_page"], body["has_prev"]) == (page, per_page, page > 1)
            seen += [item["id"] for item in body["users"]]
            if not body["has_next"]:
                break
            page += 1
        assert seen == [a["id"] for a in expected], query


async def _account_row(db, user_id: int) -> dict:
    row = await db.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
    return dict(row)


async def test_every_listed_field_the_panel_reads(client, db):
    headers, me = await panel_admin(client, db)
    body = (await client.get("/api/admin/users", headers=headers)).json()
    assert set(body) >= {"users", "total", "pages", "current_page", "per_page", "has_prev", "has_next", "message"}
    (user,) = body["users"]
    assert set(user) >= {"id", "name", "phone_number", "email", "user_type", "is_active", "created_at", "last_activity"}
    assert user["id"] == me["user_id"]
    assert not {"password_hash", "pin_hash", "recovery_hash"} & set(user)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"per_page": "0"}, "per_page"),
        ({"page": "two"}, "page"),
        ({"is_active": "maybe"}, "is_active"),
        ({"user_type": "wizard"}, "user_type"),
        ({"search": "x" * 101}, "search"),
        ({"search": "a\x00b"}, "search"),
    ],
)
async def test_bad_list_parameters_are_field_errors(client, db, params, field):
    headers, _ = await panel_admin(client, db)
    response = await client.get("/api/admin/users", params=params, headers=headers)
    assert response.status_code == 400
    assert [item["field"] for item in response.json()["errors"]] == [field]


async def test_per_page_is_capped_at_100(client, db):
    headers, _ = await panel_admin(client, db)
    await db.copy_records_to_table(
        "users",
        records=[(f"User {n}", f"+25078{n:07d}", "!", "parent", BASE, BASE) for n in range(120)],
        columns=["name", "phone_number", "password_hash", "user_type", "created_at", "updated_at"],
    )
    body = (await client.get("/api/admin/users", params={"per_page": "1000"}, headers=headers)).json()
    assert body["per_page"] == 100 and len(body["users"]) == 100
    assert body["total"] == 121 and body["pages"] == 2 and body["has_next"] is True
