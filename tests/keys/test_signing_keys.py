"""The key set on a database of its own: keys commands, and start-up refusing keys it cannot use."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.core.settings import Settings
from app.db import migrations
from tests.conftest import plain_dsn
from tests.platform.support import run_cli


@pytest.fixture
def scratch(base_settings: Settings) -> Iterator[Settings]:
    with migrations.scratch_database(base_settings) as settings:
        migrations.upgrade(settings)
        yield settings


def sql(settings: Settings, statement: str, *args: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(plain_dsn(settings))
        try:
            return await conn.fetch(statement, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def states(settings: Settings) -> dict[str, str]:
    listed = run_cli(settings, "keys", "list")
    assert listed.exit_code == 0, listed.output
    return {line.split()[0]: line.split()[2] for line in listed.stdout.splitlines()[1:]}


def test_rotate_publishes_first_and_retire_guards_live_tokens(scratch: Settings) -> None:
    first = run_cli(scratch, "keys", "rotate")
    assert first.exit_code == 0, first.output
    first_kid = first.output.split()[1].rstrip(";")
    assert states(scratch) == {first_kid: "active"}  # nothing to publish ahead of: signs at once

    second = run_cli(scratch, "keys", "rotate", "--alg", "EdDSA")
    second_kid = second.output.split()[1].rstrip(";")
    assert states(scratch) == {first_kid: "active", second_kid: "next"}
    activates = sql(scratch, "SELECT activates_at - created_at AS lead FROM signing_keys WHERE kid = $1", second_kid)
    assert activates[0]["lead"] >= datetime.timedelta(seconds=scratch.key_publish_seconds - 1)

    refused = run_cli(scratch, "keys", "retire", first_kid)
    assert refused.exit_code == 1 and "signs now" in refused.output
    # Once the new key has taken over, the old one must still verify what it signed.
    sql(scratch, "UPDATE signing_keys SET activates_at = now() - interval '1 hour' WHERE kid = $1", first_kid)
    sql(scratch, "UPDATE signing_keys SET activates_at = now() - interval '1 minute' WHERE kid = $1", second_kid)
    assert states(scratch) == {first_kid: "retiring", second_kid: "active"}
    refused = run_cli(scratch, "keys", "retire", first_kid)
    assert refused.exit_code == 1 and "may live until" in refused.output
    assert run_cli(scratch, "keys", "retire", first_kid, "--force").exit_code == 0
    assert states(scratch) == {first_kid: "retired", second_kid: "active"}
    rows = sql(scratch, "SELECT kid, private_key IS NULL AS wiped FROM signing_keys ORDER BY id")
    assert [(row["kid"], row["wiped"]) for row in rows] == [(first_kid, True), (second_kid, False)]
    assert run_cli(scratch, "keys", "retire", "no-such-kid").exit_code == 1


def start(settings: Settings) -> None:
    with TestClient(app=create_app(settings)) as client:
        assert client.get("/.well-known/jwks.json").status_code == 200


def start_up_error(settings: Settings) -> str:
    """What start-up failed with (the test client's task group wraps it)."""
    try:
        start(settings)
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("start-up went ahead")


def test_start_up_stops_on_a_key_it_cannot_use(scratch: Settings) -> None:
    start(scratch)  # development/test: the first key is made at start-up
    (kid,) = [row["kid"] for row in sql(scratch, "SELECT kid FROM signing_keys")]
    wrong_secret = msgspec.structs.replace(scratch, signing_keys_secret="another-secret-" + "q" * 32)
    assert start_up_error(wrong_secret) == (
        f"KeyMaterialError: signing key {kid}: its private key does not open with SIGNING_KEYS_SECRET"
        " (another secret, or damaged)"
    )

    sql(
        scratch,
        "INSERT INTO signing_keys (kid, alg, public_jwk, created_at, activates_at) "
        "VALUES ('broken-key', 'ES256', '{\"kty\": \"EC\"}', now(), now())",
    )
    assert start_up_error(scratch).startswith(
        "KeyMaterialError: signing key broken-key: its public JWK cannot be parsed"
    )


def test_production_refuses_to_start_without_a_signing_key(scratch: Settings) -> None:
    production = msgspec.structs.replace(scratch, app_env="production")
    assert start_up_error(production).startswith("KeyMaterialError: no signing key can sign: run `ladys-essence keys")
    assert sql(scratch, "SELECT count(*) AS n FROM signing_keys")[0]["n"] == 0
