"""Garbage-collector tuning for long-running processes (API workers, the audit worker).

Everything imported and built at start-up (Litestar, SQLAlchemy, the routes, caches) lives as long
as the process; the cyclic collector would walk it again on every full collection. The audit
writer allocates tens of thousands of short-lived objects per second (replies, events, records),
which triggers collections often: with the start-up heap in the walk they took ~15 % of the
writer's CPU (py-spy, bench/bench_audit_ingest.py). ``gc.freeze()`` moves the start-up heap to the
permanent generation, the practice the ``gc`` documentation describes for long-lived processes.
Nothing is disabled: new objects are collected as before.
"""

from __future__ import annotations

import gc

_frozen = False


def freeze_startup_heap() -> None:
    """After start-up: collect what start-up left behind, then freeze the rest. Once per process
    (a test session builds many apps; their objects must stay collectable)."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()
