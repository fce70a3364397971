"""Postgres stopped and started under a mix of sign-ins, on a Postgres this test starts itself.

Every answer during the outage is a retryable 503 (never a 500), and every answered request has
exactly one audit row, found by its request id (attempts made during the outage reach Postgres
through Redis once it is back).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid

import asyncpg
import httpx
import msgspec
import pytest

from app.core.embedded import EmbeddedPostgres, free_port, stop_process
from app.core.postgres import plain_dsn
from app.db import migrations
from tests.conftest import _first_signing_key
from tests.faults.support import serve_env, start_serve, wait_healthy
from tests.helpers import STRONG_PASSWORD, bearer, new_phone

pytestmark = pytest.mark.slow
CLIENTS = 4
_addresses = itertools.count(1)


async def sign_ins(
    base: str, members: list[str], stop: asyncio.Event, answers: list[tuple[str, httpx.Response]]
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while not stop.is_set():
            n = next(_addresses)
            request_id = str(uuid.uuid4())
            wrong = n % 3 == 0
            body = {
                "phone_number": members[n % len(members)],
                "password": "Wrong-Password-77" if wrong else STRONG_PASSWORD,
            }
            headers = {"X-Request-Id": request_id, "X-Forwarded-For": f"41.186.{n // 250 % 250}.{n % 250 + 1}"}
            try:
                response = await http.post("/api/auth/login", json=body, headers=headers)
            except httpx.HTTPError:
                continue  # no answer: nothing to reconcile
            answers.append((request_id, response))
            await asyncio.sleep(0.02)


async def signed_in_calls(base: str, tokens: dict[str, str]) -> list[httpx.Response]:
    """A session's header-form refresh (answered in front of routing when Postgres is up) and its profile."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        return [
            await http.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])),
            await http.get("/api/auth/profile", headers=bearer(tokens["access_token"])),
        ]


async def run_outage(
    base: str, postgres: EmbeddedPostgres, members: list[str], session: dict[str, str], probes: list[httpx.Response]
) -> tuple[list, list]:  # type: ignore[type-arg]
    before: list[tuple[str, httpx.Response]] = []
    during: list[tuple[str, httpx.Response]] = []
    after: list[tuple[str, httpx.Response]] = []
    for phase, seconds, action in ((before, 1.5, None), (during, 3.0, "stop"), (after, 3.0, "start")):
        if action == "stop":
            await asyncio.to_thread(postgres.stop)
        elif action == "start":
            await asyncio.to_thread(postgres.start)
            await asyncio.sleep(1.5)  # the pool's stale connections are found by pre-ping, not by clients
        stop = asyncio.Event()
        tasks = [asyncio.create_task(sign_ins(base, members, stop, phase)) for _ in range(CLIENTS)]
        await asyncio.sleep(seconds)
        if action == "stop":
            probes.extend(await signed_in_calls(base, session))
        stop.set()
        await asyncio.gather(*tasks)
    return before + after, during


async def audit_rows(dsn: str, request_ids: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT request_id, count(*) AS n FROM login_attempts WHERE request_id = ANY($1::text[]) GROUP BY 1",
            request_ids,
        )
    finally:
        await conn.close()
    return {row["request_id"]: row["n"] for row in rows}


def test_postgres_stopped_and_started_under_sign_ins(settings, tmp_path):
    postgres = EmbeddedPostgres(tmp_path / "pg", database="outage")
    database_url = postgres.start()
    process = None
    try:
        own = msgspec.structs.replace(
            settings, database_url=type(settings).from_env({}, database_url=database_url).database_url
        )
        migrations.upgrade(own)
        asyncio.run(_first_signing_key(own))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = tmp_path / "serve.log"
        env = serve_env(own, tmp_path, TRUSTED_PROXIES="127.0.0.1/32", AUDIT_CLAIM_IDLE_MS="1000")
        process = start_serve(env, port, log)
        wait_healthy(base, process, log)
        members = [new_phone() for _ in range(3)]
        for phone in members:
            body = {"name": "Outage Test", "phone_number": phone, "password": STRONG_PASSWORD, "user_type": "parent"}
            assert httpx.post(f"{base}/api/auth/register", json=body).status_code == 201
        login = {"phone_number": members[0], "password": STRONG_PASSWORD}
        session = httpx.post(f"{base}/api/auth/login", json=login, headers={"X-Forwarded-For": "41.186.250.1"})
        assert session.status_code == 200, session.text
        assert [r.status_code for r in asyncio.run(signed_in_calls(base, session.json()))] == [200, 200]

        probes: list[httpx.Response] = []
        served, during = asyncio.run(run_outage(base, postgres, members, session.json(), probes))
        for probe in probes:  # a signed-in request and a refresh meet the same 503 as sign-in
            assert probe.status_code == 503, probe.text
            assert probe.json()["code"] == "database_unavailable", probe.text
            assert int(probe.headers["retry-after"]) > 0

        outage_statuses = {response.status_code for _, response in during}
        assert during and 503 in outage_statuses and outage_statuses <= {429, 503}, sorted(outage_statuses)
        for _, response in during:
            if response.status_code == 429:
                continue  # the limits live in Redis and still hold
            assert response.json()["code"] in ("database_unavailable", "service_unavailable"), response.text
            assert int(response.headers["retry-after"]) > 0
        assert {response.status_code for _, response in served} <= {200, 401, 429, 503}
        assert any(response.status_code == 200 for _, response in served[-10:]), "sign-in is back after the outage"

        answered = [request_id for request_id, _ in served + during]
        dsn = plain_dsn(own.database_url or "")
        counts: dict[str, int] = {}
        for _ in range(60):  # the writer empties the backlog once Postgres is back
            counts = asyncio.run(audit_rows(dsn, answered))
            if len(counts) == len(answered):
                break
            asyncio.run(asyncio.sleep(0.5))
        missing = [request_id for request_id in answered if request_id not in counts]
        assert not missing, f"{len(missing)} of {len(answered)} answered attempts have no audit row"
        assert set(counts.values()) == {1}, "an attempt was recorded twice"
        outage_log = log.read_text()
        assert outage_log.count("database unavailable") <= 2, "logged once per outage, not once per request"
        assert "Traceback" not in outage_log
    finally:
        if process is not None:
            stop_process(process, 20)
        postgres.stop()
