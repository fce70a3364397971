"""``ladys-essence serve``: the API under uvicorn, with embedded servers when no URLs are set."""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType

import click

from app.core.cli import load_settings


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@click.command(help="Serve the API (embedded Postgres and Redis when DATABASE_URL / REDIS_URL are unset).")
@click.option("--host", default=None, help="Address to bind (HOST, default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (PORT, default 8000).")
@click.option("--workers", type=int, default=None, help="uvicorn worker processes (WORKERS, default 1).")
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    import uvicorn

    from app.core.edge import protocol_path
    from app.core.embedded import servers_for
    from app.core.logs import logging_config
    from app.core.prometheus import instance_metrics_dir
    from app.db import migrations

    settings = load_settings()
    host = host or settings.host
    port = port or settings.port
    workers = workers or settings.workers
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the default action,
    # which would end the process before the embedded servers below are stopped. As an exception
    # it unwinds through ``servers_for`` instead (exit status 143; with --workers > 1 uvicorn's
    # supervisor handles the signal itself and returns normally).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    # One metrics directory for the instance, before any worker imports prometheus_client: /metrics
    # then merges every worker's counters, whichever worker answers the scrape.
    with instance_metrics_dir(workers), servers_for(settings) as resolved:
        migrations.upgrade(resolved)
        # Workers are separate processes: hand them the resolved URLs and development secrets.
        os.environ.update(
            DATABASE_URL=resolved.database_url or "",
            REDIS_URL=resolved.redis_url or "",
            JWT_SECRET=resolved.jwt_secret or "",
            PIN_PEPPER=resolved.pin_pepper or "",
            SIGNING_KEYS_SECRET=resolved.signing_keys_secret or "",
            WORKERS=str(workers),
            SERVE_MASTER_PID=str(os.getpid()),  # workers end themselves when this process dies
            # The issuer and discovery URLs: where this runs, unless PUBLIC_URL says (production must).
            PUBLIC_URL=os.environ.get("PUBLIC_URL") or f"http://{shown}:{port}",
        )
        banner = f"Lady's Essence Auth on http://{shown}:{port}  (API docs: http://{shown}:{port}/schema)"
        if settings.log_format == "json":
            logging.getLogger("app.serve").info(banner)  # every line of the output is JSON
        else:
            click.echo(banner)  # for the person at the terminal, whatever LOG_LEVEL says
        uvicorn.run(
            "app.asgi:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level.lower(),
            log_config=logging_config(settings.log_level, settings.log_format),
            access_log=False,  # app.core.logs.AccessLog logs each request, in the one format
            proxy_headers=False,
            server_header=False,
            # The edge (app/core/edge.py): whole-request read deadline and connection caps.
            http=protocol_path(),
            limit_concurrency=settings.max_connections,
            timeout_keep_alive=settings.keep_alive_seconds,
        )
