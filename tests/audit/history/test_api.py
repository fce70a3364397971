"""The security team's audit API over real Postgres: roles, filters, pages, export, summary, records."""

from __future__ import annotations

import asyncio
import csv
import datetime
import gc
import io
import json
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import asyncpg
import pytest

from app.audit.history import connections as audit_connections
from app.audit.history.cursor import Cursor
from app.audit.history.export import STOP_GRACE_SECONDS
from app.audit.history.summary import parse_summary_request, pin_locked_sql
from tests.audit.history.support import BASE_TIME, Row, insert_rows, staff_headers, staff_token
from tests.conftest import plain_dsn
from tests.helpers import bearer, e164, new_phone

ATTEMPTS = "/api/audit/login-attempts"
EXPORT = "/api/audit/login-attempts/export"
SUMMARY = "/api/audit/summary"
QUERIES = "/api/audit/queries"
ADMIN_ACTIONS = "/api/audit/admin-actions"
ADMIN_ACTIONS_EXPORT = "/api/audit/admin-actions/export"
MINUTE = datetime.timedelta(minutes=1)


def audit_paths(app: Any) -> list[str]:
    return sorted({route.path for route in app.routes if route.path.startswith("/api/audit")})


# ---- access ---------------------------------------------------------------------------------------


async def test_every_audit_route_needs_a_token(client, app):
    paths = audit_paths(app)
    # a new route must be added to these tests
    assert set(paths) == {ATTEMPTS, EXPORT, SUMMARY, QUERIES, ADMIN_ACTIONS, ADMIN_ACTIONS_EXPORT}
    for path in paths:
        response = await client.get(path)
        assert response.status_code == 401, path
        assert response.json()["code"] == "not_authenticated"
        response = await client.get(path, headers=bearer("not-a-token"))
        assert response.status_code == 401, path


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("user", set()),
        ("security", {ATTEMPTS, EXPORT, SUMMARY, ADMIN_ACTIONS, ADMIN_ACTIONS_EXPORT}),
        ("admin", {ATTEMPTS, EXPORT, SUMMARY, QUERIES, ADMIN_ACTIONS, ADMIN_ACTIONS_EXPORT}),
    ],
)
async def test_roles(client, app, db, role, allowed):
    headers = await staff_headers(client, db, role)
    for path in audit_paths(app):
        response = await client.get(path, headers=headers)
        expected = 200 if path in allowed else 403
        assert response.status_code == expected, (role, path, response.text)
        if expected == 403:
            assert response.json() == {"message": "You do not have permission to do this.", "code": "forbidden"}


async def test_a_role_taken_away_applies_to_the_next_request(client, db):
    token, account = await staff_token(client, db, "security")
    assert (await client.get(ATTEMPTS, headers=bearer(token))).status_code == 200
    await db.execute("UPDATE users SET role = 'user' WHERE id = $1", account["user_id"])
    assert (await client.get(ATTEMPTS, headers=bearer(token))).status_code == 403


# ---- listing --------------------------------------------------------------------------------------


async def test_filters_by_phone_in_any_form_newest_first(client, db):
    headers = await staff_headers(client, db, "security")
    local = new_phone()
    rows = await insert_rows(
        db,
        [
            Row(phone_number=e164(local), created_at=BASE_TIME, ip_address="2c0f:eb68:1:2::5"),
            Row(phone_number=e164(local), created_at=BASE_TIME + MINUTE, success=True, reason="ok", user_id=7),
            Row(phone_number="+250788999999", created_at=BASE_TIME + 2 * MINUTE),
        ],
    )
    for typed in (local, e164(local), "+250 " + local[1:4] + " " + local[4:]):
        response = await client.get(ATTEMPTS, params={"phone_number": typed}, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [item["id"] for item in body["items"]] == [rows[1].id, rows[0].id]
        assert body["next_cursor"] is None
    newest = body["items"][0]
    assert newest == {
        "id": rows[1].id,
        "event_id": str(rows[1].event_id),
        "created_at": "2026-11-20T12:01:00Z",
        "phone_number": e164(local),
        "user_id": 7,
        "success": True,
        "outcome": "success",
        "reason": "ok",
        "auth_method": "password",
        "ip_address": "41.186.1.2",
        "user_agent": "okhttp/4.12.0",
        "request_id": None,
        "channel": "http",
        "session_id": None,
        "service_name": None,
    }
    assert body["items"][1]["ip_address"] == "2c0f:eb68:1:2::5"
    assert body["items"][1]["outcome"] == "failure"


async def test_channel_filter_and_the_summary_split(client, db):
    headers = await staff_headers(client, db, "security")
    rows = await insert_rows(
        db,
        [
            Row(reason="ok", success=True),
            Row(channel="ussd", session_id="ATUid_1", service_name="gw", auth_method="pin"),
            Row(channel="ussd", session_id="ATUid_2", service_name="gw", auth_method="pin", reason="session_locked"),
        ],
    )
    ussd = (await client.get("/api/audit/login-attempts?channel=USSD", headers=headers)).json()["items"]
    assert [item["id"] for item in ussd] == [rows[2].id, rows[1].id]
    assert {item["session_id"] for item in ussd} == {"ATUid_1", "ATUid_2"}
    http = (await client.get("/api/audit/login-attempts?channel=http", headers=headers)).json()["items"]
    assert [item["id"] for item in http] == [rows[0].id]
    sms = (await client.get("/api/audit/login-attempts?channel=sms", headers=headers)).json()["items"]
    assert sms == []  # recovery codes by SMS (app/recovery): a channel, none in these rows
    bad = await client.get("/api/audit/login-attempts?channel=fax", headers=headers)
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "channel"
    since, until = "2026-11-20T00:00:00Z", "2026-11-21T00:00:00Z"
    summary = (await client.get(f"/api/audit/summary?since={since}&until={until}", headers=headers)).json()
    split = {item["channel"]: item for item in summary["channels"]}
    assert split["http"]["attempts"] == 1 and split["http"]["successes"] == 1
    assert split["ussd"]["attempts"] == 2 and split["ussd"]["failures"] == 1 and split["ussd"]["refusals"] == 1
    assert split.get("sms", {"attempts": 0})["attempts"] == 0


async def test_ip_and_cidr_filters(client, db):
    headers = await staff_headers(client, db, "security")
    rows = await insert_rows(
        db,
        [
            Row(ip_address="41.186.7.9"),
            Row(ip_address="41.187.0.1"),
            Row(ip_address="2c0f:eb68:1:2::5"),
            Row(ip_address="2c0f:eb68:1:3::5"),
            Row(ip_address=None),
        ],
    )
    expectations = {
        "41.186.0.0/16": {rows[0].id},
        "41.186.7.9": {rows[0].id},
        "41.186.7.9/32": {rows[0].id},
        "41.0.0.0/8": {rows[0].id, rows[1].id},
        "2c0f:eb68:1:2::/64": {rows[2].id},
        "2c0f:eb68::/32": {rows[2].id, rows[3].id},
        "0.0.0.0/0": {rows[0].id, rows[1].id},
    }
    for ip, expected in expectations.items():
        response = await client.get(ATTEMPTS, params={"ip": ip}, headers=headers)
        assert response.status_code == 200, response.text
        assert {item["id"] for item in response.json()["items"]} == expected, ip


async def test_bad_filters_are_400_with_every_field_named(client, db):
    headers = await staff_headers(client, db, "security")
    params = {
        "ip": "41.186.0.0/33",
        "success": "maybe",
        "reason": "ok,guessed",
        "auth_method": "sms",
        "user_id": "seven",
        "since": "yesterday",
        "until": "2026-13-01",
        "cursor": "not-a-cursor",
        "limit": "1001",
    }
    response = await client.get(ATTEMPTS, params=params, headers=headers)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "validation_error"
    assert {error["field"] for error in body["errors"]} == set(params)
    assert all(error["message"] for error in body["errors"])


async def test_until_before_since_is_a_field_error(client, db):
    headers = await staff_headers(client, db, "security")
    response = await client.get(
        ATTEMPTS, params={"since": "2026-11-02", "until": "2026-11-01T23:00:00+02:00"}, headers=headers
    )
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "until", "message": "until must be later than since."}]


@pytest.mark.parametrize("limit", ["0", "-1", "1.5", "ten"])
async def test_limit_out_of_range(client, db, limit):
    headers = await staff_headers(client, db, "security")
    response = await client.get(ATTEMPTS, params={"limit": limit}, headers=headers)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "limit"


async def test_tampered_cursor_is_a_400_not_a_500(client, db):
    headers = await staff_headers(client, db, "security")
    await insert_rows(db, [Row(created_at=BASE_TIME + n * MINUTE) for n in range(3)])
    first = (await client.get(ATTEMPTS, params={"limit": "1"}, headers=headers)).json()
    cursor = first["next_cursor"]
    for tampered in (cursor[:-3], cursor + "x!", "A" * 500, "eyJ0IjoiYSIsImkiOjF9", "e30", "bnVsbA"):
        response = await client.get(ATTEMPTS, params={"cursor": tampered}, headers=headers)
        assert response.status_code == 400, tampered
        assert response.json()["errors"][0]["field"] == "cursor"


async def test_limit_defaults_to_100_and_caps_at_1000(client, db):
    headers = await staff_headers(client, db, "security")
    await insert_rows(db, [Row(created_at=BASE_TIME + n * MINUTE) for n in range(1005)])
    default = (await client.get(ATTEMPTS, headers=headers)).json()
    assert len(default["items"]) == 100 and default["next_cursor"]
    most = (await client.get(ATTEMPTS, params={"limit": "1000"}, headers=headers)).json()
    assert len(most["items"]) == 1000 and most["next_cursor"]
    rest = (await client.get(ATTEMPTS, params={"cursor": most["next_cursor"], "limit": "1000"}, headers=headers)).json()
    assert len(rest["items"]) == 5 and rest["next_cursor"] is None


async def test_pages_visit_every_row_once_while_new_rows_arrive(client, db):
    """Ties on created_at included: the id breaks them, and the cursor carries both."""
    headers = await staff_headers(client, db, "security")
    existing = await insert_rows(db, [Row(created_at=BASE_TIME + (n // 3) * MINUTE) for n in range(250)])
    expected = [row.id for row in sorted(existing, key=lambda r: (r.created_at, r.id), reverse=True)]
    stop = asyncio.Event()

    async def keep_inserting() -> int:
        added = 0
        while not stop.is_set():
            newer = BASE_TIME + datetime.timedelta(days=1, microseconds=added)
            await insert_rows(db, [Row(created_at=newer), Row(created_at=newer)])
            added += 2
            await asyncio.sleep(0.001)
        return added

    params: dict[str, str] = {"limit": "37"}
    first = (await client.get(ATTEMPTS, params=params, headers=headers)).json()
    seen = [item["id"] for item in first["items"]]
    params["cursor"] = first["next_cursor"]
    writer = asyncio.create_task(keep_inserting())
    pages = 1
    try:
        while params["cursor"]:
            await asyncio.sleep(0.01)  # let rows arrive between pages
            body = (await client.get(ATTEMPTS, params=params, headers=headers)).json()
            pages += 1
            seen += [item["id"] for item in body["items"]]
            params["cursor"] = body["next_cursor"]
    finally:
        stop.set()
        added = await writer
    assert added > 0
    assert seen == expected
    assert pages == 7
    # Meanwhile the newest rows are there for whoever starts again from the first page.
    again = (await client.get(ATTEMPTS, params={"limit": "1"}, headers=headers)).json()
    assert again["items"][0]["created_at"].startswith("2026-11-21")


# ---- export ---------------------------------------------------------------------------------------

FORMULAS = ["=1+2", "+SUM(A1)", "-2+3", "@SUM(A1:A2)", "\t=cmd", "\r=cmd", '=HYPERLINK("http://x")']


async def test_csv_export_neutralises_formulas(client, db):
    headers = await staff_headers(client, db, "security")
    rows = [
        Row(
            phone_number=formula[:20],
            user_agent=formula + " ua",
            request_id=formula,
            created_at=BASE_TIME + n * MINUTE,
        )
        for n, formula in enumerate(FORMULAS)
    ]
    rows.append(Row(phone_number="+250788123456", user_agent='plain, "quoted"\nnewline', created_at=BASE_TIME))
    rows = await insert_rows(db, rows)
    response = await client.get(EXPORT, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(response.text, newline="")))
    assert len(table) == len(rows)
    by_id = {int(record["id"]): record for record in table}
    for row in rows:
        record = by_id[row.id]
        for column in ("phone_number", "user_agent", "request_id"):
            original = getattr(row, column)
            if original is None:
                assert record[column] == ""
            elif original[0] in "=+-@\t\r":
                assert record[column] == "'" + original, column
            else:
                assert record[column] == original
        assert record["ip_address"] == "41.186.1.2"
        assert record["success"] == "false"
    # No cell of the file starts a formula.
    for record in table:
        assert not any(value[:1] in ("=", "+", "-", "@", "\t", "\r") for value in record.values())
    assert by_id[rows[-1].id]["phone_number"] == "'+250788123456"


async def test_ndjson_export_has_the_rows_as_they_are_with_the_filters_applied(client, db):
    headers = await staff_headers(client, db, "security")
    rows = await insert_rows(
        db,
        [
            Row(created_at=BASE_TIME + n * MINUTE, user_agent='quote " backslash \\ tab \t', success=n % 2 == 0)
            for n in range(50)
        ],
    )
    response = await client.get(EXPORT, params={"format": "ndjson", "success": "false"}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    objects = [json.loads(line) for line in lines]
    expected = [row for row in reversed(rows) if not row.success]
    assert [obj["id"] for obj in objects] == [row.id for row in expected]
    assert objects[0]["user_agent"] == 'quote " backslash \\ tab \t'
    assert objects[0]["created_at"] == expected[0].created_at.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    assert objects[0]["success"] is False and objects[0]["phone_number"] == "+250788000001"


async def test_export_checks_filters_and_format_before_streaming(client, db):
    headers = await staff_headers(client, db, "security")
    response = await client.get(EXPORT, params={"format": "xlsx", "ip": "nope"}, headers=headers)
    assert response.status_code == 400
    assert {e["field"] for e in response.json()["errors"]} == {"format", "ip"}


async def test_exports_beyond_the_concurrency_cap_are_refused_until_one_ends(app, client, db):
    headers = await staff_headers(client, db, "security")
    await insert_rows(db, [Row(created_at=BASE_TIME + n * MINUTE) for n in range(3)])
    slots = app.state.export_slots
    released: list[int] = []

    def connect(number: int) -> Any:
        @asynccontextmanager
        async def held() -> AsyncIterator[str]:
            try:
                yield f"connection {number}"
            finally:
                released.append(number)

        return held

    # Exports already streaming hold every slot (AUDIT_EXPORT_CONCURRENCY, 2 by default).
    async with AsyncExitStack() as running:
        first = await running.enter_async_context(slots.connection(connect(1))())
        for number in range(2, app.state.settings.audit_export_concurrency + 1):
            await running.enter_async_context(slots.connection(connect(number))())
        assert first == "connection 1"
        busy = await client.get(EXPORT, headers=headers)
        assert busy.status_code == 429
        assert busy.json()["code"] == "exports_busy" and busy.json()["message"]
        assert busy.headers["retry-after"] == "30"
    assert sorted(released) == list(range(1, app.state.settings.audit_export_concurrency + 1))

    # The slots came back with their connections: exports run again, and give theirs back.
    for _ in range(app.state.settings.audit_export_concurrency + 1):
        response = await client.get(EXPORT, params={"format": "ndjson"}, headers=headers)
        assert response.status_code == 200
        assert len(response.text.splitlines()) == 3
    assert slots.in_use == 0  # no slot left taken


async def test_a_client_hanging_up_mid_export_gives_its_slot_and_connection_back(app, client, db):
    headers = await staff_headers(client, db, "security")
    await db.execute(
        "INSERT INTO login_attempts (event_id, created_at, phone_number, success, reason, user_agent) "
        "SELECT gen_random_uuid(), $1::timestamptz + i * interval '1 second', '+250788000001', false, "
        "'invalid_credentials', repeat('x', 200) FROM generate_series(1, 50000) AS i",
        BASE_TIME,
    )
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": EXPORT,
        "raw_path": EXPORT.encode(),
        "query_string": b"format=csv",
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }

    async def hang_up_mid_export() -> list[bytes]:
        chunks: list[bytes] = []
        hung_up = asyncio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await hung_up.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"])
                if len(chunks) > 1:
                    # The browser stopped reading (its download was cancelled): the write never drains.
                    hung_up.set()
                    await asyncio.Event().wait()

        await asyncio.wait_for(app(scope, receive, send), 30)
        await asyncio.sleep(0.1)
        assert app.state.export_slots.in_use == 0  # the slot is back at once, not at some later GC
        return chunks

    gc.disable()  # what is released must be released by the app, not by a collection happening to run
    try:
        # In the event loop that runs the app's lifespan (the test client's portal thread): the app's
        # pool belongs to that loop, and a connection driven from two loops at once corrupts asyncpg.
        chunks = await anyio.to_thread.run_sync(client.blocking_portal.call, hang_up_mid_export)
        assert chunks and sum(map(len, chunks)) < 50_000 * 200  # stopped long before the end
        # and the COPY ends by itself at its next chunk (its cancel request is a connection of its
        # own, so this takes a moment), well before STOP_GRACE_SECONDS would cut it off.
        waited = 0.0
        while await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%' AND state = 'active'"):
            assert waited < STOP_GRACE_SECONDS / 2, "the COPY is still running after its reader hung up"
            await asyncio.sleep(0.05)
            waited += 0.05
    finally:
        gc.enable()


def asgi_get(path: str, query: bytes, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


@pytest.mark.parametrize("path", [EXPORT, ADMIN_ACTIONS_EXPORT])
async def test_two_exports_started_at_once_by_one_account_one_streams_whole_the_other_is_refused_first(
    app, client, db, path
):
    """The per-account cap (AUDIT_EXPORTS_PER_USER, 1) is taken before the response starts: the second
    of two simultaneous exports hears 429 before any byte, rather than a 200 cut after its head."""
    assert app.state.settings.audit_exports_per_user == 1 < app.state.settings.audit_export_concurrency
    headers = await staff_headers(client, db, "security")
    await insert_rows(db, [Row(created_at=BASE_TIME + n * MINUTE) for n in range(300)])
    scope = asgi_get(path, b"format=ndjson", headers)

    async def export_once() -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        requested = False
        answered = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await answered.wait()  # the client stays to the end (then, as servers do, it is gone)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered.set()

        await app(dict(scope), receive, send)
        return messages

    async def both_at_once() -> list[list[dict[str, Any]]]:
        answers = await asyncio.wait_for(asyncio.gather(export_once(), export_once()), 30)
        await asyncio.sleep(0.1)
        assert app.state.export_slots.in_use == 0  # both slots back
        return answers

    # In the app's own event loop (see the hang-up test below).
    answers = await anyio.to_thread.run_sync(client.blocking_portal.call, both_at_once)
    starts = [messages[0] for messages in answers]
    assert all(start["type"] == "http.response.start" for start in starts)
    assert sorted(start["status"] for start in starts) == [200, 429]
    refused = next(messages for messages in answers if messages[0]["status"] == 429)
    streamed = next(messages for messages in answers if messages[0]["status"] == 200)
    assert [m["status"] for m in refused if m["type"] == "http.response.start"] == [429]
    assert dict(refused[0]["headers"])[b"retry-after"] == b"30"
    refusal = json.loads(b"".join(m.get("body", b"") for m in refused[1:]))
    assert refusal["code"] == "exports_busy" and refusal["message"]
    assert streamed[-1]["type"] == "http.response.body" and not streamed[-1].get("more_body", False)
    lines = b"".join(m.get("body", b"") for m in streamed[1:]).splitlines()
    expected = 300 if path == EXPORT else await db.fetchval("SELECT count(*) FROM admin_actions")
    assert len(lines) == expected
    assert all(json.loads(line) for line in lines)


# ---- summary --------------------------------------------------------------------------------------


async def test_summary_counts_buckets_clients_phones_and_pin_locks(client, db):
    headers = await staff_headers(client, db, "security")
    hour = datetime.timedelta(hours=1)
    t0 = BASE_TIME
    victim, other = "+250788000010", "+250788000020"
    await insert_rows(
        db,
        [
            # 12:00-13:00 — two successes and a failure from one IPv4 client
            Row(created_at=t0, success=True, reason="ok", phone_number=other, ip_address="41.186.1.1"),
            Row(created_at=t0 + MINUTE, success=True, reason="ok", phone_number=other, ip_address="41.186.1.1"),
            Row(created_at=t0 + 2 * MINUTE, reason="invalid_request", phone_number=other, ip_address="41.186.1.1"),
            # 13:00-14:00 — nothing; 14:00-15:00 — an IPv6 /64 guessing the victim's PIN, then locked out
            *[
                Row(created_at=t0 + 2 * hour + n * MINUTE, phone_number=victim, ip_address=f"2c0f:eb68:9:1::{n + 1}")
                for n in range(4)
            ],
            Row(
                created_at=t0 + 2 * hour + 10 * MINUTE,
                reason="pin_locked",
                phone_number=victim,
                ip_address="2c0f:eb68:9:1::9",
            ),
            Row(
                created_at=t0 + 2 * hour + 11 * MINUTE,
                reason="pin_locked",
                phone_number=victim,
                ip_address="2c0f:eb68:9:2::1",
            ),
            Row(created_at=t0 + 2 * hour + 12 * MINUTE, reason="rate_limited", phone_number=other, ip_address=None),
            # outside the range
            Row(created_at=t0 + 3 * hour, reason="pin_locked", phone_number=other),
            Row(created_at=t0 - MINUTE, reason="pin_locked", phone_number=other),
        ],
    )
    params = {"since": "2026-11-20T12:00:00Z", "until": "2026-11-20T15:00:00Z", "bucket": "hour", "top": "5"}
    response = await client.get(SUMMARY, params=params, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["since"] == "2026-11-20T12:00:00Z" and body["until"] == "2026-11-20T15:00:00Z"
    assert body["bucket"] == "hour"
    assert body["totals"] == {"attempts": 10, "successes": 2, "failures": 5, "refusals": 3}
    assert body["buckets"] == [
        {"start": "2026-11-20T12:00:00Z", "successes": 2, "failures": 1, "refusals": 0},
        {"start": "2026-11-20T13:00:00Z", "successes": 0, "failures": 0, "refusals": 0},
        {"start": "2026-11-20T14:00:00Z", "successes": 0, "failures": 4, "refusals": 3},
    ]
    assert body["top_ips"] == [
        {"client": "2c0f:eb68:9:1::/64", "attempts": 5, "successes": 0, "failures": 4, "refusals": 1},
        {"client": "41.186.1.1", "attempts": 3, "successes": 2, "failures": 1, "refusals": 0},
        {"client": "2c0f:eb68:9:2::/64", "attempts": 1, "successes": 0, "failures": 0, "refusals": 1},
    ]
    assert body["top_phone_numbers"] == [
        {"phone_number": victim, "attempts": 6, "successes": 0, "failures": 4, "refusals": 2},
        {"phone_number": other, "attempts": 4, "successes": 2, "failures": 1, "refusals": 1},
    ]
    assert body["pin_locked"] == [
        {
            "phone_number": victim,
            "refused_attempts": 2,
            "first_at": "2026-11-20T14:10:00Z",
            "last_at": "2026-11-20T14:11:00Z",
        }
    ]
    assert body["pin_locked_truncated"] is False

    # top=0: the same figures without the two lists that read every row of the range.
    counts_only = (await client.get(SUMMARY, params={**params, "top": "0"}, headers=headers)).json()
    assert counts_only["top_ips"] == [] and counts_only["top_phone_numbers"] == []
    assert {key: value for key, value in counts_only.items() if not key.startswith("top_")} == {
        key: value for key, value in body.items() if not key.startswith("top_")
    }


WAITING_FOR_ATTEMPTS = """
SELECT count(*) FROM pg_locks JOIN pg_class ON pg_class.oid = pg_locks.relation
WHERE NOT pg_locks.granted AND pg_class.relname = 'login_attempts'
"""


async def test_a_summary_chosen_as_a_deadlock_victim_is_a_503(client, db, settings):
    """A migration that locks login_attempts and then the rollups, while a summary holds the rollups
    and waits for login_attempts: Postgres breaks the deadlock by failing the summary (which waited
    first), and the client gets a 503 to retry, not a 500."""
    headers = await staff_headers(client, db, "security")
    params = {"since": "2026-11-01", "until": "2026-11-07", "bucket": "hour", "top": "0"}
    took_attempts, done = threading.Event(), threading.Event()

    def migration() -> None:  # its own thread and loop: the test client blocks this loop while it runs
        async def run() -> None:
            conn = await asyncpg.connect(plain_dsn(settings))
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE login_attempts IN ACCESS EXCLUSIVE MODE")
                    took_attempts.set()
                    # Until the summary has read the rollups and waits for the rows (a fixed pause here
                    # lost the race on a slow machine: the summary came later, found both tables taken,
                    # waited and got its 200).
                    for _ in range(500):
                        if await conn.fetchval(WAITING_FOR_ATTEMPTS):
                            break
                        await asyncio.sleep(0.02)
                    await conn.execute("LOCK TABLE login_attempts_hourly IN ACCESS EXCLUSIVE MODE")
            finally:
                await conn.close()
                done.set()

        asyncio.run(run())

    thread = threading.Thread(target=migration)
    thread.start()
    assert took_attempts.wait(10)
    response = await client.get(SUMMARY, params=params, headers=headers)
    thread.join(20)
    assert done.is_set()
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "audit_busy" and response.headers["retry-after"] == "5"


async def test_pin_locked_numbers_are_found_through_their_partial_index(db):
    """The summary's PIN-locked list reads ix_login_attempts_pin_locked, not the month's other rows."""
    await db.execute(
        "INSERT INTO login_attempts (event_id, created_at, phone_number, success, reason) "
        "SELECT gen_random_uuid(), $1::timestamptz + i * interval '1 minute', '+250788000001', false, "
        "CASE WHEN i % 5000 = 0 THEN 'pin_locked' ELSE 'invalid_credentials' END "
        "FROM generate_series(1, 20000) AS i",
        BASE_TIME,
    )
    await db.execute("ANALYZE login_attempts")
    partial = {
        row["indexname"]
        for row in await db.fetch("SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%pin_locked%'")
    }
    request = parse_summary_request({"since": "2026-11-01", "until": "2026-12-31"}, "RW")
    sql, args = pin_locked_sql(request)
    plan = "\n".join(row[0] for row in await db.fetch(f"EXPLAIN {sql}", *args))
    assert any(name in plan for name in partial), plan


async def test_summary_defaults_and_bad_parameters(client, db):
    headers = await staff_headers(client, db, "security")
    now = datetime.datetime.now(datetime.UTC)
    await insert_rows(db, [Row(created_at=now - datetime.timedelta(minutes=5))])
    body = (await client.get(SUMMARY, headers=headers)).json()
    assert body["bucket"] == "hour" and body["totals"]["attempts"] == 1
    assert len(body["buckets"]) in (24, 25)  # the last 24 hours, by whole UTC hours
    response = await client.get(
        SUMMARY, params={"bucket": "minute", "since": "2026-01-01", "until": "2026-02-01"}, headers=headers
    )
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "bucket"
    response = await client.get(SUMMARY, params={"bucket": "week", "top": "500"}, headers=headers)
    assert {e["field"] for e in response.json()["errors"]} == {"bucket", "top"}


# ---- who looked -----------------------------------------------------------------------------------


async def test_every_audit_query_is_recorded_and_admins_can_see_them(client, db):
    security_token, security = await staff_token(client, db, "security")
    admin_headers = await staff_headers(client, db, "admin")
    await insert_rows(db, [Row(created_at=BASE_TIME + n * MINUTE) for n in range(3)])
    forwarded = {**bearer(security_token), "User-Agent": "dashboard"}
    await client.get(ATTEMPTS, params={"ip": "41.186.0.0/16", "success": "false", "limit": "2"}, headers=forwarded)
    await client.get(EXPORT, params={"format": "ndjson", "reason": "invalid_credentials"}, headers=forwarded)
    await client.get(SUMMARY, params={"since": "2026-11-20", "until": "2026-11-21"}, headers=forwarded)
    assert (await client.get(QUERIES, headers=forwarded)).status_code == 403

    response = await client.get(QUERIES, params={"user_id": str(security["user_id"])}, headers=admin_headers)
    assert response.status_code == 200, response.text
    records = response.json()["items"]
    assert [r["action"] for r in records] == ["summary", "export", "list"]
    summary, export, listing = records
    assert listing["user_id"] == security["user_id"]
    assert listing["actor"] == security["user"]["phone_number"]
    assert listing["origin"] == "api" and listing["client_ip"] == "127.0.0.1"
    assert listing["filters"] == {"ip": "41.186.0.0/16", "success": False, "limit": 2}
    assert listing["row_count"] == 2
    assert export["filters"] == {"reason": "invalid_credentials", "format": "ndjson"}
    assert export["row_count"] == 3
    assert summary["filters"]["since"] == "2026-11-20T00:00:00Z" and summary["row_count"] == 3
    assert datetime.datetime.fromisoformat(listing["created_at"]) > BASE_TIME

    # The admin's own look at the record is recorded too, and pages like the rest.
    everything = (await client.get(QUERIES, params={"limit": "2"}, headers=admin_headers)).json()
    assert everything["items"][0]["action"] == "queries"
    rest = (await client.get(QUERIES, params={"cursor": everything["next_cursor"]}, headers=admin_headers)).json()
    # Four records existed when paging began (a query does not see its own record).
    actions = [r["action"] for r in everything["items"] + rest["items"]]
    assert actions == ["queries", "summary", "export", "list"]
    assert rest["next_cursor"] is None


def test_cursor_round_trip():
    moment = datetime.datetime(2026, 11, 20, 12, 0, 0, 123456, tzinfo=datetime.UTC)
    cursor = Cursor.after(moment, 42)
    assert cursor.created_at == moment and cursor.i == 42


async def test_a_query_over_its_time_limit_is_a_503_that_says_what_to_do(client, db, monkeypatch):
    monkeypatch.setattr(audit_connections, "API_STATEMENT_TIMEOUT_MS", 200)
    headers = await staff_headers(client, db, "security")
    params = {"since": "2026-11-01", "until": "2026-11-07", "bucket": "minute"}
    # A statement that cannot finish in time, whatever the machine's speed: the tables it reads are
    # locked by another transaction until after the timeout (statement_timeout counts lock waits).
    async with db.transaction():
        await db.execute("LOCK TABLE login_attempts, login_attempts_hourly IN ACCESS EXCLUSIVE MODE")
        response = await client.get(SUMMARY, params=params, headers=headers)
    assert response.status_code == 503
    assert response.json()["code"] == "audit_query_timeout"
    assert await db.fetchval("SELECT count(*) FROM audit_queries") == 0
