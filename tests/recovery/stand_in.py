"""A local stand-in of Africa's Talking's SMS API (``POST /version1/messaging``) that records what it gets."""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass
class Received:
    api_key: str | None
    form: dict[str, str]

    @property
    def code(self) -> str:
        match = re.search(r"\b(\d{6})\b", self.form["message"])
        assert match, self.form["message"]
        return match.group(1)


@dataclass
class SmsStandIn:
    """``mode``: ``sent`` (status 101), ``rejected`` (a recipient's status 406), ``error`` (HTTP 500)."""

    mode: str = "sent"
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def to(self, phone: str) -> list[Received]:
        with self.lock:
            return [message for message in self.messages if message.form.get("to") == phone]

    def start(self) -> None:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                with stand_in.lock:
                    stand_in.messages.append(Received(self.headers.get("apiKey"), form))
                if self.path != "/version1/messaging" or stand_in.mode == "error":
                    self._answer(500, {"error": "stand-in failure"})
                    return
                status, text = (101, "Success") if stand_in.mode == "sent" else (406, "UserInBlacklist")
                recipient = {"statusCode": status, "number": form.get("to"), "status": text, "cost": "RWF 10"}
                self._answer(201, {"SMSMessageData": {"Message": "Sent to 1/1", "Recipients": [recipient]}})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
