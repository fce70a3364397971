"""Servers that do not behave: one that accepts and never answers, one that answers setup then hangs."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def hanging_server(answered_posts: int = 0, *, answer_health: bool = True) -> Iterator[str]:
    """Accepts every connection. Answers /health (unless told not to) and the first ``answered_posts``
    POSTs, then nothing.

    The answers it gives look enough like the service's (a 401 with the RateLimit header, a 201 for a
    registration) for a load test to get past its setup; afterwards every request hangs.
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    held: list[socket.socket] = []
    answered = 0
    lock = threading.Lock()
    stopping = threading.Event()

    def answer(connection: socket.socket, status: str, body: dict[str, object], headers: str = "") -> None:
        payload = json.dumps(body).encode()
        head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n{headers}\r\n"
        connection.sendall(head.encode() + payload)

    def serve(connection: socket.socket) -> None:
        nonlocal answered
        buffer = b""
        with contextlib.suppress(OSError):
            while not stopping.is_set():
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, _, rest = buffer.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ),
                        0,
                    )
                    if len(rest) < length:
                        break
                    buffer = rest[length:]
                    request_line = head.split(b"\r\n")[0].decode()
                    if request_line.startswith("GET /health") and answer_health:
                        answer(connection, "200 OK", {"status": "healthy"})
                        continue
                    with lock:
                        answered += 1
                        hang = answered > answered_posts
                    if hang:
                        stopping.wait()
                        return
                    if "/register" in request_line:
                        answer(connection, "201 Created", {"message": "registered"})
                    else:
                        answer(
                            connection,
                            "401 Unauthorized",
                            {"message": "no", "code": "invalid_credentials"},
                            'RateLimit: "login";r=4;t=900\r\n',
                        )

    def accept() -> None:
        with contextlib.suppress(OSError):
            while not stopping.is_set():
                connection, _ = listener.accept()
                held.append(connection)
                threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        listener.close()
        for connection in held:
            with contextlib.suppress(OSError):
                connection.close()
