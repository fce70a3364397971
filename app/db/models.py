"""Tables: users (every Flask-era column plus ``role``), sessions, refresh_tokens, login_attempts (partitioned),
login_attempts_hourly, audit_queries, signing_keys, service_credentials, account_events, admin_actions,
webhook_endpoints, webhook_deliveries."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from advanced_alchemy.base import DefaultBase, IdentityAuditBase, IdentityBase, orm_registry
from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSONB
from sqlalchemy.orm import Mapped, mapped_column

metadata = orm_registry.metadata

ROLES = ("user", "security", "admin")
# Every Flask-era value (the legacy import keeps them); registration offers only parent and adolescent.
USER_TYPES = ("parent", "adolescent", "admin", "content_writer", "health_provider")
STAFF_USER_TYPES = ("admin", "content_writer", "health_provider")
# Where a row came from: written by this service, or brought in by ``ladys-essence legacy import``.
SOURCES = ("api", "flask")


class User(IdentityAuditBase):
    __tablename__ = "users"
    __table_args__ = (
        Index("uq_users_email_lower", func.lower(text("email")), unique=True),
        CheckConstraint("role IN ('user', 'security', 'admin')", name="role"),
    )

    name: Mapped[str] = mapped_column(String(200))
    # NULL: no phone (family-managed children, imported collisions); such an account cannot sign in by phone.
    phone_number: Mapped[str | None] = mapped_column(String(20), unique=True, default=None)
    email: Mapped[str | None] = mapped_column(String(254), default=None)
    password_hash: Mapped[str] = mapped_column(String(255))
    user_type: Mapped[str] = mapped_column(String(20), default="adolescent")
    role: Mapped[str] = mapped_column(String(16), default="user", server_default="user")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    pin_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    enable_pin_auth: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    personal_cycle_length: Mapped[int | None] = mapped_column(Integer, default=None)
    personal_period_length: Mapped[int | None] = mapped_column(Integer, default=None)
    has_provided_cycle_info: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    last_activity: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    session_timeout_minutes: Mapped[int] = mapped_column(Integer, default=30, server_default="30")
    account_type: Mapped[str | None] = mapped_column(String(20), default=None)
    is_phone_verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    allow_parent_access: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    data_sharing_consent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    notification_preferences: Mapped[dict[str, Any] | None] = mapped_column(JSONB, default=None)
    date_of_birth: Mapped[datetime.date | None] = mapped_column(Date, default=None)
    # The last account event's sequence number (app/events/outbox.py bumps it in the change's transaction).
    event_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    current_session_data: Mapped[str | None] = mapped_column(Text, default=None)  # Flask-era USSD session state
    source: Mapped[str] = mapped_column(String(8), default="api", server_default="api")
    # Support's one-time temporary password (app/admin/recovery.py): argon2id hash, good for one sign-in until then.
    recovery_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    recovery_expires_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    # Set when an admin deleted the account: its personal data is erased, the row stays for the history.
    deleted_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


SESSION_CHANNELS = ("http", "ussd")


class Session(DefaultBase):
    """One signed-in session (app/sessions): its id is the ``sid`` of every token issued for it.

    Live means ``ended_at IS NULL AND expires_at > now()`` (``app.sessions.liveness``), and nothing
    else does: token checks, refresh, the device list, the admin view and introspection all ask
    that. ``expires_at`` moves with each rotation (the newest refresh token's expiry). Every path
    that ends a session sets ``ended_at`` and ``end_reason`` through one statement.
    """

    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_user_live", "user_id", postgresql_where=text("ended_at IS NULL")),
        Index("ix_sessions_user_id", "user_id"),
        CheckConstraint("channel IN ('http', 'ussd')", name="channel"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(8), default="http", server_default="http")
    created_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True))
    # When the password or PIN sign-in happened (OIDC's ``auth_time``); NULL for sessions older than the column.
    auth_time: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    expires_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True))
    last_used_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True))
    last_ip: Mapped[str | None] = mapped_column(INET, default=None)
    last_user_agent: Mapped[str | None] = mapped_column(String(255), default=None)
    ended_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    end_reason: Mapped[str | None] = mapped_column(String(32), default=None)


class RefreshToken(IdentityAuditBase):
    """One issued refresh token of a session. Only a SHA-256 of the token is stored.

    A refresh token is usable while its session is live, it has not expired, and it was not
    replaced (``rotated_at``) longer ago than the reuse grace. It has no state of its own that
    says "revoked": ending is the session's business.
    """

    __tablename__ = "refresh_tokens"

    jti: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    session_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True))
    rotated_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class LoginAttempt(DefaultBase):
    """One call of the login endpoint or a USSD endpoint, whatever its outcome; written by the audit pipeline.

    Keeps the Flask-era columns (id, phone_number, success, ip_address, user_agent, created_at).
    ``event_id`` (UUIDv7, minted by the request) makes every write idempotent.

    Partitioned by month on ``created_at`` (app/audit/pipeline/partitions.py keeps months ahead;
    db/migrations/versions/0008_partitions.py converted the old table). A unique key must include
    the partition column, so the key is ``(event_id, created_at)``, both fixed when the event is
    minted; ``id`` comes from the parent's identity sequence, unique by construction.
    """

    __tablename__ = "login_attempts"
    # Every audit page is ordered newest first by (created_at, id); each index ends in those two
    # columns so a filtered page is one backward index scan that stops after ``limit`` rows, with
    # the keyset cursor as an index condition. docs/audit-explain.md has the plans at 10M rows.
    # Indexes on a partitioned table are partitioned indexes: one per partition, made with it.
    __table_args__ = (
        # Time ranges, "failures only", prune's oldest-first batches, and any filter without its own index.
        Index("ix_login_attempts_created_at_id", "created_at", "id"),
        # Phone filter (the common investigation), also PIN-locked numbers and top phones of a range.
        Index("ix_login_attempts_phone_created_at_id", "phone_number", "created_at", "id"),
        # IP filter: one address is an equality, a CIDR a range (btree, not GiST: see the explain doc).
        Index("ix_login_attempts_ip_created_at_id", "ip_address", "created_at", "id"),
        # The summary's PIN-locked numbers: a few refusals among millions of rows, read from the
        # index alone (the number is included) and grouped by number.
        Index(
            "ix_login_attempts_pin_locked",
            "created_at",
            postgresql_include=["phone_number"],
            postgresql_where=text("reason = 'pin_locked'"),
        ),
        CheckConstraint("channel IN ('http', 'ussd', 'sms')", name="channel"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False, start=1, increment=1))
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True), primary_key=True)
    phone_number: Mapped[str] = mapped_column(String(20))
    user_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    success: Mapped[bool] = mapped_column(Boolean)
    auth_method: Mapped[str | None] = mapped_column(String(10), default=None)
    reason: Mapped[str] = mapped_column(String(32))
    ip_address: Mapped[str | None] = mapped_column(INET, default=None)
    user_agent: Mapped[str | None] = mapped_column(String(255), default=None)
    request_id: Mapped[str | None] = mapped_column(String(64), default=None)
    source: Mapped[str] = mapped_column(String(8), default="api", server_default="api")
    legacy_ip: Mapped[str | None] = mapped_column(Text, default=None)  # a Flask-era ip_address that is not one
    # ``http``: the login endpoint; ``ussd``: the gateway's endpoints, with its session and credential.
    channel: Mapped[str] = mapped_column(String(8), default="http", server_default="http")
    session_id: Mapped[str | None] = mapped_column(String(64), default=None)
    service_name: Mapped[str | None] = mapped_column(String(64), default=None)


class LoginAttemptHourly(DefaultBase):
    """How many attempts each UTC hour had, per outcome, reason and channel: what summaries count from.

    The audit writer adds the rows it really inserted in the same transaction as the batch, and
    retention subtracts what it deletes, so these always equal a GROUP BY over ``login_attempts``.
    """

    __tablename__ = "login_attempts_hourly"
    __table_args__ = (CheckConstraint("channel IN ('http', 'ussd', 'sms')", name="channel"),)

    hour: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True), primary_key=True)
    success: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel: Mapped[str] = mapped_column(String(8), primary_key=True)
    attempts: Mapped[int] = mapped_column(BigInteger)


class AuditQuery(IdentityBase):
    """One read of the login history (API or CLI): who asked, for what, when. Admins list them.

    ``actor`` keeps who asked in words (the phone number of the account, or ``user@host`` for the
    CLI) so the record still says who after the account is gone.
    """

    __tablename__ = "audit_queries"

    created_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=func.now())
    user_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="SET NULL"), default=None)
    actor: Mapped[str] = mapped_column(String(255))
    origin: Mapped[str] = mapped_column(String(8))  # api | cli
    action: Mapped[str] = mapped_column(String(32))  # list | export | summary | queries | prune
    filters: Mapped[dict[str, Any]] = mapped_column(JSONB)
    row_count: Mapped[int | None] = mapped_column(BigInteger, default=None)
    client_ip: Mapped[str | None] = mapped_column(INET, default=None)


class SigningKey(IdentityBase):
    """One asymmetric token-signing key (app/keys). Its schedule is in its timestamps:

    published from ``created_at``, signing from ``activates_at`` until a newer key activates, then
    verifying until the last token it signed has expired; ``retired_at`` ends it early (`keys retire`).
    ``private_key`` is the PKCS#8 private half, AES-GCM encrypted under SIGNING_KEYS_SECRET; NULL once retired.
    """

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), unique=True)
    alg: Mapped[str] = mapped_column(String(8))
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSONB)
    private_key: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True))
    activates_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True))
    retired_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class ServiceCredential(IdentityBase):
    """A platform service's bearer credential (app/platform). Only a SHA-256 of the token is stored."""

    __tablename__ = "service_credentials"
    __table_args__ = (
        # One live credential per name; a revoked name can be issued again.
        Index("uq_service_credentials_live_name", "name", unique=True, postgresql_where=text("revoked_at IS NULL")),
    )

    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class AccountEvent(DefaultBase):
    """One account change, written in the change's transaction; the relay publishes it (app/events/relay.py).

    No foreign key to ``users``: an ``account.deleted`` event must outlive the row it reports.
    ``seq`` counts the user's events from 1 without gaps (``users.event_seq``).
    """

    __tablename__ = "account_events"
    __table_args__ = (
        Index("uq_account_events_user_seq", "user_id", "seq", unique=True),
        # The relay's queue: only unpublished rows, in the order it publishes them.
        Index("ix_account_events_unpublished", "created_at", "id", postgresql_where=text("published_at IS NULL")),
        # Pruning published rows past the retention.
        Index("ix_account_events_published_at", "published_at", postgresql_where=text("published_at IS NOT NULL")),
        # The webhook fan-out's queue (app/webhooks/deliverer.py), as the relay's above.
        Index("ix_account_events_unfanned", "created_at", "id", postgresql_where=text("fanned_out_at IS NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)  # UUIDv7
    user_id: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(48))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime.datetime] = mapped_column(
        DateTimeUTC(timezone=True), server_default=text("clock_timestamp()")
    )
    published_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    # When the webhook fan-out made this event's deliveries (one per subscribed endpoint).
    fanned_out_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)


class AdminAction(IdentityBase):
    """One action of support staff on an account (app/admin): who, what, to whom, when, from where.

    ``actor`` keeps who in words (the staff account's phone number, or ``user@host`` for the CLI) so
    the record still says who after that account is gone; ``target_user_id`` has no foreign key for
    the same reason, and no personal data of the target is copied here (deletion erases it).
    """

    __tablename__ = "admin_actions"
    __table_args__ = (
        Index("ix_admin_actions_created_at_id", "created_at", "id"),
        Index("ix_admin_actions_target_created_at_id", "target_user_id", "created_at", "id"),
    )

    created_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=func.now())
    actor_user_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    actor: Mapped[str] = mapped_column(String(255))
    origin: Mapped[str] = mapped_column(String(8))  # api | cli
    action: Mapped[str] = mapped_column(String(32))
    target_user_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB)
    client_ip: Mapped[str | None] = mapped_column(INET, default=None)


WEBHOOK_DELIVERY_STATUSES = ("pending", "delivered", "dead")


class WebhookEndpoint(IdentityBase):
    """A URL that receives account events as Standard Webhooks (app/webhooks), registered by the CLI.

    ``secret`` is the ``whsec_`` signing secret, AES-GCM encrypted under SIGNING_KEYS_SECRET: it must
    be usable to sign, so it cannot be hashed. ``event_types`` lists event types, or ``*`` for all.
    """

    __tablename__ = "webhook_endpoints"

    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(ARRAY(String(48)))
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime.datetime] = mapped_column(
        DateTimeUTC(timezone=True), server_default=text("clock_timestamp()")
    )


class WebhookDelivery(IdentityBase):
    """One event to one endpoint: pending until the endpoint answers 2xx (delivered) or the attempts run out (dead).

    No foreign key to ``account_events``: the body is read from the event when it is sent (an erased
    account's events go out scrubbed), and a delivery outlives an event pruned under it.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("uq_webhook_deliveries_endpoint_event", "endpoint_id", "event_id", unique=True),
        # Each user's oldest pending delivery to an endpoint is the only one that may be sent.
        Index(
            "ix_webhook_deliveries_pending",
            "endpoint_id",
            "user_id",
            "seq",
            postgresql_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_finished_at", "finished_at", postgresql_where=text("finished_at IS NOT NULL")),
        CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="status"),
    )

    endpoint_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    user_id: Mapped[int] = mapped_column(BigInteger)
    seq: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(12), default="pending", server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=func.now())
    last_attempt_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    last_error: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTimeUTC(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime.datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
