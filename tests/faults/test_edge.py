"""Slowloris against a real `ladys-essence serve`: partial requests are dropped, the API keeps answering."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import httpx
import pytest

from app.core.embedded import free_port, stop_process
from tests.faults.support import serve_env, start_serve, wait_healthy, wait_until

pytestmark = pytest.mark.slow
READ_TIMEOUT = 1  # REQUEST_READ_TIMEOUT_SECONDS in these tests


@pytest.fixture
def server(settings, tmp_path):
    port = free_port()
    env = serve_env(settings, tmp_path, REQUEST_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT), MAX_CONNECTIONS="60")
    log = tmp_path / "serve.log"
    process = start_serve(env, port, log)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, log)
        yield port
    finally:
        stop_process(process, 20)


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (whatever it wrote first)."""
    try:
        while data := sock.recv(4096):
            if not data:
                break
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def opened(port: int, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    if first_bytes:
        sock.sendall(first_bytes)
    sock.setblocking(False)
    return sock


def test_idle_and_partial_requests_are_dropped_and_the_api_keeps_answering(server):
    port = server
    partial_headers = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
    partial_body = (
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    sockets = [opened(port, first) for first in (b"", partial_headers, partial_body) for _ in range(15)]
    try:
        # The attacker trickles a byte now and then; each request still has to arrive whole in time.
        for _ in range(3):
            time.sleep(READ_TIMEOUT / 3)
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.send(b"a")
        assert wait_until(lambda: all(closed_by_server(sock) for sock in sockets), 15), "partial requests kept"
        response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert response.status_code == 200
    finally:
        for sock in sockets:
            sock.close()


def test_a_request_whose_headers_never_finish_hears_408(server):
    sock = socket.create_connection(("127.0.0.1", server), timeout=15)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"code":"request_timeout"' in answer


def test_connections_past_the_cap_are_refused_and_those_within_it_still_answer(server):
    port = server
    held = [opened(port, b"") for _ in range(80)]  # MAX_CONNECTIONS=60 in this process
    try:
        assert wait_until(lambda: sum(closed_by_server(sock) for sock in held) >= 20, 5)
        # The held ones are dropped by the read deadline; then a client gets through again.
        assert wait_until(lambda: all(closed_by_server(sock) for sock in held), 15)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        for sock in held:
            sock.close()


def test_a_request_at_the_connection_cap_hears_a_json_503_with_retry_after(server):
    """uvicorn's own answer at its concurrency limit is plain text; the service's is its JSON error."""
    port = server
    held = [opened(port, b"") for _ in range(59)]  # with the next one, MAX_CONNECTIONS=60 are open
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        finally:
            sock.close()
    finally:
        for held_sock in held:
            held_sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), answer
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"retry-after"]) > 0
    payload = json.loads(body)
    assert set(payload) == {"message", "code"} and payload["message"]
    assert payload["code"] == "server_busy"


def test_a_whole_request_on_a_slow_link_is_served(server):
    """The deadline is for the whole request, not each byte: an honest request well within it is answered."""
    sock = socket.create_connection(("127.0.0.1", server), timeout=10)
    try:
        for part in (b"GET /health HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n\r\n"):
            sock.sendall(part)
            time.sleep(READ_TIMEOUT / 5)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
