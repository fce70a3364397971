"""Garbage-collector tuning for long-running processes (API workers, the audit worker).

Everything imported and built at start-up (Litestar, SQLAlchemy, the routes, caches) lives as long
as the process; the cyclic collector would walk it again on every full collection. The audit
writer allocates tens of thousands of short-lived objects per second (replies, events, records),
which triggers collections often: with the start-up heap in the walk they took ~15 % of the
writer's CPU (py-spy, bench/bench_audit_ingest.py). ``gc.freeze()`` moves the start-up heap to the
permanent generation, the practice the ``gc`` documentation describes for long-lived processes.

The youngest generation is also collected after 20,000 net allocations instead of 700: a catch-up
read holds tens of thousands of reply lists at once, and at 700 the collector ran ~700 times per
200,000 events, ~8% of the writer's CPU; at 20,000 it runs a few times (~3%). Only garbage in
reference cycles waits longer (everything else is freed at once by reference counting), so the cost
is at most a few MB held a little longer; API processes get the same setting, writer or not
(fewer collections on the request path too; `bench/bench_memory_attack.py` watches their RSS).
Nothing is disabled.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000
_frozen = False


def freeze_startup_heap() -> None:
    """After start-up: collect what start-up left behind, freeze the rest, collect the young less
    often. Once per process (a test session builds many apps; their objects must stay collectable)."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])
