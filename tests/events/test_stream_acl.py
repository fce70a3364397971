"""The Redis ACL of docs/account-events.md: a consumer reads its stream through its group, and nothing else.

The line is read from the page and run on the test Redis for a user of a random name (deleted
afterwards); the page's consumer then runs as that user, and the same user is refused the
service's other keys and any write to the stream.
"""

from __future__ import annotations

import re
import secrets
import shlex
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from litestar.testing import AsyncTestClient

from app.core.redis_keys import KeySpace
from app.core.settings import PROJECT_ROOT, Settings
from tests.accounts.test_account_events import doc_consumer
from tests.helpers import registered

DOC = PROJECT_ROOT / "docs" / "account-events.md"
GROUP = "platform"


def doc_acl_line() -> list[str]:
    match = re.search(r"<!-- acl -->\n```\n(ACL SETUSER .*?)\n```", DOC.read_text())
    assert match, "docs/account-events.md lost its ACL line"
    return shlex.split(match.group(1))


def as_user(url: str, name: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{name}:{password}@{parts.hostname}:{parts.port or 6379}"))


@pytest.fixture
def consumer_user(settings: Settings) -> Iterator[tuple[str, str]]:
    """(name, URL) of a Redis user made with the documented line, for this test's key prefix."""
    assert settings.redis_url
    admin = redis.Redis.from_url(settings.redis_url)
    name, password = f"le-test-consumer-{secrets.token_hex(6)}", secrets.token_hex(16)
    words = doc_acl_line()
    documented_user = words[2]
    command = []
    for word in words:
        if word == documented_user:
            word = name
        elif word.startswith(">"):
            word = f">{password}"
        elif word.startswith("~le:"):
            word = "~" + settings.redis_key_prefix + word.removeprefix("~le:")
        command.append(word)
    assert command[2] == name and f">{password}" in command and f"~{settings.redis_key_prefix}accounts" in command
    admin.execute_command(*command)
    try:
        yield name, as_user(settings.redis_url, name, password)
    finally:
        admin.execute_command("ACL", "DELUSER", name)
        admin.delete(KeySpace(settings.redis_key_prefix).account_events)
        admin.close()


def run_doc_consumer(url: str, stream: str, received: list[dict[str, Any]], running: threading.Event) -> Any:
    failures: list[BaseException] = []

    def target() -> None:
        try:
            doc_consumer()(url, received.append, stream=stream, group=GROUP, running=running.is_set)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, failures


async def test_the_documented_user_consumes_the_stream_and_nothing_else(
    client: AsyncTestClient[Any], settings: Settings, consumer_user: tuple[str, str]
) -> None:
    _, url = consumer_user
    keys = KeySpace(settings.redis_key_prefix)
    stream = keys.account_events
    account = await registered(client)  # the app's relay puts account.registered on the stream
    received: list[dict[str, Any]] = []
    running = threading.Event()
    running.set()
    thread, failures = run_doc_consumer(url, stream, received, running)
    try:
        deadline = time.monotonic() + 20
        while not any(event["user_id"] == account["user_id"] for event in received):
            assert not failures, failures
            assert time.monotonic() < deadline, "the restricted consumer read nothing"
            time.sleep(0.05)
    finally:
        running.clear()
        thread.join(10)
    assert not failures, failures
    assert [event["type"] for event in received if event["user_id"] == account["user_id"]] == ["account.registered"]

    assert settings.redis_url
    admin = redis.Redis.from_url(settings.redis_url)
    consumer = redis.Redis.from_url(url)
    try:
        assert admin.xpending(stream, GROUP)["pending"] == 0  # the consumer's XACKs went through
        # The service's other keys: a client's login budget and an audit stream.
        budget = keys.client("203.0.113.7", "login")
        admin.zadd(budget, {"attempt": time.time()})
        audit = keys.audit_stream(0)
        admin.xadd(audit, {"event": "{}"})
        refused = [
            ("ZRANGE", budget, 0, -1),
            ("GET", budget),
            ("XRANGE", audit, "-", "+"),
            ("XREADGROUP", "GROUP", GROUP, "c1", "STREAMS", audit, ">"),
            ("XGROUP", "CREATE", audit, GROUP, "0"),
            # Writing or removing the stream, or reading it around the group.
            ("XADD", stream, "*", "event", '{"type": "account.deleted"}'),
            ("XDEL", stream, "0-1"),
            ("XTRIM", stream, "MAXLEN", 0),
            ("DEL", stream),
            ("XGROUP", "DESTROY", stream, GROUP),
            ("XRANGE", stream, "-", "+"),
            ("KEYS", "*"),
            ("SUBSCRIBE", "anything"),
        ]
        for command in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                consumer.execute_command(*command)
        assert admin.xlen(stream) >= 1 and admin.zcard(budget) == 1
    finally:
        admin.delete(budget, audit)
        admin.close()
        consumer.close()
