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

from app.core.cors import DEVELOPMENT_ORIGINS, CorsOriginInvalid, CorsPolicy
from app.core.postgres import DatabaseUrlError
from app.core.postgres import asyncpg_url as asyncpg_url  # the one normalisation, re-exported
from app.core.secret_policy import secret_problem

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
    redis_cluster: bool = False  # REDIS_URL is a seed node of a Redis Cluster (app/core/redis.py)
    redis_key_prefix: str = "le:"
    database_pool_size: int = 10
    redis_persistence_check: Literal["on", "off"] = "on"  # production refuses a Redis with appendonly no

    jwt_secret: str | None = None
    pin_pepper: str | None = None
    # Asymmetric signing keys (app/keys): the private halves are encrypted at rest with this secret.
    signing_keys_secret: str | None = None
    jwt_algorithm: Literal["ES256", "EdDSA"] = "ES256"  # of keys made by `keys rotate`; each kid keeps its own
    jwt_accept_legacy_hs256: bool = True  # tokens signed with JWT_SECRET before the switch, until they expire
    signing_keys_refresh_seconds: int = 30  # how often every process re-reads the key set
    jwks_max_age_seconds: int = 300  # Cache-Control of /.well-known/jwks.json
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
    legacy_bcrypt_rounds: int = 12  # cost of the Flask-era bcrypt hashes: failures are padded to it; 0: none left

    max_body_bytes: int = 16 * 1024
    # The edge of each `serve` process (app/core/edge.py, docs/operations.md): a request must arrive whole
    # within this many seconds of its first byte; open connections per process, and per client address
    # (0: no cap; set it only where the process sees clients' own addresses); idle keep-alive.
    request_read_timeout_seconds: float = 10
    max_connections: int = 1000
    connections_per_client: int = 0
    keep_alive_seconds: int = 5

    # Brute-force protection (app/ratelimit).
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    forwarded_header: Literal["x-forwarded-for", "forwarded", "auto"] = "x-forwarded-for"
    rate_limit_login_failures: int = 5
    rate_limit_login_window_seconds: int = 900
    rate_limit_ipv6_prefix: int = 64
    rate_limit_reservation_seconds: int = 30
    rate_limit_fail_open: bool = False
    pin_max_failures: int = 5
    pin_lock_seconds: int = 24 * 3600
    known_client_days: int = 30  # a client that signed in to a number is exempt from its password lock this long
    account_max_failures: int = 20
    account_window_seconds: int = 3600
    register_limit: int = 10
    register_window_seconds: int = 3600
    profile_identifier_changes: int = 5  # email / phone number change attempts per account per hour
    redis_shards: int = 16
    # The USSD gateway (app/ussd): wrong PINs one USSD session may try, how long a session's tries are
    # remembered, and failed verifications per minute per gateway credential (docs/ussd.md: sizing).
    ussd_session_max_failures: int = 3
    ussd_session_seconds: int = 900
    ussd_max_failures_per_minute: int = 2000
    # Registrations over USSD (every one counts, a 409 too): per gateway credential in a minute's sliding
    # window, and per number in a day's (docs/ussd.md: sizing).
    ussd_registrations_per_minute: int = 120
    ussd_registrations_per_number_per_day: int = 3

    # Audit pipeline (app/audit).
    audit_batch_size: int = 500
    audit_flush_ms: int = 200
    audit_claim_idle_ms: int = 30_000
    audit_writer_enabled: bool = True
    access_log: bool = False  # uvicorn's line per request (the load balancer usually keeps one)
    audit_retention_days: int = 365
    audit_partitions_ahead: int = 3  # months of login_attempts partitions kept created ahead of now
    audit_export_concurrency: int = 2  # exports streaming at once per process (each holds a DB connection)
    audit_exports_per_user: int = 1  # of those, at once by one account
    audit_export_deadline_seconds: float = 900  # an export still running after this is cut (and its COPY)
    audit_export_idle_seconds: float = 60  # an export whose client takes no data for this long is cut
    # API reads of the history (pages, summaries) at once per process, on the audit pool of their own
    # (reads + exports connections, apart from sign-in's); a read waiting longer gets 503 audit_reads_busy.
    audit_read_concurrency: int = 1
    audit_read_wait_seconds: float = 5
    audit_max_backlog: int = 1_000_000  # unwritten events Redis may hold; past it events go to Postgres directly
    # Browser origins (app/core/cors.py has the syntax); unset: the development origins, required in production.
    cors_allow_origins: list[str] | None = None
    reauth_window_seconds: int = 600  # a sign-in this recent may change credentials without current_password
    umwari_server_key_configured: bool = False  # reported to the settings page; the assistant is not ours

    # Account events (app/events/outbox.py, relay.py).
    account_events_relay_enabled: bool = True
    account_events_poll_ms: int = 500
    account_events_retention_days: int = 30
    # /health answers 503 (with the reason) when reading users takes longer than this, or the oldest
    # unwritten audit event is older than that.
    health_sign_in_threshold_ms: int = 1000
    health_audit_lag_seconds: float = 30
    metrics_token: str | None = None  # GET /metrics needs it as Bearer; unset: refused in production

    # Support (app/admin, app/sessions).
    recovery_ttl_hours: int = 24  # a one-time temporary password is good for one sign-in within this
    session_last_use_tracking: bool = True  # last use, address and user agent of each session (on refresh)

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
        if self.account_events_retention_days < 1 or self.account_events_poll_ms < 1:
            raise ConfigError("ACCOUNT_EVENTS_RETENTION_DAYS and ACCOUNT_EVENTS_POLL_MS must be at least 1")
        if not 1 <= self.audit_partitions_ahead <= 120:
            raise ConfigError("AUDIT_PARTITIONS_AHEAD must be 1-120 months")
        if self.refresh_reuse_grace_seconds < 0 or self.access_token_minutes < 1 or self.refresh_token_days < 1:
            raise ConfigError("token lifetimes must be positive")
        if self.recovery_ttl_hours < 1:
            raise ConfigError("RECOVERY_TTL_HOURS must be at least 1")
        if self.signing_keys_refresh_seconds < 1 or self.jwks_max_age_seconds < 0:
            raise ConfigError("SIGNING_KEYS_REFRESH_SECONDS must be at least 1 and JWKS_MAX_AGE_SECONDS not negative")
        if self.reauth_window_seconds < 0:
            raise ConfigError("REAUTH_WINDOW_SECONDS must be 0 or more")
        if self.app_env == "test" and not running_under_test_runner():
            # Outside the suite, "test" is a deployment by another name (a staging host, a copied .env):
            # the secrets it is given must be real ones.
            for name in ("jwt_secret", "pin_pepper", "signing_keys_secret", "metrics_token"):
                if getattr(self, name) is not None:
                    _check_secret(name, getattr(self, name), "APP_ENV=test outside the test suite: ")
        if self.app_env == "production":
            # Embedded servers are for the local run: production names its servers or does not start.
            missing = [name.upper() for name in ("database_url", "redis_url") if not getattr(self, name)]
            if missing:
                raise ConfigError(f"{' and '.join(missing)} must be set when APP_ENV=production")
            required = ["pin_pepper", "signing_keys_secret"]
            if self.jwt_accept_legacy_hs256:
                required.append("jwt_secret")  # it still verifies the tokens issued before the switch
            for name in required:
                _check_secret(name, getattr(self, name))
            if self.metrics_token is not None:
                _check_secret("metrics_token", self.metrics_token)
        if self.cors_allow_origins is None:
            if self.app_env == "production":
                raise ConfigError(
                    "CORS_ALLOW_ORIGINS is required when APP_ENV=production: the web client's origins, "
                    "e.g. https://app.example.org,https://localhost:*,capacitor://localhost"
                )
            return msgspec.structs.replace(self, cors_allow_origins=list(DEVELOPMENT_ORIGINS)).validated()
        try:
            CorsPolicy.parse(self.cors_allow_origins)
        except CorsOriginInvalid as exc:
            raise ConfigError(str(exc)) from exc
        if self.app_env == "production":
            return self
        if self.jwt_secret and self.pin_pepper and self.signing_keys_secret:
            return self
        stored = _development_secrets(self.data_dir)
        return msgspec.structs.replace(
            self,
            jwt_secret=self.jwt_secret or stored["jwt_secret"],
            pin_pepper=self.pin_pepper or stored["pin_pepper"],
            signing_keys_secret=self.signing_keys_secret or stored["signing_keys_secret"],
        )

    @property
    def token_lifetime_seconds(self) -> int:
        """The longest a token lives: a key that stopped signing verifies this long after."""
        return max(self.access_token_minutes * 60, self.refresh_token_days * 86400)

    @property
    def key_publish_seconds(self) -> int:
        """How long a new key is published before it signs: every process and every cached JWKS has it by then."""
        return self.signing_keys_refresh_seconds + self.jwks_max_age_seconds + 5

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


def _check_secret(name: str, value: str | None, context: str = "") -> None:
    problem = secret_problem(value)
    if problem:
        raise ConfigError(f"{context}{name.upper()} {problem}")


def running_under_test_runner() -> bool:
    """pytest sets PYTEST_CURRENT_TEST while a test runs (and the servers a test starts inherit it)."""
    return "PYTEST_CURRENT_TEST" in os.environ


def _development_secrets(data_dir: Path) -> dict[str, str]:
    """Generate development secrets once and keep them, so tokens survive a restart.

    The file is born complete and private: written under a name of its own with mode 0600 from the
    first byte (O_CREAT|O_EXCL, whatever the umask), then linked into place, which fails if another
    starting process got there first; then theirs is used.
    """
    path = data_dir / "secrets.json"
    names = ("jwt_secret", "pin_pepper", "signing_keys_secret")
    older: dict[str, str] = {}  # a file from before the newer secrets existed
    try:
        older = json.loads(path.read_text())
        if all(older.get(name) for name in names):
            return older
    except (OSError, ValueError):
        older = {}
    data_dir.mkdir(parents=True, exist_ok=True)
    # Keep what a .data/ from before already has (its tokens and PIN hashes depend on it).
    stored = {name: older.get(name) or secrets.token_hex(32) for name in names}
    tmp = data_dir / f".secrets.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(stored))
            out.flush()
            os.fsync(out.fileno())
        if older:
            tmp.replace(path)  # the older file, completed (its tokens and PIN hashes depend on what it had)
        else:
            os.link(tmp, path)  # fails if another starting process won the race; then theirs is used
    except FileExistsError:
        try:
            stored = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON: remove it to generate new development secrets") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return stored


def parse_networks(values: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(value, strict=False) for value in values)
    except ValueError as exc:
        raise ConfigError(f"invalid CIDR: {exc}") from exc
