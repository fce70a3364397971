"""Bad input on the admin panel's and the sessions' body routes: clear JSON errors, never a 500.

(tests/adversarial/test_inputs.py covers the routes a stranger or any signed-in user can send a
body to; these need an admin's token for the body to be judged at all.)
"""

from __future__ import annotations

import pytest

from tests.admin.support import panel_admin
from tests.helpers import bearer, registered


def _body_routes(user_id: int) -> list[tuple[str, str]]:
    return [
        ("POST", "/api/admin/users/create"),
        ("PATCH", f"/api/admin/users/{user_id}/change-role"),
        ("PATCH", f"/api/admin/users/{user_id}/toggle-status"),
        ("PATCH", f"/api/admin/users/{user_id}/reset-password"),
        ("POST", f"/api/admin/users/{user_id}/recovery"),
        ("POST", f"/api/admin/users/{user_id}/unlock"),
        ("POST", "/api/auth/logout-all"),
    ]


def json_error(response, status: int) -> dict:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["message"] and body["code"]
    assert "Traceback" not in response.text and "asyncpg" not in response.text
    return body


async def test_oversized_bodies_are_413_json(client, db, settings):
    headers, _ = await panel_admin(client, db)
    victim = await registered(client)
    oversized = b'{"name": "' + b"x" * settings.max_body_bytes + b'"}'
    for method, path in _body_routes(victim["user_id"]):
        response = await client.request(
            method, path, content=oversized, headers={**headers, "content-type": "application/json"}
        )
        assert json_error(response, 413)["code"] == "payload_too_large", path
    assert await db.fetchval("SELECT count(*) FROM admin_actions") == 0


@pytest.mark.parametrize(
    ("path_suffix", "body", "fields"),
    [
        ("/create", b'{"name": ', None),
        ("/create", b"[" * 8000 + b"]" * 8000, None),
        (
            "/create",
            b'{"name": 7, "phone_number": ["0788"], "is_active": "yes"}',
            {"name"},  # msgspec stops at the first
        ),
        ("/{id}/change-role", b'{"user_type": "root"}', {"user_type"}),
        ("/{id}/change-role", b"{}", {"user_type"}),
        ("/{id}/change-role", b'{"user_type": "\\u0000admin"}', {"user_type"}),
    ],
)
async def test_malformed_and_wrong_bodies_are_400_json(client, db, path_suffix, body, fields):
    headers, _ = await panel_admin(client, db)
    victim = await registered(client)
    method = "POST" if path_suffix == "/create" else "PATCH"
    path = "/api/admin/users" + path_suffix.replace("{id}", str(victim["user_id"]))
    response = await client.request(method, path, content=body, headers={**headers, "content-type": "application/json"})
    answer = json_error(response, 400)
    if fields is not None:
        assert {item["field"] for item in answer["errors"]} >= fields
    assert await db.fetchval("SELECT user_type FROM users WHERE id = $1", victim["user_id"]) == "adolescent"


async def test_unknown_and_huge_ids_are_404_json(client, db):
    headers, _ = await panel_admin(client, db)
    for path in ("/api/admin/users/999999", f"/api/admin/users/{2**63}", "/api/admin/users/-1/unlock"):
        response = await client.request("POST" if path.endswith("unlock") else "GET", path, headers=headers)
        assert response.status_code in (400, 404), (path, response.text)
        assert response.json()["message"]
    assert (await client.delete("/api/auth/sessions/not-a-uuid", headers=headers)).status_code in (400, 404)


async def test_a_non_json_body_is_415(client, db):
    headers, _ = await panel_admin(client, db)
    response = await client.post(
        "/api/admin/users/create", content=b"name=x", headers={**headers, "content-type": "text/plain"}
    )
    assert json_error(response, 415)["code"] == "unsupported_media_type"
    token = (await registered(client))["access_token"]
    other = await client.post(
        "/api/auth/logout-all", content=b"x", headers={**bearer(token), "content-type": "text/plain"}
    )
    assert other.status_code == 415
