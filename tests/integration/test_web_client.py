"""The web client in the field, call by call as clients/web-client.md records it: cross-origin, credentialed."""

import pytest

from tests.helpers import STRONG_PASSWORD, bearer, new_phone

FIELD_ORIGIN = "https://ladys-essence-git-main-team.vercel.app"
FIELD_ORIGINS = {
    "cors_allow_origins": ["https://*.vercel.app", r"^https?://localhost(:\d+)?$", "capacitor://localhost"]
}
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,authorization"}


def cors_of(response):
    return {
        name.lower(): value for name, value in response.headers.items() if name.lower().startswith("access-control-")
    }


def varies_on_origin(response):
    return "origin" in [v.strip().lower() for v in response.headers.get("vary", "").split(",")]


@pytest.mark.parametrize("settings", [FIELD_ORIGINS], indirect=True)
@pytest.mark.parametrize("origin", [FIELD_ORIGIN, "https://localhost:41237", "capacitor://localhost"])
async def test_preflight_and_credentialed_calls_from_an_allowed_origin(client, origin):
    phone = new_phone()
    preflight = await client.options("/api/auth/register", headers={"Origin": origin, **PREFLIGHT})
    assert preflight.status_code == 204
    cors = cors_of(preflight)
    assert cors["access-control-allow-origin"] == origin
    assert cors["access-control-allow-credentials"] == "true"
    assert {"POST", "PUT", "GET", "OPTIONS"} <= {m.strip() for m in cors["access-control-allow-methods"].split(",")}
    allowed_headers = {h.strip().lower() for h in cors["access-control-allow-headers"].split(",")}
    assert {"content-type", "authorization", "x-requested-with"} <= allowed_headers
    assert cors["access-control-max-age"] == "86400"
    assert varies_on_origin(preflight)

    registration = await client.post(
        "/api/auth/register",
        headers={"Origin": origin},
        json={"name": "Aline Uwase", "phone_number": phone, "password": STRONG_PASSWORD, "user_type": "adolescent"},
    )
    assert registration.status_code == 201
    assert cors_of(registration)["access-control-allow-origin"] == origin
    assert cors_of(registration)["access-control-allow-credentials"] == "true"
    assert varies_on_origin(registration)
    # The login route's preflight and its answers (the gate's too) follow the same policy.
    login_preflight = await client.options("/api/auth/login", headers={"Origin": origin, **PREFLIGHT})
    assert cors_of(login_preflight) == cors
    login = await client.post(
        "/api/auth/login",
        headers={"Origin": origin, **bearer("stale-token")},
        json={"phone_number": phone, "password": STRONG_PASSWORD},
    )
    assert login.status_code == 200
    assert cors_of(login)["access-control-allow-origin"] == origin


@pytest.mark.parametrize("settings", [FIELD_ORIGINS | {"rate_limit_login_failures": 1}], indirect=True)
async def test_a_refusal_by_the_login_gate_is_readable_cross_origin(client):
    headers = {"Origin": FIELD_ORIGIN}
    body = {"phone_number": new_phone(), "password": "Wrong-Password-77"}
    assert (await client.post("/api/auth/login", headers=headers, json=body)).status_code == 401
    refused = await client.post("/api/auth/login", headers=headers, json=body)
    assert refused.status_code == 429
    assert cors_of(refused)["access-control-allow-origin"] == FIELD_ORIGIN
    assert cors_of(refused)["access-control-allow-credentials"] == "true"
    assert "retry-after" in cors_of(refused)["access-control-expose-headers"].lower()


@pytest.mark.parametrize("settings", [FIELD_ORIGINS], indirect=True)
@pytest.mark.parametrize("origin", ["https://evil.example.org", "https://a.b.vercel.app", "http://localhost.evil.com"])
async def test_a_disallowed_origin_gets_no_cors_headers(client, origin):
    preflight = await client.options("/api/auth/login", headers={"Origin": origin, **PREFLIGHT})
    assert preflight.status_code == 403
    assert cors_of(preflight) == {}
    assert preflight.json()["code"] == "cors_origin_not_allowed" and preflight.json()["message"]
    for response in (
        await client.post("/api/auth/login", headers={"Origin": origin}, json={"phone_number": new_phone()}),
        await client.get("/health", headers={"Origin": origin}),
    ):
        assert cors_of(response) == {}
        assert varies_on_origin(response)


@pytest.mark.parametrize("settings", [{"cors_allow_origins": ["*"]}], indirect=True)
async def test_star_answers_any_origin_without_credentials(client):
    preflight = await client.options("/api/auth/login", headers={"Origin": FIELD_ORIGIN, **PREFLIGHT})
    assert preflight.status_code == 204
    assert cors_of(preflight)["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in cors_of(preflight)
    response = await client.post(
        "/api/auth/login", headers={"Origin": FIELD_ORIGIN}, json={"phone_number": new_phone()}
    )
    assert cors_of(response)["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in cors_of(response)


def test_star_warns_at_start_up_that_the_field_client_cannot_work(settings, caplog):
    import msgspec

    from app.asgi import create_app

    with caplog.at_level("WARNING", logger="app.asgi"):
        create_app(msgspec.structs.replace(settings, cors_allow_origins=["*"]))
    assert any("CORS_ALLOW_ORIGINS=*" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="app.asgi"):
        create_app(settings)
    assert not any("CORS_ALLOW_ORIGINS" in record.getMessage() for record in caplog.records)


async def test_development_default_admits_the_local_web_app(client):
    for origin in ("http://localhost:5173", "http://localhost:3000", "capacitor://localhost"):
        response = await client.options("/api/settings/account", headers={"Origin": origin, **PREFLIGHT})
        assert cors_of(response)["access-control-allow-origin"] == origin
    assert cors_of(await client.get("/health", headers={"Origin": "https://elsewhere.example"})) == {}
