import pytest

from app.core.errors import try_again_in
from tests.helpers import STRONG_PASSWORD, new_phone


def assert_json_error(response, status, code=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["code"], str) and body["code"]
    if code:
        assert body["code"] == code
    assert "Traceback" not in response.text and "asyncpg" not in response.text
    return body


async def test_malformed_json_is_400(client):
    response = await client.post(
        "/api/auth/login", content=b'{"phone_number": "0788', headers={"content-type": "application/json"}
    )
    assert_json_error(response, 400)


async def test_wrong_content_type_is_415(client):
    response = await client.post(
        "/api/auth/login", content=b"phone_number=0788123456", headers={"content-type": "text/plain"}
    )
    assert_json_error(response, 415, "unsupported_media_type")


async def test_body_over_16_kib_is_413(client):
    body = {"phone_number": new_phone(), "password": "x" * 20_000}
    response = await client.post("/api/auth/login", json=body)
    assert_json_error(response, 413, "payload_too_large")


async def test_unknown_route_is_404_json(client):
    assert_json_error(await client.get("/api/auth/nothing-here"), 404, "not_found")


async def test_wrong_method_is_405_json(client):
    assert_json_error(await client.delete("/api/auth/login"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "body",
    [
        [],
        "a string",
        {"phone_number": 788123456, "password": STRONG_PASSWORD},
        {"phone_number": ["0788123456"], "password": STRONG_PASSWORD},
        {"phone_number": "0788123456", "password": {"$gt": ""}},
        {"phone_number": "0788\x00123456", "password": STRONG_PASSWORD},
        {"phone_number": "0788123456", "pin": 48.27},
    ],
)
async def test_wrong_types_are_400_with_fields_never_500(client, body):
    response = await client.post("/api/auth/login", json=body)
    assert response.status_code in (400, 401), response.text
    assert response.json()["message"]


async def test_deeply_nested_body_is_refused_cleanly(client):
    nested = "[" * 5000 + "]" * 5000
    response = await client.post(
        "/api/auth/register", content=nested.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


async def test_register_wrong_type_names_the_field(client):
    response = await client.post(
        "/api/auth/register",
        json={"name": ["not", "text"], "phone_number": new_phone(), "password": STRONG_PASSWORD},
    )
    body = assert_json_error(response, 400, "validation_error")
    assert body["errors"][0]["field"] == "name"


async def test_openapi_schema_is_served(client):
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/auth/register", "/api/auth/login", "/api/auth/refresh", "/api/auth/profile", "/health"):
        assert path in paths


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "1 second"),
        (1, "1 second"),
        (45, "45 seconds"),
        (59, "59 seconds"),
        (60, "1 minute"),
        (61, "2 minutes"),
        (14 * 60, "14 minutes"),
        (2 * 3600 - 1, "120 minutes"),
        (2 * 3600, "2 hours"),
        (2 * 3600 + 1, "3 hours"),
    ],
)
def test_a_wait_in_words_is_never_shorter_than_the_wait(seconds, words):
    assert try_again_in(seconds) == f"Please try again in {words}."
