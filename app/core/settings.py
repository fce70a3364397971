"""Typed settings read from the environment.

Settings are a frozen msgspec struct built by :func:`Settings.from_env`; nothing reads the environment
at import time, so tests and the CLI build as many differently-configured apps as they like.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from app.core.postgres import DatabaseUrlError
from app.core.postgres import asyncpg_url as asyncpg_url  # the one normalisation, re-exported

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Values copied from tutorials and .env examples; refused outside development.
PLACEHOLDER_SECRETS = frozenset(
    {
        "changeme",
        "change-me",
        "change_me",
        "secret",
        "your-secret-key",
        "your_secret_key",
        "jwt-secret",
        "jwt_secret_key",
        "super-secret",
        "supersecret",
        "dev-secret",
        "development",
        "replace-me",
        "please-change-me",
    }
)
MIN_SECRET_BYTES = 32


class ConfigError(ValueError):
    """The environment does not describe a runnable service."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    app_env: Literal["development", "test", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "INFO"
    data_dir: Path = PROJECT_ROOT / ".data"

    database_url: str | None = None
    redis_url: str | None = None
    redis_key_prefix: str = "le:"
    database_pool_size: int = 10

    jwt_secret: str | None = None
    pin_pepper: str | None = None
    jwt_issuer: str = "ladys-essence-auth"
    jwt_audience: str = "ladys-essence"
    access_token_minutes: int = 15
    refresh_token_days: int = 30
    refresh_rotation: Literal["auto", "always", "never"] = "auto"
    refresh_reuse_grace_seconds: int = 10

    default_phone_region: str = "RW"
    argon2_memory_kib: int = 19456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1
    hash_threads: int = 0  # 0: the cores shared out among the workers
    hash_thread_nice: int = 0  # > 0: hashing yields the CPU to the event loop (Linux); see docs/benchmarks.md

    max_body_bytes: int = 16 * 1024

    # Brute-force protection (app/ratelimit).
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    forwarded_header: Literal["x-forwarded-for", "forwarded", "auto"] = "x-forwarded-for"
    rate_limit_login_failures: int = 5
    rate_limit_login_window_seconds: int = 900
    rate_limit_ipv6_prefix: int = 64
    rate_limit_reservation_seconds: int = 30
    rate_limit_fail_open: bool = False
    pin_max_failures: int = 5
    account_max_failures: int = 20
    account_window_seconds: int = 3600
    register_limit: int = 10
    register_window_seconds: int = 3600
    redis_shards: int = 16

    # Audit pipeline (app/audit).
    audit_batch_size: int = 500
    audit_flush_ms: int = 200
    audit_claim_idle_ms: int = 30_000
    audit_writer_enabled: bool = True
    audit_retention_days: int = 365
    audit_partitions_ahead: int = 3  # months of login_attempts partitions kept created ahead of now
    audit_export_concurrency: int = 2  # exports streaming at once per process (each holds a DB connection)
    audit_max_backlog: int = 1_000_000  # unwritten events Redis may hold; past it events go to Postgres directly
    cors_allow_origins: list[str] = msgspec.field(default_factory=lambda: ["*"])

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read every field from its upper-case environment variable, then apply overrides."""
        env = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        for name, field_type in cls.__annotations__.items():
            value = env.get(name.upper())
            if value is None or value == "":
                continue
            raw[name] = _split_list(value) if "list[" in str(field_type) else value
        raw.update(overrides)
        try:
            settings = msgspec.convert(raw, cls, strict=False, dec_hook=_decode_path)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid setting: {exc}") from exc
        return settings.validated()

    def validated(self) -> Settings:
        """Refuse unsafe combinations, normalise the database URL, fill development secrets from ``.data/``."""
        if self.database_url:
            try:
                url = asyncpg_url(self.database_url)
            except DatabaseUrlError as exc:
                raise ConfigError(str(exc)) from exc
            if url != self.database_url:
                return msgspec.structs.replace(self, database_url=url).validated()
        parse_networks(self.trusted_proxies)
        if not 0 < self.rate_limit_ipv6_prefix <= 128 or self.redis_shards < 1:
            raise ConfigError("RATE_LIMIT_IPV6_PREFIX must be 1-128 and REDIS_SHARDS at least 1")
        if self.audit_max_backlog < 1:
            raise ConfigError("AUDIT_MAX_BACKLOG must be at least 1")
        if not 1 <= self.audit_partitions_ahead <= 120:
            raise ConfigError("AUDIT_PARTITIONS_AHEAD must be 1-120 months")
        if self.refresh_reuse_grace_seconds < 0 or self.access_token_minutes < 1 or self.refresh_token_days < 1:
            raise ConfigError("token lifetimes must be positive")
        if self.app_env == "production":
            for name in ("jwt_secret", "pin_pepper"):
                _check_secret(name, getattr(self, name))
            return self
        if self.jwt_secret and self.pin_pepper:
            return self
        stored = _development_secrets(self.data_dir)
        return msgspec.structs.replace(
            self,
            jwt_secret=self.jwt_secret or stored["jwt_secret"],
            pin_pepper=self.pin_pepper or stored["pin_pepper"],
        )

    @property
    def hash_thread_count(self) -> int:
        """More hashing threads than cores only queue work and starve the event loops."""
        return self.hash_threads or max(1, (os.cpu_count() or 2) // max(1, self.workers))


def _decode_path(type_: type, value: object) -> object:
    if type_ is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _check_secret(name: str, value: str | None) -> None:
    env_name = name.upper()
    if not value:
        raise ConfigError(f"{env_name} is required when APP_ENV=production")
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        raise ConfigError(f"{env_name} is a well-known placeholder; generate one with `openssl rand -hex 32`")
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"{env_name} must be at least {MIN_SECRET_BYTES} bytes")


def _development_secrets(data_dir: Path) -> dict[str, str]:
    """Generate development secrets once and keep them, so tokens survive a restart."""
    path = data_dir / "secrets.json"
    try:
        stored: dict[str, str] = json.loads(path.read_text())
        if stored.get("jwt_secret") and stored.get("pin_pepper"):
            return stored
    except (OSError, ValueError):
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    stored = {"jwt_secret": secrets.token_hex(32), "pin_pepper": secrets.token_hex(32)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stored))
    tmp.chmod(0o600)
    try:
        # link() fails if another process won the race; then use theirs.
        os.link(tmp, path)
    except FileExistsError:
        stored = json.loads(path.read_text())
    finally:
        tmp.unlink(missing_ok=True)
    return stored


def parse_networks(values: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(value, strict=False) for value in values)
    except ValueError as exc:
        raise ConfigError(f"invalid CIDR: {exc}") from exc
