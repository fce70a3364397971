"""SQLAlchemy and Alembic configuration, built from settings (never at import time)."""

from __future__ import annotations

from advanced_alchemy.extensions.litestar import (
    AlembicAsyncConfig,
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
)

from app.core.settings import PROJECT_ROOT, Settings, asyncpg_url

MIGRATIONS_DIR = PROJECT_ROOT / "db" / "migrations"


def sqlalchemy_config(settings: Settings, *, pool: bool = True) -> SQLAlchemyAsyncConfig:
    if not settings.database_url:
        raise ValueError("database_url is resolved before the app is built")
    engine = EngineConfig(
        # Twice DATABASE_POOL_SIZE, all kept: overflow connections are closed as they come back, so
        # every burst past the pool opened and closed connections (a Postgres backend started each
        # time), and a flood of signed-in requests cost sign-in its CPU (docs/benchmarks.md, audit flood).
        pool_size=2 * settings.database_pool_size,
        max_overflow=0,
        # No ping per checkout (three round trips on asyncpg: BEGIN, a query, ROLLBACK). A connection
        # that died with its server fails the one statement that meets it (503 database_unavailable,
        # app/core/errors.py), and SQLAlchemy then drops every pooled connection older than that
        # failure: the next checkouts connect anew (tests/faults/test_database_outage.py).
        pool_recycle=1800,
    )
    if not pool:
        from sqlalchemy.pool import NullPool

        engine = EngineConfig(poolclass=NullPool)
    return SQLAlchemyAsyncConfig(
        connection_string=asyncpg_url(settings.database_url),
        engine_config=engine,
        session_config=AsyncSessionConfig(expire_on_commit=False),
        before_send_handler="autocommit",
        create_all=False,
        alembic_config=AlembicAsyncConfig(
            script_location=str(MIGRATIONS_DIR),
            version_table_name="alembic_version",
        ),
    )
