"""Revocation, deactivation and role changes across API processes: the next request on the other one sees them.

Two real ``ladys-essence serve`` processes on the same Postgres and Redis. Each has warmed its
per-process state (the verified-token cache, its own asyncpg pool) with the token before the
change is made through, or behind, the other one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from app.core.settings import Settings
from tests.conftest import _truncate, plain_dsn
from tests.helpers import STRONG_PASSWORD, new_phone
from tests.servers import api_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_processes(
    base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Settings]]:
    settings = msgspec.structs.replace(base_settings, redis_key_prefix=f"le-test:{uuid.uuid4().hex[:12]}:")
    with (
        api_server(settings, tmp_path_factory.mktemp("one")) as one,
        api_server(settings, tmp_path_factory.mktemp("two")) as two,
    ):
        yield one, two, settings
    import asyncio

    asyncio.run(_truncate(base_settings))


def sign_up(base: str) -> dict[str, Any]:
    body = {"name": "Aline Uwase", "phone_number": new_phone(), "password": STRONG_PASSWORD, "user_type": "parent"}
    answer = httpx.post(f"{base}/api/auth/register", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def profile(base: str, tokens: dict[str, Any]) -> httpx.Response:
    return httpx.get(f"{base}/api/auth/profile", headers=bearer(tokens["access_token"]), timeout=30)


def refresh(base: str, tokens: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}/api/auth/refresh", headers=bearer(tokens["refresh_token"]), timeout=30)


async def change_account(settings: Settings, user_id: int, **values: object) -> None:
    """The account changed behind both processes, as another service or an operator's SQL would."""
    connection = await asyncpg.connect(plain_dsn(settings))
    try:
        assignments = ", ".join(f"{name} = ${index + 2}" for index, name in enumerate(values))
        await connection.execute(f"UPDATE users SET {assignments} WHERE id = $1", user_id, *values.values())  # noqa: S608
    finally:
        await connection.close()


def test_a_session_ended_on_one_process_is_refused_by_the_next_request_on_the_other(
    two_processes: tuple[str, str, Settings],
) -> None:
    one, two, _ = two_processes
    tokens = sign_up(one)
    other = httpx.post(
        f"{one}/api/auth/login",
        json={"phone_number": tokens["user"]["phone_number"], "password": STRONG_PASSWORD},
        timeout=30,
    ).json()
    assert profile(two, tokens).status_code == 200
    assert refresh(two, tokens).status_code == 200

    ended = httpx.post(f"{one}/api/auth/logout", headers=bearer(tokens["refresh_token"]), timeout=30)
    assert ended.status_code == 200, ended.text

    assert profile(two, tokens).status_code == 401
    assert refresh(two, tokens).status_code == 401
    rotated = httpx.post(f"{two}/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}, timeout=30)
    assert rotated.status_code == 401
    # The account's other session is untouched.
    assert profile(two, other).status_code == 200


async def test_a_deactivated_account_is_refused_by_the_next_request_on_either_process(
    two_processes: tuple[str, str, Settings],
) -> None:
    one, two, settings = two_processes
    tokens = sign_up(one)
    for base in (one, two):
        assert profile(base, tokens).status_code == 200
        assert refresh(base, tokens).status_code == 200

    await change_account(settings, tokens["user"]["id"], is_active=False)

    for base in (one, two):
        assert profile(base, tokens).status_code == 401
        assert refresh(base, tokens).status_code == 401


async def test_a_changed_role_takes_effect_on_the_next_request_on_either_process(
    two_processes: tuple[str, str, Settings],
) -> None:
    one, two, settings = two_processes
    tokens = sign_up(one)
    await change_account(settings, tokens["user"]["id"], role="security")
    for base in (one, two):
        assert profile(base, tokens).json()["user"]["role"] == "security"
        assert httpx.get(f"{base}/api/audit/login-attempts", headers=bearer(tokens["access_token"])).status_code == 200

    await change_account(settings, tokens["user"]["id"], role="user")

    for base in (one, two):
        assert profile(base, tokens).json()["user"]["role"] == "user"
        assert httpx.get(f"{base}/api/audit/login-attempts", headers=bearer(tokens["access_token"])).status_code == 403
