"""Configuration an attacker can exploit: public or guessable secrets, compose defaults, racy secret files.

Each test reproduces the review's finding (issue 17, items 2, 10, 11, 14): it failed before the fix.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core.settings import ConfigError, Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SECRET_SETTINGS = ("JWT_SECRET", "PIN_PEPPER", "SIGNING_KEYS_SECRET", "METRICS_TOKEN")
SERVERS = {
    "DATABASE_URL": "postgresql://db.invalid/app",
    "REDIS_URL": "redis://redis.invalid:6379/0",
    "PUBLIC_URL": "https://auth.example.org",
}


def production(**env: str) -> Settings:
    """Production settings that are complete but for what ``env`` says (each secret real unless given)."""
    complete = {
        "APP_ENV": "production",
        **SERVERS,
        "CORS_ALLOW_ORIGINS": "https://app.example.org",
        "SIGNING_KEYS_SECRET": real_secret(),
    }
    return Settings.from_env({**complete, **env})


def real_secret() -> str:
    """What `openssl rand -hex 32` prints."""
    return secrets.token_hex(32)


def refused_in_production(value: str) -> bool:
    try:
        production(JWT_SECRET=value, PIN_PEPPER=real_secret())
    except ConfigError as exc:
        assert "JWT_SECRET" in str(exc)
        return True
    return False


# ---- item 2: every secret written in this repository is refused in production -------------------


def repository_secret_candidates() -> set[str]:
    """Secret-looking values in tracked files: long tokens on lines that name a secret or pepper.

    snake_case identifiers (test and function names) are code, not values, and are left out.
    """
    files = subprocess.run(
        ["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    token = re.compile(r"[A-Za-z0-9][A-Za-z0-9+/=_.\-]{31,}")
    identifier = re.compile(r"[a-z]+(_[a-z0-9]+)+")
    found: set[str] = set()
    for name in files:
        try:
            text = (PROJECT_ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for line in text.splitlines():
            if re.search(r"secret|pepper|metrics_token", line, re.IGNORECASE):
                found.update(value for value in token.findall(line) if not identifier.fullmatch(value))
    return found


def test_every_secret_looking_value_of_the_repository_is_refused_in_production() -> None:
    candidates = repository_secret_candidates()
    assert len(candidates) >= 3, "the scan finds the secret-looking values"
    accepted = [value for value in sorted(candidates) if not refused_in_production(value)]
    assert accepted == [], "secrets anyone reading the repository knows must not start production"


@pytest.mark.parametrize("value", ["local-compose-only-jwt-secret-0123456789abcdef", "test-jwt-secret-" + "x" * 32])
def test_published_secrets_do_not_start_production(value: str) -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        production(JWT_SECRET=value, PIN_PEPPER=real_secret())


def compose_environment(service: str) -> dict[str, str]:
    document: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "compose.yaml").read_text())
    environment: dict[str, str] = document["services"][service]["environment"]
    return environment


def resolved(value: str, shell: dict[str, str]) -> str:
    """A compose value as `docker compose` resolves ``${VAR:-default}`` against the shell's environment."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: shell.get(m.group(1)) or m.group(2), value)


@pytest.mark.parametrize("service", ["api", "migrate"])
def test_compose_ships_no_secret_and_production_refuses_to_start_without_its_own(service: str) -> None:
    """`docker compose up` works as it is (development mode, secrets generated into its volume), and
    APP_ENV=production without the operator's own secrets stops, naming what is missing."""
    environment = compose_environment(service)
    for name in ("JWT_SECRET", "PIN_PEPPER", "SIGNING_KEYS_SECRET", "METRICS_TOKEN"):
        assert environment[name] == f"${{{name}:-}}", (name, environment[name])  # no default to publish
    as_is = {name: resolved(str(value), {}) for name, value in environment.items()}
    assert as_is["APP_ENV"] == "development"
    assert Settings.from_env(as_is).jwt_secret  # generated, not taken from the repository
    production_without_secrets = {
        name: resolved(str(value), {"APP_ENV": "production"}) for name, value in environment.items()
    }
    with pytest.raises(ConfigError, match="is required when APP_ENV=production"):
        Settings.from_env(production_without_secrets)


# ---- item 14: secrets with too little entropy ---------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "b" * 40,
        "8f3a" * 16,
        "ab" * 32,
        "0123456789abcdef" * 3,
        "correct-horse-battery-staple-correct-horse",
        "passwordpasswordpasswordpassword1",
        "qwertyuiopasdfghjklzxcvbnm1234567890",
    ],
)
def test_low_entropy_secrets_are_refused_in_production(value: str) -> None:
    with pytest.raises(ConfigError, match=r"JWT_SECRET .*entropy"):
        production(JWT_SECRET=value, PIN_PEPPER=real_secret())


def test_generated_secrets_start_production() -> None:
    for _ in range(20):
        hex_secret, base64_secret = real_secret(), base64.b64encode(secrets.token_bytes(32)).decode()
        settings = production(JWT_SECRET=hex_secret, PIN_PEPPER=base64_secret)
        assert (settings.jwt_secret, settings.pin_pepper) == (hex_secret, base64_secret)


# ---- item 11: production never starts embedded servers ------------------------------------------


@pytest.mark.parametrize("missing", [("DATABASE_URL",), ("REDIS_URL",), ("DATABASE_URL", "REDIS_URL")])
def test_production_without_server_urls_refuses_naming_them(missing: tuple[str, ...]) -> None:
    env = {"APP_ENV": "production", "JWT_SECRET": real_secret(), "PIN_PEPPER": real_secret(), **SERVERS}
    for name in missing:
        del env[name]
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    for name in missing:
        assert name in str(refused.value)


# ---- item 10: development secrets, two processes starting at once -------------------------------


def _start(data_dir: str, barrier: Any, results: Any) -> None:
    os.umask(0)  # the most permissive umask: the file must still be private from its first byte
    barrier.wait()
    try:
        settings = Settings.from_env({"DATA_DIR": data_dir})
        results.put((settings.jwt_secret, settings.pin_pepper))
    except Exception as exc:  # reported to the test, which fails on it
        results.put(("error", repr(exc)))


def test_processes_starting_together_share_one_private_secrets_file(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    processes = 8
    for attempt in range(40):
        data_dir = tmp_path / f"run{attempt}"
        barrier, results = context.Barrier(processes), context.Queue()
        workers = [context.Process(target=_start, args=(str(data_dir), barrier, results)) for _ in range(processes)]
        for worker in workers:
            worker.start()
        answers = [results.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
        errors = [answer for answer in answers if answer[0] == "error"]
        assert errors == []
        stored = json.loads((data_dir / "secrets.json").read_text())
        assert set(answers) == {(stored["jwt_secret"], stored["pin_pepper"])}, "every process uses the file's secrets"
        assert (data_dir / "secrets.json").stat().st_mode & 0o777 == 0o600
        assert sorted(path.name for path in data_dir.iterdir()) == ["secrets.json"]
