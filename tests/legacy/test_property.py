"""Whatever the Flask-era user set, every source user is imported under its id or listed with a reason.

Never both, never neither: random sets of phone forms (one number typed three ways), NULL phones,
numbers that do not parse, case-variant emails, accounts already registered here, both collision
policies and random --resolve decisions.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.settings import Settings
from tests.conftest import plain_dsn
from tests.legacy import flask_data as fd
from tests.legacy.conftest import import_legacy

NUMBERS = ["788200001", "788200002", "788200003", "722200004"]
PHONE = st.one_of(
    st.none(),
    st.just("12345"),
    st.just("+254712345678"),
    st.builds(lambda n, form: form.format(n), st.sampled_from(NUMBERS), st.sampled_from(["0{}", "+250{}", "250{}"])),
)
EMAIL = st.one_of(st.none(), st.just(""), st.sampled_from(["a@x.rw", "A@x.rw", "a@X.RW ", "b@x.rw"]))
WHEN = st.one_of(st.none(), st.integers(2019, 2025).map(lambda y: fd.naive(y)))
USER = st.fixed_dictionaries(
    {
        "phone_number": PHONE,
        "email": EMAIL,
        "created_at": WHEN,
        "last_activity": WHEN,
        "pin": st.booleans(),
        "account_type": st.sampled_from(["self_registered", "family_managed"]),
    }
)
USERS = st.dictionaries(st.integers(1, 60), USER, max_size=14)
EXISTING = st.lists(
    st.tuples(st.integers(1, 60), st.sampled_from([None, "+250788200001", "+250722200004"])), max_size=2
)
RESOLUTION = st.dictionaries(st.integers(1, 60), st.sampled_from(["keep", "unlink", "skip"]), max_size=4)


async def _seed(source: asyncpg.Connection, target: asyncpg.Connection, users: dict[int, Any], existing: Any) -> None:
    await source.execute("TRUNCATE users, parents, adolescents, parent_children, login_attempts CASCADE")
    await target.execute("TRUNCATE users, login_attempts, account_events CASCADE")
    phones: set[str] = set()
    emails: set[str] = set()
    for user_id, user in sorted(users.items()):
        phone, email = user["phone_number"], user["email"]
        if phone in phones:  # the Flask columns are unique as typed
            phone = None
        if email in emails:
            email = None
        phones.add(phone)
        emails.add(email)
        await fd.add_user(
            source,
            user_id,
            phone_number=phone,
            email=email,
            created_at=user["created_at"],
            last_activity=user["last_activity"],
            pin_hash=fd.bcrypt_hash(fd.WEB_PIN) if user["pin"] else None,
            enable_pin_auth=user["pin"],
            account_type=user["account_type"],
        )
    now = datetime.datetime.now(datetime.UTC)
    for user_id, phone in existing:
        await target.execute(
            "INSERT INTO users (id, name, phone_number, password_hash, user_type, created_at, updated_at)"
            " VALUES ($1, 'Here', $2, 'x', 'parent', $3, $3) ON CONFLICT DO NOTHING",
            user_id,
            phone,
            now,
        )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(users=USERS, existing=EXISTING, policy=st.sampled_from(["report", "keep-latest-activity"]), resolve=RESOLUTION)
def test_every_source_user_is_imported_or_listed_never_both_never_neither(
    settings: Settings, flask_url: str, users: dict[int, Any], existing: Any, policy: str, resolve: dict[int, str]
) -> None:
    async def run() -> None:
        source = await asyncpg.connect(flask_url)
        target = await asyncpg.connect(plain_dsn(settings))
        try:
            await _seed(source, target, users, existing)
            before = [dict(r) for r in await target.fetch("SELECT * FROM users ORDER BY id")]
            report = await import_legacy(settings, flask_url, policy=policy, resolutions=resolve, only="users")
            source_ids = {r["id"] for r in await source.fetch("SELECT id FROM users")}
            imported = {r["id"] for r in await target.fetch("SELECT id FROM users WHERE source = 'flask'")}
            listed = [item["id"] for item in report.as_dict()["not_imported"]]
            assert all(item["reason"] for item in report.as_dict()["not_imported"])
            assert len(listed) == len(set(listed))
            assert imported.isdisjoint(listed)
            assert imported | set(listed) == source_ids
            # Accounts registered here are untouched.
            assert [
                dict(r) for r in await target.fetch("SELECT * FROM users WHERE source = 'api' ORDER BY id")
            ] == before
            # Every imported number is one sign-in form of its source number, and a phone is never silently
            # dropped: an imported account without its number is listed in the changes.
            changed = {(c["id"], c["field"]) for c in report.as_dict()["changes"]}
            for row in await target.fetch("SELECT id, phone_number FROM users WHERE source = 'flask'"):
                raw = await source.fetchval("SELECT phone_number FROM users WHERE id = $1", row["id"])
                if raw and row["phone_number"] is None:
                    assert (row["id"], "phone_number") in changed
        finally:
            await source.close()
            await target.close()

    asyncio.run(run())
