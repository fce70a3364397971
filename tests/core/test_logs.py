"""Logs from a served process: one format, a clean start, and LOG_FORMAT=json as one object per line."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
import msgspec
import pytest

from app.core.settings import Settings
from tests.helpers import STRONG_PASSWORD, new_phone
from tests.servers import api_server

pytestmark = pytest.mark.slow


def exercise(base: str, phone: str, request_id: str) -> int:
    """Register, sign in with a wrong password, read the profile; returns the user id."""
    body = {"name": "Aline Uwase", "phone_number": phone, "password": STRONG_PASSWORD, "user_type": "adolescent"}
    registered = httpx.post(f"{base}/api/auth/register", json=body, timeout=30).json()
    httpx.post(f"{base}/api/auth/login", json={"phone_number": phone, "password": "Wrong-Password-9"}, timeout=30)
    profile = httpx.get(
        f"{base}/api/auth/profile",
        headers={"Authorization": f"Bearer {registered['access_token']}", "X-Request-ID": request_id},
        timeout=30,
    )
    assert profile.status_code == 200, profile.text
    return int(registered["user_id"])


def served_log(settings: Settings, tmp_path: Path, **env: str) -> tuple[list[str], int, str, str]:
    settings = msgspec.structs.replace(settings, redis_key_prefix=f"le-test:{uuid.uuid4().hex[:12]}:")
    phone, request_id = new_phone(), f"req-{uuid.uuid4().hex[:8]}"
    with api_server(settings, tmp_path, LOG_LEVEL="INFO", **env) as base:
        user_id = exercise(base, phone, request_id)
        port = base.rsplit(":", 1)[1]
    lines = (tmp_path / f"server-{port}.log").read_text().splitlines()
    return lines, user_id, phone, request_id


def test_json_logs_are_one_object_per_line(base_settings: Settings, tmp_path: Path) -> None:
    lines, user_id, phone, request_id = served_log(base_settings, tmp_path, LOG_FORMAT="json")
    records = [json.loads(line) for line in lines if line.strip()]  # any other line fails here
    requests = [record for record in records if "route" in record]
    profile = next(record for record in requests if record.get("request_id") == request_id)
    assert profile["route"] == "/api/auth/profile" and profile["status"] == 200 and profile["method"] == "GET"
    assert profile["user_id"] == user_id and profile["latency_ms"] >= 0
    assert {"/api/auth/register", "/api/auth/login"} <= {record["route"] for record in requests}
    assert all(record["request_id"] for record in requests)
    text = "\n".join(lines)
    for secret in (STRONG_PASSWORD, "Wrong-Password-9", "Bearer", phone):
        assert secret not in text


def test_text_logs_have_one_format_and_a_clean_start(base_settings: Settings, tmp_path: Path) -> None:
    lines, _, _, _ = served_log(base_settings, tmp_path)
    text = "\n".join(lines)
    assert "Warning" not in text, text  # e.g. redis-py's UserWarning for a synchronous Retry
    one_format = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")
    others = [line for line in lines if line.strip() and not one_format.match(line)]
    assert [line for line in others if not line.startswith("Lady's Essence Auth on")] == [], text
    assert any("GET /api/auth/profile 200" in line for line in lines), text
