"""One Prometheus view per instance, whatever ``WORKERS`` is: prometheus-client's multiprocess mode.

``serve`` gives the instance a directory (:func:`instance_metrics_dir`, ``PROMETHEUS_MULTIPROC_DIR``)
before any worker starts; every worker's metrics are memory-mapped files in it, and ``GET /metrics``
merges them all (:func:`scrape_registry`), whichever worker answers. A counter of a worker that
exited stays in its file, so sums never go backwards; live gauges of a dead worker (requests in
progress) are dropped (:func:`forget_dead_workers`, and :func:`mark_worker_exited` at shutdown).
Without that directory (the app built in-process, as most tests do) the default registry is served.

Every metric of the service is named ``ladys_essence_auth_*`` (:data:`NAMESPACE`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

NAMESPACE = "ladys_essence_auth"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# When ``serve`` started the instance: its ``process_start_time_seconds`` whichever worker answers.
STARTED_AT_ENV = "METRICS_INSTANCE_STARTED_AT"
_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


@contextlib.contextmanager
def instance_metrics_dir(workers: int) -> Iterator[Path]:
    """The instance's metrics directory, emptied now; set in the environment the workers inherit.

    ``PROMETHEUS_MULTIPROC_DIR`` if the deployment names one (one directory per instance: two
    instances sharing one would add up each other's counters), else a temporary directory removed
    when the instance stops. prometheus_client picks its storage when it is imported: worker processes
    import it afresh, but one worker runs in this process, which must not have imported it yet.
    """
    if workers == 1 and "prometheus_client" in sys.modules:
        raise RuntimeError(
            "prometheus_client was imported before serve set PROMETHEUS_MULTIPROC_DIR: the CLI must import "
            "modules that define metrics lazily, or /metrics misses this process's"
        )
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # the previous run's: counters start again with the instance
            stale.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="ladys-essence-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    os.environ[STARTED_AT_ENV] = repr(time.time())
    try:
        yield path
    finally:
        if not configured:
            shutil.rmtree(path, ignore_errors=True)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_workers(path: str) -> None:
    """Drop the live gauges of workers that are gone (a crash skips :func:`mark_worker_exited`)."""
    from prometheus_client import multiprocess

    dead = {int(match.group(1)) for file in Path(path).iterdir() if (match := _LIVE_FILE.fullmatch(file.name))}
    for pid in dead:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def mark_worker_exited() -> None:
    """At a worker's shutdown: its requests in progress are no longer in progress."""
    if path := multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


class _InstanceStart:
    """``process_start_time_seconds`` of the instance (the ``serve`` process), one value for every worker."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of this instance (the serve process) since the epoch, in seconds.",
            value=self.started_at,
        )


def scrape_registry(*collectors: Any) -> Any:
    """What ``GET /metrics`` serves: every worker's metrics merged (or this process's), plus ``collectors``."""
    from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics, multiprocess

    disable_created_metrics()  # type: ignore[no-untyped-call]  # ``*_created`` would be exposed as gauges of their own
    path = multiprocess_dir()
    if path is None:
        if not collectors:
            return REGISTRY
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Union(REGISTRY))
    else:
        forget_dead_workers(path)
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
        registry.register(_InstanceStart(float(os.environ.get(STARTED_AT_ENV) or time.time())))
    for collector in collectors:
        registry.register(collector)
    return registry


class _Union:
    """The default registry as one collector of another registry."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Any]:
        return self.registry.collect()  # type: ignore[no-any-return]
