"""``create_app(settings)``: the one place the application is assembled."""

from __future__ import annotations

import logging
import os
from typing import Any

from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin
from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.openapi.spec import Components
from litestar.types import ASGIApp

from app.accounts.controller import AuthController
from app.accounts.deps import AUTH_DEPENDENCIES
from app.accounts.guards import ROLE_DEPENDENCIES
from app.accounts.settings_controller import SettingsController
from app.admin.controller import AdminController
from app.audit.history.admin_actions import AdminActionsController
from app.audit.history.budget import ReadBudget
from app.audit.history.connections import AuditPool
from app.audit.history.controller import AuditController
from app.audit.history.dashboard import DASHBOARD_HANDLERS
from app.audit.history.export import ExportSlots
from app.audit.pipeline.backlog import BacklogProbe
from app.audit.pipeline.metrics import shared_metrics
from app.audit.pipeline.publisher import AuditPublisher
from app.audit.pipeline.writer import AuditWriter
from app.core.cors import CorsMiddleware, CorsPolicy
from app.core.edge import exit_with_parent
from app.core.errors import EXCEPTION_HANDLERS, UnsupportedMediaType
from app.core.gc import freeze_startup_heap
from app.core.logs import AccessLog, formatter_config
from app.core.openapi import RequiredFieldsPlugin, operation_id, security_schemes
from app.core.prometheus import mark_worker_exited
from app.core.redis import create_redis, require_persistence
from app.core.redis_keys import KeySpace
from app.core.request_metrics import request_metrics
from app.core.settings import Settings
from app.credentials.passwords import Hasher
from app.db.config import sqlalchemy_config
from app.events.backlog import outbox_check
from app.events.controller import EventSchemasController
from app.events.relay import AccountEventRelay
from app.health import HealthChecks, HealthController, MetricsController, audit_lag_check, database_check
from app.keys.keyring import KeyRingRefresher, load_keyring
from app.login.controller import LoginController
from app.login.gate import LoginGate
from app.platform.controller import FORM_BODY_PATHS, PLATFORM_HANDLERS, TOKEN_PATH
from app.platform.credentials import FORM_MEDIA_TYPE
from app.platform.scopes import SCOPES
from app.ratelimit.client_ip import ClientResolver
from app.ratelimit.limiter import LoginLimiter
from app.recovery.codes import CodeStore
from app.recovery.controller import RECOVERY_HANDLERS
from app.recovery.sms import sms_sender
from app.recovery.status import sms_check
from app.sessions.controller import SessionsController
from app.sessions.direct import SessionChecks
from app.sessions.header_refresh import HeaderRefresh
from app.sessions.tokens import TokenIssuer
from app.ussd.controller import USSD_HANDLERS
from app.webhooks.deliverer import WebhookDeliverer

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    """415 for a body that is not JSON; an empty body (Flask-era refresh) is fine."""
    if request.method not in BODY_METHODS:
        return
    has_body = request.headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in request.headers
    content_type = request.headers.get("content-type", "")
    if request.url.path in FORM_BODY_PATHS and content_type.lower().startswith(FORM_MEDIA_TYPE):
        return
    if has_body and content_type and "json" not in content_type.lower():
        raise UnsupportedMediaType()


logger = logging.getLogger(__name__)


def cors_policy(settings: Settings) -> CorsPolicy:
    assert settings.cors_allow_origins is not None, "settings are validated before the app is built"
    policy = CorsPolicy.parse(settings.cors_allow_origins)
    if policy.allow_any:
        logger.warning(
            "CORS_ALLOW_ORIGINS=* admits any origin without credentials: the web client in the field "
            "(credentialed calls) cannot work with it; list its origins instead (docs/web-client.md)"
        )
    return policy


def create_app(settings: Settings) -> Litestar:
    db_config = sqlalchemy_config(settings)

    async def start(app: Litestar) -> None:
        engine = db_config.get_engine()
        app.state.keyring = await load_keyring(engine, settings)  # first: a key it cannot use stops start-up
        redis = create_redis(settings)
        if settings.app_env == "production" and settings.redis_persistence_check == "on":
            await require_persistence(redis)
        keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
        metrics = shared_metrics()
        app.state.settings = settings
        app.state.db_config = db_config
        app.state.redis = redis
        app.state.hasher = Hasher(settings)
        app.state.token_issuer = TokenIssuer(settings, app.state.keyring)
        app.state.session_checks = await SessionChecks.open(settings)
        app.state.client_resolver = ClientResolver(
            settings.trusted_proxies, settings.rate_limit_ipv6_prefix, forwarded_headers=settings.forwarded_header
        )
        app.state.limiter = LoginLimiter(redis, settings)
        app.state.audit_publisher = AuditPublisher(redis, keys, engine, metrics, max_backlog=settings.audit_max_backlog)
        app.state.recovery_codes = CodeStore(
            redis, keys, app.state.hasher, settings.recovery_code_minutes * 60, settings.recovery_code_max_tries
        )
        app.state.sms_sender = sms_sender(settings)
        app.state.export_slots = ExportSlots(settings.audit_export_concurrency, settings.audit_exports_per_user)
        app.state.audit_pool = AuditPool(
            engine.url.render_as_string(hide_password=False),
            reads=settings.audit_read_concurrency,
            exports=settings.audit_export_concurrency,
            wait_seconds=settings.audit_read_wait_seconds,
            budget=ReadBudget(settings.audit_read_seconds_per_minute),
        )
        app.state.audit_writer = None
        if settings.audit_writer_enabled:
            app.state.audit_writer = AuditWriter(redis, keys, engine, settings, metrics)
            app.state.audit_writer.start()
        app.state.account_relay = None
        if settings.account_events_relay_enabled:
            app.state.account_relay = AccountEventRelay(redis, engine, keys, settings)
            app.state.account_relay.start()
        app.state.webhooks = None
        if settings.webhooks_enabled:
            # Its own connections and tasks: a slow endpoint never holds what a request needs.
            app.state.webhooks = WebhookDeliverer(engine.url.render_as_string(hide_password=False), settings)
            app.state.webhooks.start()
        # The backlog probe also refreshes the /metrics gauges, with or without a writer in this process.
        backlog = BacklogProbe(redis, keys, metrics, settings.audit_max_backlog)
        app.state.keys_refresher = KeyRingRefresher(app.state.keyring, engine, settings)
        app.state.keys_refresher.start()
        app.state.health_checks = HealthChecks(
            {
                "database": database_check(app.state, settings.health_sign_in_threshold_ms),
                "redis": redis.ping,
                "audit": audit_lag_check(backlog.check, settings.health_audit_lag_seconds),
                "sms": sms_check(redis, app.state.limiter, settings),
                "outbox": outbox_check(engine),
            }
        )
        freeze_startup_heap()

    async def stop(app: Litestar) -> None:
        if "keys_refresher" not in app.state:
            return  # start-up stopped before anything was started
        await app.state.keys_refresher.stop()
        if app.state.audit_writer is not None:
            await app.state.audit_writer.stop()  # drains what it read before the pool closes
        if app.state.account_relay is not None:
            await app.state.account_relay.stop()
        if app.state.webhooks is not None:
            await app.state.webhooks.stop()
        if app.state.sms_sender is not None:
            await app.state.sms_sender.close()
        await app.state.redis.aclose()
        await app.state.session_checks.close()
        await app.state.audit_pool.dispose()
        app.state.hasher.close()
        mark_worker_exited()

    return Litestar(
        route_handlers=[
            HealthController,
            AuthController,
            SessionsController,
            SettingsController,
            LoginController,
            AuditController,
            AdminActionsController,
            AdminController,
            *DASHBOARD_HANDLERS,
            MetricsController,
            *PLATFORM_HANDLERS,
            *USSD_HANDLERS,
            *RECOVERY_HANDLERS,
            EventSchemasController,
        ],
        dependencies={**AUTH_DEPENDENCIES, **ROLE_DEPENDENCIES},  # ROLE_DEPENDENCIES: the audit API's auditor/admin
        plugins=[SQLAlchemyPlugin(config=db_config), RequiredFieldsPlugin()],
        on_startup=[start],
        on_shutdown=[stop],
        before_request=require_json_body,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[request_metrics()],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="Lady's Essence Auth",
            version="1.0.0",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
            operation_id_creator=operation_id,
            components=Components(security_schemes=security_schemes(TOKEN_PATH, SCOPES)),
        ),
        logging_config=LoggingConfig(
            root={"level": settings.log_level, "handlers": ["queue_listener"]},
            formatters={"standard": formatter_config(settings.log_format)},
            log_exceptions="debug",
            disable_stack_trace={401, 403, 404, 405, 409, 413, 415, 429},
        ),
        state=State({"settings": settings, "cors_policy": cors_policy(settings)}),
        debug=False,
    )


def create_asgi_app(settings: Settings) -> ASGIApp:
    """What is served: the app with the login gate in front of routing, and CORS in front of both."""
    return served(create_app(settings))


def served(app: Litestar) -> ASGIApp:
    """CORS outside the gate, so gate refusals and every preflight follow the same policy as the app's answers.

    The header form of refresh is answered in front of routing too (app/sessions/header_refresh.py).
    The access log outside all: it sees every request, the gate's sign-ins too.
    """
    gated = CorsMiddleware(LoginGate(HeaderRefresh(app, litestar=app), litestar=app), app.state.cors_policy)
    return AccessLog(gated) if app.state.settings.access_log else gated


def create_app_from_env() -> ASGIApp:
    """uvicorn factory: settings from the environment (the CLI has resolved the server URLs)."""
    master = os.environ.get("SERVE_MASTER_PID", "")
    if master.isdigit() and int(master) != os.getpid():
        exit_with_parent(int(master))  # a worker of `serve --workers N`: never outlive the master
    settings = Settings.from_env()
    logger.debug("creating app for %s", settings.app_env)
    return create_asgi_app(settings)
