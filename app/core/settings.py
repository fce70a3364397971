"""Typed settings read from the environment.

Settings are a frozen msgspec struct built by :func:`Settings.from_env`; nothing reads the environment
at import time, so tests and the CLI build as many differently-configured apps as they like.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from app.core.cors import DEVELOPMENT_ORIGINS, CorsOriginInvalid, CorsPolicy
from app.core.postgres import DatabaseUrlError
from app.core.postgres import asyncpg_url as asyncpg_url  # the one normalisation, re-exported
from app.core.secret_policy import secret_problem

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LEGACY_ISSUER = "ladys-essence-auth"  # the issuer string before it became the service's URL
# jose (createRemoteJWKSet's cooldownDuration) refetches a JWKS for an unknown kid at most every 30 s:
# a key published less than this before it signs is unknown to such a verifier for up to that long.
VERIFIER_REFETCH_FLOOR_SECONDS = 30


class ConfigError(ValueError):
    """The environment does not describe a runnable service."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    app_env: Literal["development", "test", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line, for log shippers
    # Where peers reach this service (https in production): the issuer and the discovery documents' URLs.
    public_url: str = ""  # unset: http://HOST:PORT outside production
    data_dir: Path = PROJECT_ROOT / ".data"

    database_url: str | None = None
    redis_url: str | None = None
    redis_cluster: bool = False  # REDIS_URL is a seed node of a Redis Cluster (app/core/redis.py)
    redis_key_prefix: str = "le:"
    database_pool_size: int = 10
    # How long a request's session statement (signed-in check, refresh, sign-in lookup) waits for a
    # lock (``users`` locked by a migration or by hand) before it is a 503 ``busy`` with Retry-After.
    database_lock_timeout_ms: int = 5000
    redis_persistence_check: Literal["on", "off"] = "on"  # production refuses a Redis with appendonly no

    jwt_secret: str | None = None
    pin_pepper: str | None = None
    # Asymmetric signing keys (app/keys): the private halves are encrypted at rest with this secret.
    signing_keys_secret: str | None = None
    jwt_algorithm: Literal["ES256", "EdDSA"] = "ES256"  # of keys made by `keys rotate`; each kid keeps its own
    jwt_accept_legacy_hs256: bool = True  # tokens signed with JWT_SECRET before the switch, until they expire
    signing_keys_refresh_seconds: int = 30  # how often every process re-reads the key set
    jwks_max_age_seconds: int = 300  # Cache-Control of /.well-known/jwks.json
    jwt_issuer: str = ""  # unset: PUBLIC_URL (RFC 8414: the issuer is the URL discovery starts from)
    jwt_accept_legacy_issuer: bool = True  # tokens carrying LEGACY_ISSUER still verify here (docs/cutover.md)
    jwt_audience: str = "ladys-essence"
    access_token_minutes: int = 15
    refresh_token_days: int = 30
    refresh_rotation: Literal["auto", "always", "never"] = "auto"
    refresh_reuse_grace_seconds: int = 10
    client_credentials_token_seconds: int = 300  # access tokens of POST /oauth/token (grant client_credentials)

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
    # Self-service recovery (app/recovery, docs/recovery.md): one-time codes and the SMS that carries them.
    recovery_code_minutes: int = 10
    recovery_code_max_tries: int = 5
    # Unset: "log" outside production; in production, no SMS at all (recovery goes by USSD). Production refuses "log".
    sms_provider: Literal["africastalking", "log", "off"] | None = None
    africastalking_username: str | None = None
    africastalking_api_key: str | None = None
    africastalking_api_url: str = "https://api.africastalking.com"
    sms_sender_id: str | None = None
    sms_allowed_countries: list[str] = msgspec.field(default_factory=lambda: ["RW"])
    sms_daily_budget: int = 2000  # every SMS sent, all numbers, in a day's sliding window
    sms_per_number_per_hour: int = 3
    sms_per_number_per_day: int = 5
    sms_per_client_per_hour: int = 10
    sms_per_prefix_per_hour: int = 30  # numbers sharing all but their last three digits
    sms_resend_seconds: int = 60
    sms_answer_ms: int = 1500  # recovery/start answers no sooner, account or not (no enumeration by timing)

    # Audit pipeline (app/audit).
    audit_batch_size: int = 500
    audit_flush_ms: int = 200
    audit_claim_idle_ms: int = 30_000
    audit_writer_enabled: bool = True
    access_log: bool = True  # one line per request (app.core.logs.AccessLog); off, a refused sign-in is cheaper
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
    # Seconds of history reads one account may use per minute (per process), refilled continuously;
    # past it 429 audit_budget_spent with Retry-After (app/audit/history/budget.py). 0: no budget.
    audit_read_seconds_per_minute: float = 10
    audit_max_backlog: int = 1_000_000  # unwritten events Redis may hold; past it events go to Postgres directly
    # Browser origins (app/core/cors.py has the syntax); unset: the development origins, required in production.
    cors_allow_origins: list[str] | None = None
    reauth_window_seconds: int = 600  # a sign-in this recent may change credentials without current_password
    umwari_server_key_configured: bool = False  # reported to the settings page; the assistant is not ours

    # Account events (app/events/outbox.py, relay.py).
    account_events_relay_enabled: bool = True
    account_events_poll_ms: int = 500
    account_events_retention_days: int = 30
    # Webhooks (app/webhooks; docs/account-events.md "Webhooks"): a deliverer in each API process unless off.
    webhooks_enabled: bool = True
    webhooks_poll_ms: int = 1000
    webhooks_timeout_seconds: float = 10.0  # per request: connect, send and read the answer
    webhooks_concurrency: int = 8  # endpoints sent to at once per process (one database connection each)
    webhooks_max_attempts: int = 18  # then the delivery is dead-lettered (`webhooks dead-letters`, `replay`)
    webhooks_retry_base_seconds: float = 5.0  # the wait after the first failure; doubles with each failure
    webhooks_retry_max_seconds: float = 3600.0  # and never exceeds this
    # /health answers 503 (with the reason) when reading users takes longer than this, or the oldest
    # unwritten audit event is older than that.
    health_sign_in_threshold_ms: int = 1000
    health_audit_lag_seconds: float = 30
    metrics_token: str | None = None  # GET /metrics needs it as Bearer; unset: refused in production

    # Support (app/admin, app/sessions).
    recovery_ttl_hours: int = 24  # a one-time temporary password is good for one sign-in within this

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
        if (
            self.webhooks_poll_ms < 1
            or self.webhooks_max_attempts < 1
            or not 1 <= self.webhooks_concurrency <= 100
            or not 0 < self.webhooks_timeout_seconds <= 300
            or not 0 < self.webhooks_retry_base_seconds <= self.webhooks_retry_max_seconds
        ):
            raise ConfigError(
                "WEBHOOKS_POLL_MS and WEBHOOKS_MAX_ATTEMPTS must be at least 1, WEBHOOKS_CONCURRENCY 1-100, "
                "WEBHOOKS_TIMEOUT_SECONDS 0-300, "
                "and 0 < WEBHOOKS_RETRY_BASE_SECONDS <= WEBHOOKS_RETRY_MAX_SECONDS"
            )
        if not 1 <= self.audit_partitions_ahead <= 120:
            raise ConfigError("AUDIT_PARTITIONS_AHEAD must be 1-120 months")
        if self.refresh_reuse_grace_seconds < 0 or self.access_token_minutes < 1 or self.refresh_token_days < 1:
            raise ConfigError("token lifetimes must be positive")
        if self.recovery_ttl_hours < 1:
            raise ConfigError("RECOVERY_TTL_HOURS must be at least 1")
        if self.signing_keys_refresh_seconds < 1 or self.jwks_max_age_seconds < 0:
            raise ConfigError("SIGNING_KEYS_REFRESH_SECONDS must be at least 1 and JWKS_MAX_AGE_SECONDS not negative")
        if self.client_credentials_token_seconds < 1:
            raise ConfigError("CLIENT_CREDENTIALS_TOKEN_SECONDS must be at least 1")
        if self.reauth_window_seconds < 0:
            raise ConfigError("REAUTH_WINDOW_SECONDS must be 0 or more")
        if self.app_env == "test" and not running_under_test_runner():
            # Outside the suite, "test" is a deployment by another name (a staging host, a copied .env):
            # the secrets it is given must be real ones.
            for name in ("jwt_secret", "pin_pepper", "signing_keys_secret", "metrics_token"):
                if getattr(self, name) is not None:
                    _check_secret(name, getattr(self, name), "APP_ENV=test outside the test suite: ")
        if self.recovery_code_minutes < 1 or self.recovery_code_max_tries < 1 or self.sms_daily_budget < 1:
            raise ConfigError("RECOVERY_CODE_MINUTES, RECOVERY_CODE_MAX_TRIES and SMS_DAILY_BUDGET must be at least 1")
        if self.app_env == "production" and self.sms_provider == "log":
            raise ConfigError("SMS_PROVIDER=log writes codes to the log: production needs SMS_PROVIDER=africastalking")
        if self.sms_provider == "africastalking" and not (self.africastalking_username and self.africastalking_api_key):
            raise ConfigError("SMS_PROVIDER=africastalking needs AFRICASTALKING_USERNAME and AFRICASTALKING_API_KEY")
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
            if not self.public_url:
                raise ConfigError("PUBLIC_URL must be set when APP_ENV=production: the https URL peers reach this at")
            for name, url in (("public_url", self.public_url), ("jwt_issuer", self.jwt_issuer or self.public_url)):
                if not url.startswith("https://"):
                    raise ConfigError(f"{name.upper()} must be an https URL when APP_ENV=production")
            if self.key_publish_seconds < VERIFIER_REFETCH_FLOOR_SECONDS or (
                self.jwks_max_age_seconds < VERIFIER_REFETCH_FLOOR_SECONDS
            ):
                raise ConfigError(
                    f"JWKS_MAX_AGE_SECONDS must be at least {VERIFIER_REFETCH_FLOOR_SECONDS} when APP_ENV=production: "
                    "jose and PyJWT clients refetch the key set at most that often, so a shorter key schedule "
                    "fails their verifications (docs/signing-keys.md)"
                )
        if not self.public_url or not self.jwt_issuer:
            return self._with_public_url().validated()
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

    def _with_public_url(self) -> Settings:
        """PUBLIC_URL (required in production) and the issuer, which is PUBLIC_URL unless JWT_ISSUER says otherwise."""
        public_url = (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
        return msgspec.structs.replace(self, public_url=public_url, jwt_issuer=self.jwt_issuer or public_url)

    @property
    def accepted_issuers(self) -> list[str]:
        """The issuer, and the string it replaced while JWT_ACCEPT_LEGACY_ISSUER is on."""
        if self.jwt_accept_legacy_issuer and self.jwt_issuer != LEGACY_ISSUER:
            return [self.jwt_issuer, LEGACY_ISSUER]
        return [self.jwt_issuer]

    @property
    def sms_channel(self) -> str:
        """The SMS provider in use: ``africastalking``, ``log``, or ``off`` (recovery by USSD only)."""
        if self.sms_provider is not None:
            return self.sms_provider
        return "off" if self.app_env == "production" else "log"

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
    """pytest sets PYTEST_CURRENT_TEST while a test runs (and the servers a test starts inherit it); test
    modules that build settings while pytest collects them run with pytest imported. A served process
    never imports pytest."""
    return "PYTEST_CURRENT_TEST" in os.environ or "pytest" in sys.modules


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
