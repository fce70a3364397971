"""``keys rotate`` while two API processes serve sign-ins: not one verification fails.

Each sign-in on one process is checked on the other (profile with the access token, refresh with the
refresh token) and against the other's JWKS with PyJWKClient, before, during and after the new key
takes over. Short timings (key set re-read every second, JWKS max-age 1 s) make the whole rotation
fit in a few seconds; the rule it checks is the same at production timings. Bounded in time and
count; prints what it measured (docs/signing-keys.md records a run).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from pathlib import Path

import httpx
import jwt
import pytest

from app.core.settings import Settings
from tests.helpers import STRONG_PASSWORD, new_phone
from tests.platform.support import run_cli
from tests.servers import api_server

pytestmark = pytest.mark.slow
FAST_KEYS = {"SIGNING_KEYS_REFRESH_SECONDS": "1", "JWKS_MAX_AGE_SECONDS": "1"}
# Concurrent sign-ins from one address each reserve a failure slot; the limits are not under test here.
ROOMY_LIMITS = {"RATE_LIMIT_LOGIN_FAILURES": "1000", "ACCOUNT_MAX_FAILURES": "1000", "PIN_MAX_FAILURES": "1000"}
MAX_SIGN_INS = 1500
DEADLINE_SECONDS = 60
CONCURRENCY = 6


class Tally:
    def __init__(self) -> None:
        self.sign_ins = 0
        self.verifications = 0
        self.failures: list[str] = []
        self.kids: dict[str, int] = {}
        self.issued: list[tuple[float, str]] = []  # (time, kid)


async def one_round(
    http: httpx.AsyncClient, servers: list[str], jwks: list[jwt.PyJWKClient], phone: str, n: int, tally: Tally
) -> None:
    here, there = n % 2, (n + 1) % 2
    login = await http.post(
        f"{servers[here]}/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD}
    )
    if login.status_code != 200:
        tally.failures.append(f"login {login.status_code} {login.text}")
        return
    tokens = login.json()
    kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
    tally.sign_ins += 1
    tally.kids[kid] = tally.kids.get(kid, 0) + 1
    tally.issued.append((time.time(), kid))
    profile = await http.get(
        f"{servers[there]}/api/auth/profile", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    refreshed = await http.post(
        f"{servers[there]}/api/auth/refresh", headers={"Authorization": f"Bearer {tokens['refresh_token']}"}
    )
    for what, answer in (("profile", profile), ("refresh", refreshed)):
        tally.verifications += 1
        if answer.status_code != 200:
            tally.failures.append(f"{what} on the other process: {answer.status_code} {answer.text}")
    try:
        key = await asyncio.to_thread(jwks[there].get_signing_key_from_jwt, tokens["access_token"])
        jwt.decode(tokens["access_token"], key.key, algorithms=[key.algorithm_name], audience="ladys-essence")
    except jwt.PyJWTError as exc:
        tally.failures.append(f"PyJWKClient on the other process's JWKS: {exc!r}")
    tally.verifications += 1


async def load(servers: list[str], phones: list[str], stop: asyncio.Event, tally: Tally) -> None:
    jwks = [jwt.PyJWKClient(f"{base}/.well-known/jwks.json", cache_jwk_set=True, lifespan=1) for base in servers]
    counter = iter(range(MAX_SIGN_INS))
    async with httpx.AsyncClient(timeout=30) as http:

        async def worker(w: int) -> None:
            for n in counter:
                if stop.is_set():
                    return
                await one_round(http, servers, jwks, phones[w % len(phones)], n, tally)

        await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))


def test_rotation_under_load_fails_no_verification(settings: Settings, tmp_path: Path) -> None:
    for i in range(2):
        (tmp_path / f"api{i}").mkdir()
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(api_server(settings, tmp_path / f"api{i}", **FAST_KEYS, **ROOMY_LIMITS))
            for i in range(2)
        ]
        phones = []
        for _ in range(CONCURRENCY):
            phone = new_phone()
            body = {"name": "Aline Uwase", "phone_number": phone, "password": STRONG_PASSWORD, "user_type": "parent"}
            assert httpx.post(f"{servers[0]}/api/auth/register", json=body, timeout=30).status_code == 201
            phones.append(phone)

        tally = Tally()

        async def scenario() -> datetime.datetime:
            stop = asyncio.Event()
            traffic = asyncio.create_task(load(servers, phones, stop, tally))
            await asyncio.sleep(2)
            rotated = await asyncio.to_thread(run_cli, settings, "keys", "rotate", **FAST_KEYS)
            assert rotated.exit_code == 0, rotated.output
            activates_at = datetime.datetime.fromisoformat(rotated.output.split("signs from ")[1].split()[0])
            started = time.monotonic()
            while time.monotonic() - started < DEADLINE_SECONDS and not traffic.done():
                if datetime.datetime.now(datetime.UTC) > activates_at + datetime.timedelta(seconds=4):
                    break
                await asyncio.sleep(0.2)
            stop.set()
            await traffic
            return activates_at

        activates_at = asyncio.run(scenario())

    print(
        f"\nrotation under load: {tally.sign_ins} sign-ins on 2 processes, {tally.verifications} cross-process "
        f"verifications, {len(tally.failures)} failed; tokens per kid: {tally.kids}"
    )
    assert tally.failures == []
    assert len(tally.kids) == 2, "the traffic spanned the switch from the old key to the new one"
    switched = activates_at.timestamp() + 1.5  # each process re-reads its key set every second
    new_kid = next(kid for moment, kid in tally.issued if moment > switched)
    assert {kid for moment, kid in tally.issued if moment > switched} == {new_kid}
    assert {kid for moment, kid in tally.issued if moment < activates_at.timestamp() - 0.5} == set(tally.kids) - {
        new_kid
    }
