"""Attack 4: the audit routes' staff guards read the signed-in user through ``signed_in`` (a batched
prepared statement, app/sessions/direct.py). Many requests in one event-loop turn are answered by
one statement: answers must never be mixed up, and every ending or demotion applies at once."""

from __future__ import annotations

import asyncio

import jwt

from app.sessions.tokens import user_scope
from tests.asgi import in_loop_client
from tests.audit.history.support import staff_token
from tests.helpers import STRONG_PASSWORD, bearer, new_phone, registered

ATTEMPTS = "/api/audit/login-attempts"
QUERIES = "/api/audit/queries"


async def _login(http, phone: str) -> str:  # type: ignore[no-untyped-def]
    response = await http.post("/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


async def test_one_batch_mixes_no_answers(app, db):
    """A user, a support account, an analyst, an admin and an ended plus a live session of one
    account, all in flight together (one batch): each gets its own answer, many times over."""
    async with in_loop_client(app) as http:
        user = await registered(http)
        support = await registered(http)
        await db.execute("UPDATE users SET user_type = 'admin' WHERE id = $1", support["user_id"])
        phone = new_phone()
        analyst = await registered(http, phone_number=phone)
        analyst_token = analyst["access_token"]
        await db.execute("UPDATE users SET role = 'security' WHERE id = $1", analyst["user_id"])
        admin_token, _ = await staff_token(http, db, "admin")
        live = await _login(http, phone)
        ended = analyst_token
        assert (await http.post("/api/auth/logout", headers=bearer(ended))).status_code in (200, 204)
        cases = [
            (user["access_token"], ATTEMPTS, 403),
            (support["access_token"], ATTEMPTS, 403),
            (ended, ATTEMPTS, 401),
            (live, ATTEMPTS, 200),
            (live, QUERIES, 403),
            (admin_token, QUERIES, 200),
            (user["access_token"], QUERIES, 403),
        ] * 6
        responses = await asyncio.gather(*(http.get(path, headers=bearer(token)) for token, path, _ in cases))
    pairs = zip(cases, responses, strict=True)
    wrong = [(path, want, got.status_code) for (_, path, want), got in pairs if got.status_code != want]
    assert wrong == []


async def test_admin_demoted_to_security_loses_queries_at_once_and_scope_follows(app, db):
    async def refreshed_scope(http, refresh_token: str) -> tuple[list[str], str]:  # type: ignore[no-untyped-def]
        response = await http.post("/api/auth/refresh", json={"refresh_token": refresh_token})
        assert response.status_code == 200, response.text
        body = response.json()
        scope = jwt.decode(body["access_token"], options={"verify_signature": False})["scope"].split()
        return scope, body.get("refresh_token") or refresh_token

    async with in_loop_client(app) as http:
        token, account = await staff_token(http, db, "admin")
        refresh = account["refresh_token"]
        scope, refresh = await refreshed_scope(http, refresh)
        assert {"audit", "audit_usage", "panel"} <= set(scope)  # ('admin', type) now cached
        assert (await http.get(QUERIES, headers=bearer(token))).status_code == 200
        await db.execute("UPDATE users SET role = 'security' WHERE id = $1", account["user_id"])
        assert (await http.get(QUERIES, headers=bearer(token))).status_code == 403
        assert (await http.get(ATTEMPTS, headers=bearer(token))).status_code == 200
        scope, refresh = await refreshed_scope(http, refresh)
        assert "audit" in scope and "audit_usage" not in scope and "panel" not in scope
        await db.execute("UPDATE users SET role = 'user' WHERE id = $1", account["user_id"])
        assert (await http.get(ATTEMPTS, headers=bearer(token))).status_code == 403
        scope, refresh = await refreshed_scope(http, refresh)
        assert scope == user_scope("user", "adolescent").split() == ["account"]


async def test_no_other_kind_of_token_passes_the_staff_reader(app, db):
    """The audit routes' guard decodes the token itself (provide_signed_in): a refresh token, an
    expired access token, and genuine-key tokens of another audience or issuer are all 401."""
    import datetime

    async with in_loop_client(app) as http:
        token, account = await staff_token(http, db, "security")
        assert (await http.get(ATTEMPTS, headers=bearer(token))).status_code == 200
        issuer = app.state.token_issuer
        key = app.state.token_issuer._keys.signer()
        genuine = jwt.decode(token, options={"verify_signature": False})
        now = int(datetime.datetime.now(datetime.UTC).timestamp())

        def signed(**changes: object) -> str:
            return issuer._sign({**genuine, **changes}, key.kid, key.alg, key.private_key)

        assert (await http.get(ATTEMPTS, headers=bearer(signed()))).status_code == 200  # the forger works
        refused = [
            account["refresh_token"],
            signed(exp=now - 60, iat=now - 1000, nbf=now - 1000),
            signed(aud="another-service"),
            signed(iss="https://evil.example"),
            signed(type="refresh"),
        ]
        for bad in refused:
            response = await http.get(ATTEMPTS, headers=bearer(bad))
            assert response.status_code == 401, (bad[:20], response.text)


async def test_every_ending_is_401_on_the_very_next_audit_request(app, db):
    """Each way a session ends, followed at once by an audit request (through ``signed_in``)."""
    async with in_loop_client(app) as http:
        admin_token, _ = await staff_token(http, db, "admin")
        admin = bearer(admin_token)

        async def analyst() -> tuple[str, int, str]:
            phone = new_phone()
            account = await registered(http, phone_number=phone)
            await db.execute("UPDATE users SET role = 'security' WHERE id = $1", account["user_id"])
            token = await _login(http, phone)
            assert (await http.get(ATTEMPTS, headers=bearer(token))).status_code == 200
            return token, account["user_id"], phone

        def sid(token: str) -> str:
            return jwt.decode(token, options={"verify_signature": False})["sid"]

        async def refused(token: str) -> None:
            response = await http.get(ATTEMPTS, headers=bearer(token))
            assert response.status_code == 401, response.text

        token, _, _ = await analyst()
        assert (await http.post("/api/auth/logout", headers=bearer(token))).status_code < 300
        await refused(token)

        token, _, phone = await analyst()
        other = await _login(http, phone)
        assert (await http.post("/api/auth/logout-all", headers=bearer(token))).status_code < 300
        await refused(other)  # "all my sessions but this one"
        assert (await http.get(ATTEMPTS, headers=bearer(token))).status_code == 200

        token, _, phone = await analyst()
        other = await _login(http, phone)
        assert (await http.delete(f"/api/auth/sessions/{sid(other)}", headers=bearer(token))).status_code < 300
        await refused(other)

        token, _, phone = await analyst()
        other = await _login(http, phone)
        changed = await http.put(
            "/api/auth/profile",
            headers=bearer(token),
            json={"password": "Nyungwe-Forest-7781", "current_password": STRONG_PASSWORD},
        )
        assert changed.status_code == 200, changed.text
        await refused(other)

        token, user_id, _ = await analyst()
        ended = await http.delete(f"/api/admin/users/{user_id}/sessions/{sid(token)}", headers=admin)
        assert ended.status_code < 300, ended.text
        await refused(token)

        token, user_id, _ = await analyst()
        toggled = await http.patch(f"/api/admin/users/{user_id}/toggle-status", headers=admin)
        assert toggled.status_code < 300, toggled.text
        await refused(token)

        token, user_id, _ = await analyst()
        deleted = await http.delete(f"/api/admin/users/{user_id}", headers=admin)
        assert deleted.status_code < 300, deleted.text
        await refused(token)


async def test_batches_past_max_batch_still_answer_each_request_its_own(app, db):
    """600 guard checks in one turn: more than one batch (max_batch 256), answers still per request."""
    async with in_loop_client(app) as http:
        user = await registered(http)
        phone = new_phone()
        analyst = await registered(http, phone_number=phone)
        await db.execute("UPDATE users SET role = 'security' WHERE id = $1", analyst["user_id"])
        live = await _login(http, phone)
        ended = analyst["access_token"]
        assert (await http.post("/api/auth/logout", headers=bearer(ended))).status_code < 300
        expected = {user["access_token"]: {403}, ended: {401}, live: {200, 429, 503}}
        tokens = [user["access_token"], ended, live] * 200
        responses = await asyncio.gather(*(http.get(ATTEMPTS, headers=bearer(t)) for t in tokens))
    wrong = [r.status_code for t, r in zip(tokens, responses, strict=True) if r.status_code not in expected[t]]
    assert wrong == []
