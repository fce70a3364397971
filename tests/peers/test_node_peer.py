"""The Node peer of docs/cutover.md against a real server: configured with the issuer URL and the audience only.

tests/peers/node/peer.mjs runs express-oauth2-jwt-bearer (``auth({issuerBaseURL, audience})`` and
``requiredScopes``), jose on the discovered JWKS, and openid-client (discovery from the issuer,
introspection with ``client_secret_basic``, client credentials) and prints what each answered; this
side judges it, once for a server signing with ES256 and once with EdDSA. The packages are the
ones tests/peers/node/package-lock.json pins, installed by ``npm ci`` (skipped when node_modules was
installed from this very lock).

The issuer is ``http://127.0.0.1:{port}``, as in development: express-oauth2-jwt-bearer refuses an
http issuer only when ``NODE_ENV=production`` and openid-client only without
``allowInsecureRequests``; production's issuer is https (the service refuses to start otherwise),
so a deployed peer sets neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from click.testing import CliRunner

from app.__main__ import main
from app.core.embedded import free_port
from app.core.settings import Settings
from app.db import migrations
from tests.helpers import STRONG_PASSWORD, new_phone
from tests.platform.support import cli_env, run_cli
from tests.servers import api_server

pytestmark = pytest.mark.slow

PEER = Path(__file__).resolve().parent / "node"
INSTALLED_FROM = PEER / "node_modules" / ".installed-from-lock.sha256"


def npm_ci() -> None:
    """``npm ci`` into tests/peers/node, unless node_modules already holds exactly what the lock pins."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.fail("node and npm are required for the Node peer (tests/peers/node); install Node.js 20 or later")
    lock = hashlib.sha256((PEER / "package-lock.json").read_bytes()).hexdigest()
    if INSTALLED_FROM.is_file() and INSTALLED_FROM.read_text() == lock:
        return
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=PEER,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"npm ci failed in {PEER}:\n{done.stdout}\n{done.stderr}"
    INSTALLED_FROM.write_text(lock)


@pytest.fixture(scope="module", params=["ES256", "EdDSA"])
def issuer(
    request: pytest.FixtureRequest, base_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Settings, str]]:
    """A real server whose issuer (PUBLIC_URL) is its own address, signing with the parameter's algorithm.

    Each on a database of its own whose first key is of that algorithm: the peer pins none (issue 24:
    a peer pinned to ES256 broke after a rotation to EdDSA).
    """
    npm_ci()
    with migrations.scratch_database(base_settings) as scratch:
        migrations.upgrade(scratch)
        first_key = run_cli(scratch, "keys", "rotate", "--alg", request.param)
        assert first_key.exit_code == 0, first_key.output
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        settings = msgspec.structs.replace(
            scratch, redis_key_prefix=f"le-test:{uuid.uuid4().hex[:12]}:", public_url=url, jwt_issuer=url
        )
        with api_server(settings, tmp_path_factory.mktemp("node-peer"), port=port, PUBLIC_URL=url) as base:
            assert base == url
            yield url, settings, request.param


def signed_up(base: str) -> dict[str, Any]:
    body = {"name": "Aline Uwase", "phone_number": new_phone(), "password": STRONG_PASSWORD, "user_type": "adolescent"}
    answer = httpx.post(f"{base}/api/auth/register", json=body, timeout=30)
    assert answer.status_code == 201, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens


def support_staffer(base: str, settings: Settings) -> dict[str, Any]:
    """A support account (scope ``account panel``, docs/authority.md), made at a shell and signed in."""
    phone = new_phone()
    args = ["users", "create-admin", "--phone", phone, "--name", "Grace Mukamana", "--role", "support"]
    made = CliRunner().invoke(main, [*args, "--password-stdin"], input=f"{STRONG_PASSWORD}\n", env=cli_env(settings))
    assert made.exit_code == 0, made.output
    answer = httpx.post(f"{base}/api/auth/login", json={"phone_number": phone, "password": STRONG_PASSWORD}, timeout=30)
    assert answer.status_code == 200, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens


def run_peer(base: str, audience: str, given: dict[str, str]) -> dict[str, Any]:
    environment = {**os.environ, "ISSUER": base, "AUDIENCE": audience, "NODE_ENV": "development"}
    done = subprocess.run(
        ["node", "peer.mjs"],
        cwd=PEER,
        input=json.dumps(given),
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    shown = f"node peer.mjs exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    print(shown)  # pytest shows it with any failure below, the caller's included
    assert done.returncode == 0, shown
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


def test_node_peer_with_the_issuer_and_audience_only(issuer: tuple[str, Settings, str]) -> None:
    base, settings, algorithm = issuer
    user = signed_up(base)
    staffer = support_staffer(base, settings)
    name = f"node-peer-{uuid.uuid4().hex[:8]}"
    created = run_cli(settings, "services", "create", name, "--scope", "introspect")
    assert created.exit_code == 0, created.output
    given = {
        "access_token": user["access_token"],
        "refresh_token": user["refresh_token"],
        "staff_access_token": staffer["access_token"],
        "client_id": name,
        "client_secret": created.stdout.strip(),
    }
    signing = jwt.get_unverified_header(user["access_token"])
    assert signing["alg"] == algorithm, signing  # the peer is told nothing of it
    seen = run_peer(base, settings.jwt_audience, given)
    sub = str(user["user_id"])

    # openid-client found everything from the issuer alone, and the issuer is the plain-http loopback URL.
    assert seen["discovered"] == {
        "issuer": base,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "introspection_endpoint": f"{base}/api/auth/introspect",
        "token_endpoint": f"{base}/oauth/token",
    }
    assert base.startswith("http://127.0.0.1:")

    express = seen["express"]
    assert express["access"] == {"status": 200, "body": {"sub": sub}}
    assert express["strict_access"]["status"] == 200, express["strict_access"]
    for refused in ("refresh", "other_audience", "alg_none"):
        assert express[refused]["status"] == 401, (refused, express[refused])
        assert express[refused]["body"]["error"] == "invalid_token", (refused, express[refused])
    # Each refused for the reason it was made for: the audience, and the algorithm (the claims are genuine).
    assert "'aud'" in express["other_audience"]["body"]["message"], express["other_audience"]
    assert express["alg_none_header"]["alg"] == "none"
    assert '"none"' in express["alg_none"]["body"]["message"], express["alg_none"]

    assert express["scope_account"] == {"status": 200, "body": {"sub": sub}}
    assert express["scope_panel_as_user"]["status"] == 403, express["scope_panel_as_user"]
    assert express["scope_panel_as_support"] == {"status": 200, "body": {"sub": str(staffer["user_id"])}}

    assert seen["jose"]["access"] == {"ok": True, "sub": sub}
    assert not seen["jose"]["refresh"]["ok"] and not seen["jose"]["other_audience"]["ok"], seen["jose"]

    assert seen["introspect_live"] == {"active": True, "sub": sub, "scope": "account"}
    assert seen["logout_status"] == 200
    assert seen["introspect_logged_out"] == {"active": False}
