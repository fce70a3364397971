"""Flask-era data, written the way the Flask code wrote it (see fixtures/README.md).

Hashes use bcrypt cost 4 (the Flask code used 12: slow, and the cost does not change the rules).
"""

from __future__ import annotations

import datetime
import functools
from typing import Any

import bcrypt

from tests.helpers import STRONG_PASSWORD

USSD_PIN = "5829"
WEB_PIN = "4827"


@functools.cache
def bcrypt_hash(secret: str, prefix: str = "$2b$") -> str:
    """flask-bcrypt's hash of ``secret`` (one per secret: the salt does not matter to the tests)."""
    hashed = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(4)).decode()
    return prefix + hashed[4:]


def naive(year: int, month: int = 1, day: int = 1, hour: int = 12) -> datetime.datetime:
    """``datetime.utcnow()``-style: UTC without a time zone."""
    return datetime.datetime(year, month, day, hour)


USER_DEFAULTS: dict[str, Any] = {
    "name": "Aline Uwase",
    "phone_number": None,
    "email": None,
    "password_hash": None,
    "user_type": "adolescent",
    "is_active": True,
    "created_at": None,
    "updated_at": None,
    "pin_hash": None,
    "enable_pin_auth": False,
    "personal_cycle_length": None,
    "personal_period_length": None,
    "has_provided_cycle_info": False,
    "last_activity": None,
    "current_session_data": None,
    "session_timeout_minutes": 2,
    "account_type": "self_registered",
    "is_phone_verified": False,
    "allow_parent_access": True,
    "data_sharing_consent": False,
    "notification_preferences": None,
}


async def add_user(conn: Any, user_id: int, **fields: Any) -> None:
    values = {**USER_DEFAULTS, "created_at": naive(2023), **fields}
    if values["password_hash"] is None:
        values["password_hash"] = bcrypt_hash(STRONG_PASSWORD)
    names = ["id", *values]
    placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    await conn.execute(
        f"INSERT INTO users ({', '.join(names)}) VALUES ({placeholders})",  # noqa: S608 (test data)
        user_id,
        *values.values(),
    )


async def add_attempt(
    conn: Any,
    phone: str,
    success: bool,
    ip: str | None,
    created_at: datetime.datetime | None,
    user_agent: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO login_attempts (phone_number, success, ip_address, user_agent, created_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        phone,
        success,
        ip,
        user_agent,
        created_at,
    )


# The quirks of the README, one account each (ids chosen so a test can name them).
BCRYPT_USER = 101  # +250788100001, password + PIN, bcrypt
PAIR_OLDER, PAIR_NEWER = 102, 103  # 0788100002 and +250788100002: one person, two accounts
STRIPPED_PLUS = 104  # 250788100004
USSD_USER = 105  # 0788100005, password == PIN, session data
CHILD = 106  # family-managed, no phone
EMAIL_OLDER, EMAIL_NEWER = 107, 108  # Aline@Example.com / aline@example.com
EMPTY_EMAIL = 109
FOREIGN = 110  # +254712345678
NOT_A_NUMBER = 111  # "12345"
ADMIN, CONTENT_WRITER, HEALTH_PROVIDER = 112, 113, 114
NO_TIMESTAMPS = 115
BAD_PREFS, EMPTY_PREFS, GOOD_PREFS = 116, 117, 118
OUT_OF_RANGE = 119
UNKNOWN_HASHES = 120
ADMIN_RESET = 121  # password reset to "password", PIN cleared
PIN_DISABLED = 122  # pin_hash kept, enable_pin_auth false
BCRYPT_2A, BCRYPT_2Y = 123, 124
HIGH_ID = 5000
PARENT = 125


async def add_quirks(conn: Any) -> None:
    await add_user(
        conn, BCRYPT_USER, phone_number="+250788100001", email="ines@example.com",
        pin_hash=bcrypt_hash(WEB_PIN), enable_pin_auth=True, last_activity=naive(2024, 5),
    )  # fmt: skip
    await add_user(
        conn, PAIR_OLDER, phone_number="0788100002", last_activity=naive(2023, 3), pin_hash=bcrypt_hash(WEB_PIN)
    )
    await add_user(conn, PAIR_NEWER, phone_number="+250788100002", last_activity=naive(2024, 8))
    await add_user(conn, STRIPPED_PLUS, phone_number="250788100004")
    await add_user(
        conn, USSD_USER, phone_number="0788100005", password_hash=bcrypt_hash(USSD_PIN), pin_hash=bcrypt_hash(USSD_PIN),
        enable_pin_auth=True, current_session_data='{"menu": "cycle", "step": 2}',
    )  # fmt: skip
    await add_user(conn, CHILD, name="Keza", account_type="family_managed", user_type="adolescent")
    await add_user(conn, PARENT, phone_number="+250788100025", user_type="parent")
    await add_user(conn, EMAIL_OLDER, phone_number="+250788100007", email="Aline@Example.com", created_at=naive(2020))
    await add_user(conn, EMAIL_NEWER, phone_number="+250788100008", email=" aline@example.com ", created_at=naive(2021))
    await add_user(conn, EMPTY_EMAIL, phone_number="+250788100009", email="")
    await add_user(conn, FOREIGN, phone_number="+254712345678")
    await add_user(conn, NOT_A_NUMBER, phone_number="12345")
    await add_user(conn, ADMIN, phone_number="+250788100012", user_type="admin")
    await add_user(conn, CONTENT_WRITER, phone_number="+250788100013", user_type="content_writer")
    await add_user(conn, HEALTH_PROVIDER, phone_number="+250788100014", user_type="health_provider")
    await add_user(conn, NO_TIMESTAMPS, phone_number="+250788100015", created_at=None, updated_at=None,
                   last_activity=naive(2022, 6))  # fmt: skip
    await add_user(conn, BAD_PREFS, phone_number="+250788100016", notification_preferences="{sms: yes")
    await add_user(conn, EMPTY_PREFS, phone_number="+250788100017", notification_preferences="")
    await add_user(conn, GOOD_PREFS, phone_number="+250788100018", notification_preferences='{"sms": true}')
    await add_user(
        conn, OUT_OF_RANGE, phone_number="+250788100019", session_timeout_minutes=600,
        personal_cycle_length=200, personal_period_length=0,
    )  # fmt: skip
    await add_user(conn, UNKNOWN_HASHES, phone_number="+250788100020", password_hash="plain:hunter2",
                   pin_hash="md5:81dc9bdb52d04dc20036dbd8313ed055", enable_pin_auth=True)  # fmt: skip
    await add_user(conn, ADMIN_RESET, phone_number="+250788100021", password_hash=bcrypt_hash("password"))
    await add_user(
        conn, PIN_DISABLED, phone_number="+250788100022", pin_hash=bcrypt_hash(WEB_PIN), enable_pin_auth=False
    )
    await add_user(conn, BCRYPT_2A, phone_number="+250788100023", password_hash=bcrypt_hash(STRONG_PASSWORD, "$2a$"))
    await add_user(conn, BCRYPT_2Y, phone_number="+250788100024", password_hash=bcrypt_hash(STRONG_PASSWORD, "$2y$"))
    await add_user(conn, HIGH_ID, phone_number="+250788105000")
    # The platform tables that reference users.id.
    parent_id = await conn.fetchval("INSERT INTO parents (user_id) VALUES ($1) RETURNING id", PARENT)
    child_id = await conn.fetchval(
        "INSERT INTO adolescents (user_id, date_of_birth) VALUES ($1, $2) RETURNING id", CHILD, naive(2012)
    )
    await conn.execute("INSERT INTO parent_children (parent_id, adolescent_id) VALUES ($1, $2)", parent_id, child_id)
    await conn.execute("SELECT setval('users_id_seq', 5000)")


# (phone as typed, success, ip_address, created_at): the login history's forms.
ATTEMPTS = [
    ("0788100001", True, "41.186.1.2", naive(2024, 5, 1)),
    ("+250788100001", False, "10.0.0.1", naive(2024, 5, 2)),
    ("250788100001", False, "::1", naive(2024, 5, 3)),
    ("0788100005", True, "", naive(2024, 5, 4)),
    ("0788100005", False, None, naive(2024, 5, 5)),
    ("12345", False, "unknown", naive(2024, 5, 6)),
    ("+254712345678", True, "10.0.0.1, 41.2.3.4", None),  # no time: the row before's
    ("", False, "41.186.1.3", naive(2024, 5, 7)),
]


async def add_history(conn: Any) -> None:
    for phone, success, ip, created_at in ATTEMPTS:
        await add_attempt(conn, phone, success, ip, created_at)
