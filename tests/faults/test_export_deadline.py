"""An export cannot be held open by a client that reads slowly: it is cut at its deadline."""

from __future__ import annotations

import asyncio
import socket
import time

import asyncpg
import httpx
import pytest

from tests.audit.history.support import BASE_TIME
from tests.conftest import plain_dsn
from tests.faults.support import wait_until
from tests.helpers import STRONG_PASSWORD, new_phone
from tests.servers import api_server

pytestmark = pytest.mark.slow
ROWS = 200_000
DEADLINE = 2  # AUDIT_EXPORT_DEADLINE_SECONDS in this test
FILL = """
INSERT INTO login_attempts (event_id, created_at, phone_number, success, reason, user_agent)
SELECT gen_random_uuid(), $1::timestamptz + i * interval '1 second', '+250788000001', false,
       'invalid_credentials', repeat('x', 150)
FROM generate_series(1, $2::int) AS i
"""
ACTIVE_COPIES = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND query LIKE 'COPY%' AND state <> 'idle'
"""


def sql(settings, query: str, *args):  # type: ignore[no-untyped-def]
    async def run():  # type: ignore[no-untyped-def]
        conn = await asyncpg.connect(plain_dsn(settings))
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def security_token(base: str, settings) -> str:  # type: ignore[no-untyped-def]
    phone = new_phone()
    body = {"name": "Export Test", "phone_number": phone, "password": STRONG_PASSWORD, "user_type": "parent"}
    assert httpx.post(f"{base}/api/auth/register", json=body).status_code == 201
    sql(settings, "UPDATE users SET role = 'security' WHERE phone_number = $1", "+250" + phone[1:])
    login = httpx.post(f"{base}/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    token: str = login.json()["access_token"]
    return token


def export_reader(base: str, token: str) -> socket.socket:
    """An export request on a socket with a small receive buffer, so that not reading holds the server."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    sock.sendall(
        b"GET /api/audit/login-attempts/export?format=csv HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    return sock


def test_a_slow_reader_is_cut_at_the_deadline_and_its_slot_comes_back(settings, tmp_path):
    sql(settings, FILL, BASE_TIME, ROWS)
    env = {"AUDIT_EXPORT_DEADLINE_SECONDS": str(DEADLINE), "AUDIT_EXPORT_IDLE_SECONDS": "60"}
    with api_server(settings, tmp_path, **env) as base:
        token = security_token(base, settings)
        sock = export_reader(base, token)
        received = b""
        try:
            # 512 bytes every 0.2 s: it would take the client hours to read the whole file.
            started = time.monotonic()
            while time.monotonic() - started < DEADLINE + 1:
                received += sock.recv(512)
                time.sleep(0.2)
            assert received.startswith(b"HTTP/1.1 200")
            # Past the deadline the server has let go: the COPY has stopped, the account may export again.
            assert wait_until(lambda: sql(settings, ACTIVE_COPIES) == 0, 10), "the COPY still runs"
            again = httpx.get(
                f"{base}/api/audit/login-attempts/export",
                params={"since": "2030-01-01"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert again.status_code == 200, again.text  # its one export slot is free again
            # What was already on its way arrives; then the transfer ends unfinished (no final chunk).
            sock.settimeout(30)
            while chunk := sock.recv(65536):
                received += chunk
        finally:
            sock.close()
    assert not received.endswith(b"0\r\n\r\n"), "a cut export must not look complete"
    assert received.count(b"\n") < ROWS / 2


def test_one_account_runs_one_export_at_a_time(settings, tmp_path):
    sql(settings, FILL, BASE_TIME, ROWS)
    with api_server(settings, tmp_path) as base:
        token = security_token(base, settings)
        headers = {"Authorization": f"Bearer {token}"}
        first = export_reader(base, token)
        try:
            assert first.recv(512).startswith(b"HTTP/1.1 200")  # streaming, holding its slot
            second = httpx.get(f"{base}/api/audit/login-attempts/export", headers=headers, timeout=30)
            assert second.status_code == 429 and second.json()["code"] == "exports_busy"
            other = security_token(base, settings)  # another account still has a slot of the process's two
            third = httpx.get(
                f"{base}/api/audit/login-attempts/export",
                params={"since": "2030-01-01"},
                headers={"Authorization": f"Bearer {other}"},
                timeout=30,
            )
            assert third.status_code == 200
        finally:
            first.close()


async def test_a_reader_that_stops_taking_chunks_is_cut_after_the_idle_time(db):
    from contextlib import asynccontextmanager

    from app.audit.history.export import ExportCut, ExportLimits, export_chunks
    from app.audit.history.filters import AttemptFilters

    await db.execute(FILL, BASE_TIME, 20_000)

    @asynccontextmanager
    async def connect():  # type: ignore[no-untyped-def]
        yield db

    chunks = export_chunks(connect, AttemptFilters(), "csv", limits=ExportLimits(deadline_seconds=60, idle_seconds=0.3))
    with pytest.raises(ExportCut) as cut:
        async for _ in chunks:
            await asyncio.sleep(1)  # the client reads a chunk, then nothing for longer than the idle time
    assert cut.value.why == "idle"
    assert await db.fetchval("SELECT 1") == 1  # the connection is usable: the COPY ended cleanly
