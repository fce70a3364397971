"""What stock OAuth tooling finds and does with nothing but the issuer URL and a service credential.

authlib (discovery, client authentication, introspection, client credentials) and joserfc (token
verification against the discovered JWKS) are the stock clients; nothing is configured by hand but
the issuer, the audience and the credential.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata, get_well_known_url
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from litestar import Litestar

from app.core.settings import Settings
from tests.helpers import bearer, registered
from tests.platform.support import arun_cli, new_credential

ISSUER = "https://auth.example.org"
AT_ISSUER = pytest.mark.parametrize("settings", [{"public_url": ISSUER, "jwt_issuer": ISSUER}], indirect=True)
RFC_7662_MEMBERS = {"active", "scope", "client_id", "username", "token_type", "exp", "iat", "nbf", "sub", "aud"}
RFC_7662_MEMBERS |= {"iss", "jti"}


class ThroughTestClient(httpx.AsyncBaseTransport):
    """Another client's requests, sent by the test client (the app runs on its event loop), whatever the URL."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        answer = await self.client.send(request)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)


def app_transport(client: Any) -> httpx.AsyncBaseTransport:
    return ThroughTestClient(client)


@pytest.fixture
async def peer(client: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client that reaches the app at its public URL."""
    async with httpx.AsyncClient(transport=app_transport(client)) as http:
        yield http


def oauth_client(client: Any, name: str, secret: str, method: str) -> AsyncOAuth2Client:
    return AsyncOAuth2Client(
        client_id=name, client_secret=secret, token_endpoint_auth_method=method, transport=app_transport(client)
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@AT_ISSUER
async def test_discovery_from_the_issuer_alone(app: Litestar, client: Any, peer: httpx.AsyncClient) -> None:
    metadata_url = get_well_known_url(ISSUER, external=True)
    metadata = (await peer.get(metadata_url)).json()
    AuthorizationServerMetadata(metadata).validate()  # RFC 8414's required members, and https everywhere
    assert metadata["issuer"] == ISSUER
    openid = (await peer.get(get_well_known_url(ISSUER, external=True, suffix="openid-configuration"))).json()
    assert openid == metadata
    assert {"client_secret_basic", "client_secret_post"} <= set(
        metadata["introspection_endpoint_auth_methods_supported"]
    )
    assert "client_credentials" in metadata["grant_types_supported"]

    user = await registered(client)
    key_set = KeySet.import_key_set((await peer.get(metadata["jwks_uri"])).json())
    algorithms = metadata["id_token_signing_alg_values_supported"]
    verified = jose_jwt.decode(user["access_token"], key_set, algorithms=algorithms)
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": "ladys-essence"},
        exp={"essential": True},
    ).validate(verified.claims)
    assert verified.header["typ"] == "at+jwt" and verified.claims["sub"] == str(user["user_id"])
    with pytest.raises((JoseError, ValueError)):
        jose_jwt.decode(user["refresh_token"], key_set, algorithms=algorithms)

    name = unique("discovered")
    credential = await new_credential(app.state.settings, name, "introspect")
    async with oauth_client(client, name, credential, "client_secret_basic") as oauth:
        answer = await oauth.introspect_token(metadata["introspection_endpoint"], token=user["access_token"])
    assert answer.status_code == 200 and answer.json()["active"] is True


@AT_ISSUER
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "bearer"])
async def test_introspection_with_each_client_authentication(
    app: Litestar, client: Any, peer: httpx.AsyncClient, method: str
) -> None:
    name = unique("introspector")
    credential = await new_credential(app.state.settings, name, "introspect")
    user = await registered(client, phone_number="+250788123456")
    url = f"{ISSUER}/api/auth/introspect"
    hints = {"access": None, "refresh": "refresh_token", "mislabelled": "access_token"}
    tokens = {"access": user["access_token"], "refresh": user["refresh_token"], "mislabelled": user["refresh_token"]}
    answers = {}
    if method == "bearer":  # not an OAuth client method: the les_ token alone, as before
        for kind, hint in hints.items():
            form = {"token": tokens[kind], **({"token_type_hint": hint} if hint else {})}
            answers[kind] = await peer.post(url, data=form, headers=bearer(credential))
    else:
        async with oauth_client(client, name, credential, method) as oauth:
            for kind, hint in hints.items():
                answers[kind] = await oauth.introspect_token(url, token=tokens[kind], token_type_hint=hint)
    access, refresh, mislabelled = answers["access"], answers["refresh"], answers["mislabelled"]
    assert access.status_code == 200, access.text
    body = access.json()
    assert body.keys() >= RFC_7662_MEMBERS
    assert body["active"] is True and body["token_type"] == "Bearer" and body["scope"] == "account"
    assert body["client_id"] == "ladys-essence-app" and body["username"] == "+250788123456"
    assert body["sub"] == str(user["user_id"]) and body["iss"] == ISSUER and body["aud"] == "ladys-essence"
    assert refresh.json()["active"] is True and refresh.json()["token_type"] == "refresh_token"
    assert mislabelled.json() == refresh.json()  # a hint orders the search, it does not end it


@AT_ISSUER
async def test_refused_client_authentication_carries_a_challenge(
    app: Litestar, client: Any, peer: httpx.AsyncClient
) -> None:
    name = unique("challenged")
    credential = await new_credential(app.state.settings, name, "introspect")
    other = await new_credential(app.state.settings, unique("other"), "introspect")
    url = f"{ISSUER}/api/auth/introspect"
    anonymous = await peer.post(url, data={"token": "anything"})
    assert anonymous.status_code == 401 and "Bearer" in anonymous.headers["www-authenticate"]
    attempts = {
        "wrong secret (basic)": ("client_secret_basic", name, credential[:-2] + "AA"),
        "another credential's secret (basic)": ("client_secret_basic", name, other),
        "another credential's secret (post)": ("client_secret_post", name, other),
    }
    for why, (method, client_id, secret) in attempts.items():
        async with oauth_client(client, client_id, secret, method) as oauth:
            answer = await oauth.introspect_token(url, token="anything")
        assert answer.status_code == 401, (why, answer.text)
        assert "Basic" in answer.headers["www-authenticate"] and "Bearer" in answer.headers["www-authenticate"]
        assert answer.json()["error"] == "invalid_client" and answer.json()["code"] == "invalid_service_credential"


@AT_ISSUER
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_credentials_end_to_end(app: Litestar, client: Any, method: str) -> None:
    settings: Settings = app.state.settings
    name = unique("gateway")
    credential = await new_credential(settings, name, "introspect", "users:read")
    user = await registered(client)
    async with oauth_client(client, name, credential, method) as oauth:
        token = await oauth.fetch_token(f"{ISSUER}/oauth/token", grant_type="client_credentials")
        narrow = await oauth.fetch_token(f"{ISSUER}/oauth/token", grant_type="client_credentials", scope="users:read")
    assert token["token_type"] == "Bearer" and token["scope"] == "introspect users:read"
    assert 0 < token["expires_in"] <= settings.client_credentials_token_seconds
    access = token["access_token"]

    read = await client.get(f"/api/internal/users/{user['user_id']}", headers=bearer(access))
    assert read.status_code == 200 and read.json()["id"] == user["user_id"]
    introspected = await client.post("/api/auth/introspect", headers=bearer(access), json={"token": access})
    assert introspected.status_code == 200
    assert introspected.json()["active"] is True and introspected.json()["client_id"] == name
    refused = await client.post("/api/auth/introspect", headers=bearer(narrow["access_token"]), json={"token": access})
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_scope"
    # A user's route does not take a service's token, nor does the token endpoint (no self-renewal).
    assert (await client.get("/api/auth/profile", headers=bearer(access))).status_code == 401
    renewed = await client.post("/oauth/token", headers=bearer(access), data={"grant_type": "client_credentials"})
    assert renewed.status_code == 401
    # The static credential keeps working.
    static = await client.get(f"/api/internal/users/{user['user_id']}", headers=bearer(credential))
    assert static.status_code == 200

    assert (await arun_cli(settings, "services", "revoke", name)).exit_code == 0
    after = await client.get(f"/api/internal/users/{user['user_id']}", headers=bearer(access))
    assert after.status_code == 401  # revoking the credential ends its tokens at once


@AT_ISSUER
async def test_the_token_endpoint_refuses_what_it_does_not_grant(app: Litestar, client: Any) -> None:
    name = unique("greedy")
    credential = await new_credential(app.state.settings, name, "introspect")
    url = f"{ISSUER}/oauth/token"
    async with oauth_client(client, name, credential, "client_secret_post") as oauth:
        with pytest.raises(OAuthError) as wider:
            await oauth.fetch_token(url, grant_type="client_credentials", scope="introspect users:read")
        with pytest.raises(OAuthError) as password:
            await oauth.fetch_token(url, grant_type="password", username="x", password="y")
    assert wider.value.error == "invalid_scope" and password.value.error == "unsupported_grant_type"
    anonymous = await client.post("/oauth/token", data={"grant_type": "client_credentials"})
    assert anonymous.status_code == 401 and "www-authenticate" in anonymous.headers


async def test_the_openapi_document_has_the_form_bodies(client: Any) -> None:
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    for path, required in (("/api/auth/introspect", "token"), ("/oauth/token", "grant_type")):
        body = paths[path]["post"]["requestBody"]
        # The RFCs' form only: a second media type breaks openapi-python-client (tests/core/test_openapi_client.py);
        # the JSON form the handlers also take is named in the description.
        assert list(body["content"]) == ["application/x-www-form-urlencoded"]
        assert required in body["content"]["application/x-www-form-urlencoded"]["schema"]["required"]
        assert "JSON" in body["description"]


async def test_bad_bodies_at_the_token_endpoint_get_clear_errors(app: Litestar, client: Any) -> None:
    name = unique("clumsy")
    credential = await new_credential(app.state.settings, name, "introspect")
    auth = httpx.BasicAuth(name, credential)
    broken = await client.post(
        "/oauth/token", auth=auth, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["code"] == "malformed_json"
    xml = await client.post("/oauth/token", auth=auth, content=b"<grant/>", headers={"Content-Type": "text/xml"})
    assert xml.status_code == 415
    as_json = await client.post("/oauth/token", auth=auth, json={"grant_type": "client_credentials", "scope": 7})
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_scope"
    garbled = await client.post(
        "/oauth/token", headers={"Authorization": "Basic %%%"}, data={"grant_type": "client_credentials"}
    )
    assert garbled.status_code == 401 and garbled.json()["error"] == "invalid_client"
