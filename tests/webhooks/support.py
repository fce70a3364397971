"""A real webhook receiver on 127.0.0.1 that checks every request with the Standard Webhooks reference code,
and helpers that write account events the way the service does (the outbox, on a session)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.core.settings import Settings
from app.events.outbox import AccountEventService
from app.webhooks.service import WebhookService


class Receiver:
    """Answers each POST with the next of ``answers`` (then ``default``): an HTTP status, or "hang"
    (hold the request until :meth:`release`). Keeps what it verified and what it refused."""

    def __init__(self, port: int = 0) -> None:
        self.secret: str | None = None
        self.answers: list[int | str] = []
        self.default: int | str = 200
        self.accepted: list[dict[str, Any]] = []  # verified events, in arrival order (2xx answered)
        self.requests: list[tuple[bytes, dict[str, str]]] = []  # every request as received
        self.refused: list[str] = []
        self.in_flight = 0
        self.most_at_once = 0  # the most requests it held at one time
        self.delay = 0.0  # seconds each answer takes
        self._released = threading.Event()
        self._open = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    answer = receiver.answers.pop(0) if receiver.answers else receiver.default
                    receiver.requests.append((body, headers))
                    receiver._open += 1
                    receiver.most_at_once = max(receiver.most_at_once, receiver._open)
                try:
                    time.sleep(receiver.delay)
                    status = self._status(body, headers, answer)
                finally:
                    with receiver._lock:
                        receiver._open -= 1  # before the answer leaves: the sender's next request may follow at once
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def _status(self, body: bytes, headers: dict[str, str], answer: int | str) -> int:
                if answer == "hang":
                    with receiver._lock:
                        receiver.in_flight += 1
                    receiver._released.wait(60)
                    with receiver._lock:
                        receiver.in_flight -= 1
                    answer = 200
                assert isinstance(answer, int)
                status = answer
                if 200 <= answer < 300:
                    try:
                        event = Webhook(receiver.secret or "").verify(body, headers)
                    except WebhookVerificationError as exc:
                        receiver.refused.append(str(exc))
                        status = 400
                    else:
                        with receiver._lock:
                            receiver.accepted.append(event)
                return status

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def seqs(self, user_id: int) -> list[int]:
        """The ``seq`` of each first copy the receiver accepted for ``user_id``, in arrival order."""
        seen: set[str] = set()
        order = []
        for event in list(self.accepted):
            if event["user_id"] == user_id and event["id"] not in seen:
                seen.add(event["id"])
                order.append(event["seq"])
        return order


async def eventually(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


async def new_user(settings: Settings, phone: str) -> int:
    assert settings.database_url
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            user_id: int = await conn.scalar(
                text(
                    "INSERT INTO users (name, phone_number, password_hash, user_type, created_at, updated_at) "
                    "VALUES ('Aline', :phone, 'x', 'adolescent', now(), now()) RETURNING id"
                ),
                {"phone": phone},
            )
        return user_id
    finally:
        await engine.dispose()


async def emit(settings: Settings, user_id: int, count: int = 1, type: str = "account.updated") -> list[str]:
    """``count`` events of ``user_id``, each committed on its own as a change would; their ids."""
    assert settings.database_url
    engine = create_async_engine(settings.database_url)
    ids = []
    try:
        for n in range(count):
            async with AsyncSession(engine) as session:
                events = AccountEventService(session=session)
                if type == "account.updated":
                    event = await events.record(user_id, "account.updated", fields={"personal_cycle_length": 20 + n})
                else:
                    event = await events.record(user_id, type, reason="test")  # type: ignore[arg-type]
                ids.append(str(event.id))
                await session.commit()
    finally:
        await engine.dispose()
    return ids


async def add_endpoint(settings: Settings, receiver: Receiver, events: list[str] | None = None) -> int:
    """Register ``receiver`` as the service does and hand it the secret (as its operator would)."""
    assert settings.database_url and settings.signing_keys_secret
    engine = create_async_engine(settings.database_url)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            endpoint, secret = await WebhookService(session=session).add(
                receiver.url, events or ["*"], settings.signing_keys_secret
            )
    finally:
        await engine.dispose()
    receiver.secret = secret
    return endpoint.id


async def deliveries(settings: Settings, endpoint_id: int) -> list[dict[str, Any]]:
    assert settings.database_url
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT user_id, seq, status, attempts, last_error, last_attempt_at, next_attempt_at "
                    "FROM webhook_deliveries WHERE endpoint_id = :id ORDER BY user_id, seq"
                ),
                {"id": endpoint_id},
            )
            return [dict(row._mapping) for row in rows]
    finally:
        await engine.dispose()


def event_json(body: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(body)
    return parsed
