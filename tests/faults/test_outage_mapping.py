"""Which errors are a database outage (503) and which stay a bug (500), against a real refused connection."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.embedded import free_port
from app.core.errors import OutageLog, is_database_unavailable
from app.core.settings import asyncpg_url

pytestmark = pytest.mark.slow


async def test_a_refused_connection_is_an_outage_whatever_wraps_it():
    port = free_port()  # nothing listens there
    with pytest.raises(OSError) as direct:
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    assert is_database_unavailable(direct.value)
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres")
    try:
        with pytest.raises(Exception) as wrapped:
            async with engine.connect():
                pass
        assert is_database_unavailable(wrapped.value)
    finally:
        await engine.dispose()


async def test_a_pool_with_no_connection_free_is_an_outage(settings):
    """A request that waited out the sign-in pool's timeout (every connection held, no overflow) is a
    503 ``database_unavailable`` with Retry-After, not a 500 (the attacker's pass saw it at 30 s)."""
    assert settings.database_url
    engine = create_async_engine(asyncpg_url(settings.database_url), pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with engine.connect():
            with pytest.raises(Exception) as waited:
                async with engine.connect():
                    pass
        assert isinstance(waited.value, sqlalchemy.exc.TimeoutError)
        assert is_database_unavailable(waited.value)
    finally:
        await engine.dispose()


def test_a_bug_is_not_an_outage():
    with pytest.raises(FileNotFoundError) as missing:  # a FileNotFoundError of our own code
        Path("/nonexistent/file").read_text()
    assert not is_database_unavailable(missing.value)
    assert not is_database_unavailable(ValueError("bad"))
    assert not is_database_unavailable(asyncpg.UniqueViolationError("duplicate"))


def test_an_outage_is_logged_once(caplog):
    log = OutageLog("database", quiet_seconds=60)
    with caplog.at_level("WARNING", logger="app.core.errors"):
        for _ in range(100):
            log.failed(ConnectionRefusedError("refused"))
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1


def test_an_outage_wrapped_by_advanced_alchemy_is_logged_by_its_cause(caplog):
    """advanced-alchemy's errors join their arguments into text, and a ``None`` among them made the
    outage's one log line a logging error (seen when Postgres refused connections: "too many clients")."""
    from advanced_alchemy.exceptions import IntegrityError

    try:
        try:
            raise asyncpg.TooManyConnectionsError("sorry, too many clients already")
        except asyncpg.TooManyConnectionsError as cause:
            raise IntegrityError(detail=None) from cause  # type: ignore[arg-type]
    except IntegrityError as wrapped:
        with pytest.raises(TypeError):
            str(wrapped)  # what broke the log line
        log = OutageLog("database", quiet_seconds=60)
        with caplog.at_level("ERROR", logger="app.core.errors"):
            log.failed(wrapped)
    (line,) = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert "TooManyConnectionsError: sorry, too many clients already" in line
