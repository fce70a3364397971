"""The operator's side, through the console commands: add (the secret shown once), list, dead letters, replay,
remove, and a deliverer run as its own command."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import msgspec
from click.testing import CliRunner, Result
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.__main__ import main
from app.core.settings import Settings
from app.webhooks.deliverer import WebhookDeliverer
from tests.helpers import new_phone
from tests.platform.support import cli_env
from tests.webhooks.support import Receiver, deliveries, emit, new_user


async def webhooks_cli(settings: Settings, *args: str, **env: str) -> Result:
    """The command in a thread of its own (it runs its own event loop, as from a shell)."""
    return await asyncio.to_thread(CliRunner().invoke, main, ["webhooks", *args], env=cli_env(settings, **env))


async def added(settings: Settings, receiver: Receiver, events: str = "*") -> int:
    result = await webhooks_cli(settings, "add", receiver.url, "--events", events)
    assert result.exit_code == 0, result.output
    receiver.secret = result.stdout.strip()
    assert receiver.secret.startswith("whsec_")
    return int(result.stderr.split()[1].rstrip(":"))


async def until(check: Any, attempts: int = 300) -> None:
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_add_shows_the_secret_once_and_never_again(hook_settings: Settings, receiver: Receiver) -> None:
    # On the package's logger: each command reconfigures the root logger (and so pytest's capture).
    collected = Collected()
    logging.getLogger("app.webhooks").addHandler(collected)
    endpoint = await added(hook_settings, receiver, "account.updated,account.deleted")
    assert receiver.secret

    listed = await webhooks_cli(hook_settings, "list")
    assert listed.exit_code == 0
    assert receiver.url in listed.output and "account.updated,account.deleted" in listed.output
    # Deliveries that fail until they are dead letters: the warnings they log, the dead-letter listing.
    receiver.default = 500
    user = await new_user(hook_settings, new_phone())
    await emit(hook_settings, user)
    tuned = msgspec.structs.replace(hook_settings, webhooks_max_attempts=2)
    assert tuned.database_url
    deliverer = WebhookDeliverer(tuned.database_url, tuned)
    try:
        await until(lambda: _all_dead(tuned, endpoint, deliverer))
    finally:
        await deliverer.close()
    dead = await webhooks_cli(hook_settings, "dead-letters")
    assert "HTTP 500" in dead.output

    key = receiver.secret.removeprefix("whsec_")
    logging.getLogger("app.webhooks").removeHandler(collected)
    logged = "\n".join(collected.lines)
    seen = [listed.output, dead.output, logged]
    assert "dead-lettered" in logged
    assert all(key not in text_ for text_ in seen)
    engine = create_async_engine(hook_settings.database_url or "")
    try:
        async with engine.connect() as conn:
            stored = await conn.scalar(text("SELECT secret FROM webhook_endpoints WHERE id = :id"), {"id": endpoint})
    finally:
        await engine.dispose()
    assert key.encode() not in stored and receiver.secret.encode() not in stored  # encrypted at rest


async def _all_dead(settings: Settings, endpoint: int, deliverer: WebhookDeliverer) -> bool:
    await deliverer.run_once()
    rows = await deliveries(settings, endpoint)
    return bool(rows) and all(row["status"] == "dead" for row in rows)


async def test_dead_letters_do_not_block_a_users_later_events_and_replay_sends_them_again_in_order(
    hook_settings: Settings, receiver: Receiver
) -> None:
    tuned = msgspec.structs.replace(hook_settings, webhooks_max_attempts=3)
    assert tuned.database_url
    deliverer = WebhookDeliverer(tuned.database_url, tuned)
    endpoint = await added(tuned, receiver)
    user = await new_user(tuned, new_phone())
    receiver.default = 500
    [first] = await emit(tuned, user)
    try:
        await until(lambda: _all_dead(tuned, endpoint, deliverer))
        [row] = await deliveries(tuned, endpoint)
        assert row["attempts"] == 3 and row["last_error"] == "HTTP 500"
        listed = await webhooks_cli(tuned, "dead-letters", "--endpoint", str(endpoint))
        assert first in listed.output and "account.updated" in listed.output

        receiver.default = 200
        await emit(tuned, user)  # seq 2: its predecessor is dead-lettered, so it goes out
        await until(lambda: _sent(deliverer, receiver, 1))
        assert receiver.seqs(user) == [2]

        dead_only = await webhooks_cli(tuned, "replay", "--endpoint", str(endpoint), "--since", first, "--dead-only")
        assert dead_only.exit_code == 0 and "queued 1 deliveries" in dead_only.output
        await until(lambda: _sent(deliverer, receiver, 2))
        assert [event["seq"] for event in receiver.accepted] == [2, 1]

        replayed = await webhooks_cli(tuned, "replay", "--endpoint", str(endpoint), "--since", first)
        assert replayed.exit_code == 0 and "queued 2 deliveries" in replayed.output
        await until(lambda: _sent(deliverer, receiver, 4))
        assert [event["seq"] for event in receiver.accepted] == [2, 1, 1, 2]  # the replay in seq order
        assert [row["status"] for row in await deliveries(tuned, endpoint)] == ["delivered", "delivered"]

        none_dead = await webhooks_cli(
            tuned, "replay", "--endpoint", str(endpoint), "--since", "2000-01-01", "--dead-only"
        )
        assert none_dead.exit_code == 0 and "queued 0 deliveries" in none_dead.output
    finally:
        await deliverer.close()


async def _sent(deliverer: WebhookDeliverer, receiver: Receiver, count: int) -> bool:
    await deliverer.run_once()
    return len(receiver.accepted) >= count


async def test_bad_input_is_refused_with_a_reason(hook_settings: Settings, receiver: Receiver) -> None:
    for args, reason in [
        (["add", "ftp://example.org/x", "--events", "*"], "http:// or https://"),
        (["add", "https://user:pw@example.org/x", "--events", "*"], "credentials"),
        (["add", receiver.url, "--events", "account.nope"], "unknown event type account.nope"),
        (["replay", "--endpoint", "999", "--since", "2026-01-01"], "no webhook endpoint 999"),
        (["replay", "--endpoint", "1", "--since", "yesterday"], "event id or an ISO-8601 time"),
        (["remove", "999"], "no webhook endpoint 999"),
    ]:
        result = await webhooks_cli(hook_settings, *args)
        assert result.exit_code != 0 and reason in result.output, (args, result.output)
    production = await webhooks_cli(
        hook_settings,
        "add",
        receiver.url,
        "--events",
        "*",
        APP_ENV="production",
        REDIS_URL="redis://127.0.0.1:6379/0",
        PUBLIC_URL="https://auth.example.org",
        CORS_ALLOW_ORIGINS="https://app.example.org",
        JWT_SECRET=secrets.token_hex(32),
        PIN_PEPPER=secrets.token_hex(32),
        SIGNING_KEYS_SECRET=secrets.token_hex(32),
    )
    assert production.exit_code != 0 and "https" in production.output, production.output


async def test_the_deliver_command_sends_what_is_due_and_remove_stops_deliveries(
    hook_settings: Settings, receiver: Receiver
) -> None:
    endpoint = await added(hook_settings, receiver)
    user = await new_user(hook_settings, new_phone())
    await emit(hook_settings, user, 2)

    result = await webhooks_cli(hook_settings, "deliver", "--once")
    assert result.exit_code == 0 and "made 2 delivery attempts" in result.output
    assert receiver.seqs(user) == [1, 2]

    assert (await webhooks_cli(hook_settings, "remove", str(endpoint))).exit_code == 0
    assert str(endpoint) not in (await webhooks_cli(hook_settings, "list")).output.split()
    await emit(hook_settings, user)
    result = await webhooks_cli(hook_settings, "deliver", "--once")
    assert "made 0 delivery attempts" in result.output
    assert await deliveries(hook_settings, endpoint) == []
