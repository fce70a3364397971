"""Rotations committed in batches (app/sessions/direct.py) racing an ending of the same account.

A batch locks its session rows in id order, as every ending does after the user's row: the two
never deadlock, so every answer is 200 or 401 (a deadlock was a 500), and nothing a rotation handed
out outlives the ending.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from app.core.settings import Settings
from tests.helpers import STRONG_PASSWORD, bearer, new_phone, registered

ROUNDS = 4
SESSIONS = 5
PARALLEL = 3  # refreshes of each session's token at once (the field client's burst)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, register_limit=100_000)


async def test_batched_rotations_racing_logout_all_never_deadlock_and_none_survives(client: Any, db: Any) -> None:
    phone = new_phone()
    user_id = (await registered(client, phone_number=phone))["user_id"]
    credentials = {"phone_number": phone, "password": STRONG_PASSWORD}
    for number in range(ROUNDS):
        signed_in = [(await client.post("/api/auth/login", json=credentials)).json() for _ in range(SESSIONS)]
        keep = signed_in[0]
        rotations = [
            client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
            for tokens in signed_in[1:]
            for _ in range(PARALLEL)
        ]
        ending = client.post("/api/auth/logout-all", headers=bearer(keep["access_token"]))
        if number % 2:  # the ending first or last in the same turn of the event loop
            ended, *answers = await asyncio.gather(ending, *rotations)
        else:
            *answers, ended = await asyncio.gather(*rotations, ending)
        assert ended.status_code == 200, ended.text
        assert {answer.status_code for answer in answers} <= {200, 401}, [a.text for a in answers]
        handed_out = [answer.json()["refresh_token"] for answer in answers if answer.status_code == 200]
        for token in handed_out:
            again = await client.post("/api/auth/refresh", json={"refresh_token": token})
            assert again.status_code == 401, "a token rotated in a batch outlived the ending"
        live = await db.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1 AND ended_at IS NULL", user_id)
        assert live == 1  # the one that asked (the kept ones of earlier rounds ended with this round)


async def test_parallel_rotations_of_one_token_each_get_a_working_token_of_their_own(client: Any) -> None:
    tokens = await registered(client, phone_number=new_phone())
    answers = await asyncio.gather(
        *(client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}) for _ in range(6))
    )
    assert [answer.status_code for answer in answers] == [200] * 6
    new_tokens = {answer.json()["refresh_token"] for answer in answers}
    assert len(new_tokens) == 6 and tokens["refresh_token"] not in new_tokens
    for token in new_tokens:
        assert (await client.post("/api/auth/refresh", json={"refresh_token": token})).status_code == 200


async def test_the_session_check_pool_plans_each_batch_for_the_tables_as_they_are(settings: Settings) -> None:
    """Postgres settles on a generic plan after five executions, costed on the tables as they were then:
    made while ``refresh_tokens`` was small, the rotation's plan scanned the whole table per batch ever
    after (``python -m bench.bench_request_paths``: rotations fell from 2,000/s to 600/s as 25,000
    tokens accumulated). The pool's connections plan every batch instead."""
    from app.sessions.direct import SessionChecks

    checks = await SessionChecks.open(settings)
    try:
        async with checks.pool.acquire() as conn:
            assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
    finally:
        await checks.close()
