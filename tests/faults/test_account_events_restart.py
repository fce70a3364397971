"""The consumer of docs/account-events.md through a Redis that restarts empty while it consumes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis

from app.core.embedded import EmbeddedRedis
from tests.accounts.test_account_events import doc_consumer

pytestmark = pytest.mark.slow
STREAM = "le-test:accounts"


def event(user_id: int, seq: int) -> dict[str, str]:
    body = {"id": f"{user_id}-{seq}", "type": "account.updated", "user_id": user_id, "seq": seq, "data": {}}
    return {"event": json.dumps(body)}


def wait_for(condition, seconds: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_consumer_recreates_its_group_and_reports_the_gap_after_an_empty_restart(tmp_path: Path):
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    received: list[tuple[int, int]] = []
    gaps: list[tuple[int, int, int]] = []
    running = threading.Event()
    running.set()
    consumer = threading.Thread(
        target=doc_consumer(),
        args=(server.url, lambda e: received.append((e["user_id"], e["seq"]))),
        kwargs={"stream": STREAM, "running": running.is_set, "on_gap": lambda *gap: gaps.append(gap)},
        daemon=True,
    )
    client = redis.Redis.from_url(server.url)
    try:
        consumer.start()
        for seq in (1, 2):
            client.xadd(STREAM, event(7, seq))
        wait_for(lambda: received == [(7, 1), (7, 2)])
        time.sleep(0.3)  # the consumer is blocked in XREADGROUP again

        server.stop()  # no persistence: it comes back with nothing, neither the stream nor the group
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.exists(STREAM) == 0
        time.sleep(1.5)  # the consumer reconnects to the empty server (NOGROUP) before the relay writes again
        for user_id, seq in ((7, 5), (8, 1), (7, 5), (7, 6)):  # 3 and 4 lost; 5 published twice
            client.xadd(STREAM, event(user_id, seq))
        wait_for(lambda: (7, 6) in received)
        assert consumer.is_alive(), "the consumer died on the empty Redis"
        assert received == [(7, 1), (7, 2), (7, 5), (8, 1), (7, 6)]
        assert gaps == [(7, 3, 4)]
        assert client.xpending(STREAM, "platform")["pending"] == 0  # everything acknowledged
    finally:
        running.clear()
        consumer.join(10)
        server.stop()
