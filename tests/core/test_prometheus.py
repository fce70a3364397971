"""``GET /metrics`` of a real ``serve`` with two workers: one coherent view of the instance.

Before multiprocess mode each scrape reached one worker: counters went backwards (4 -> 2) and
``process_start_time_seconds`` flipped between the workers'. Here requests are spread over both
workers (concurrent connections), the instance is scraped many times and parsed with
prometheus-client's own text parser, and a worker is killed in the middle.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from app.core.settings import PROJECT_ROOT, Settings
from tests.servers import api_server

pytestmark = pytest.mark.slow

CUTOVER = PROJECT_ROOT / "docs" / "cutover.md"
PROBE = "/.well-known/jwks.json"  # a route only this test calls: its count is exactly what was sent
PROBE_SERIES = ("ladys_essence_auth_requests_total", {"method": "GET", "path": PROBE, "status_code": "200"})


@pytest.fixture(scope="module")
def instance(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    settings = msgspec.structs.replace(base_settings, redis_key_prefix=f"le-test:{uuid.uuid4().hex[:12]}:")
    metrics_dir = tmp_path_factory.mktemp("metrics")
    # A previous run's file: serve empties the directory, or its counts would be added to this run's.
    (metrics_dir / "counter_1.db").write_bytes(b"not a metrics file")
    tmp = tmp_path_factory.mktemp("serve")
    with api_server(settings, tmp, workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as base:
        yield base, metrics_dir


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape on a new connection, by (name, labels); checks the exposition on the way."""
    answer = httpx.get(f"{base}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text[:300]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(answer.text):
        assert not (family.type == "gauge" and family.name.endswith("_created")), family.name
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"{key} twice in one scrape"
            samples[key] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, labels: dict[str, str]) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def is_cumulative(name: str) -> bool:
    return name.endswith(("_total", "_count", "_sum", "_bucket"))


def drive(base: str, count: int) -> None:
    """``count`` probe requests and a few of other kinds, eight at a time on new connections."""

    def one(n: int) -> None:
        assert httpx.get(f"{base}{PROBE}", timeout=10).status_code == 200
        if n % 5 == 0:
            httpx.post(f"{base}/api/auth/login", json={"phone_number": "0788000000", "password": "x" * 12}, timeout=10)
            httpx.get(f"{base}/api/auth/profile", timeout=10)  # 401

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def worker_files(metrics_dir: Path) -> dict[int, Path]:
    return {int(m.group(1)): p for p in metrics_dir.iterdir() if (m := re.fullmatch(r"counter_(\d+)\.db", p.name))}


def probe_count_in(path: Path) -> float:
    """What one worker's own file holds of the probe counter (prometheus-client merges files this way)."""
    for family in MultiProcessCollector.merge([str(path)], accumulate=True):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            if sample.name == PROBE_SERIES[0] and sample.labels == PROBE_SERIES[1]:
                return float(sample.value)
    return 0.0


def documented_metric_names() -> set[str]:
    section = CUTOVER.read_text().split("## What to watch", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(ladys_essence_auth_\w+)", section))


def exposed_names(base: str) -> set[str]:
    """Names as a query writes them: a counter with ``_total``, a histogram or gauge by its family name."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in text_string_to_metric_families(text)
        if family.name.startswith("ladys_essence_auth_")
    }


def test_every_scrape_sees_the_whole_instance_and_no_counter_goes_back(instance: tuple[str, Path]) -> None:
    base, metrics_dir = instance
    sent, victim = 0, 0
    previous: dict[Any, float] = {}
    start_times: set[float] = set()
    for round_ in range(20):
        if round_ == 10:
            # A worker dies without a word (OOM killer): uvicorn starts another; what it counted stays.
            victim = max(worker_files(metrics_dir).items(), key=lambda item: probe_count_in(item[1]))[0]
            os.kill(victim, signal.SIGKILL)
        drive(base, 10)
        sent += 10
        for _ in range(2):
            samples = scrape(base)
            for key, number in samples.items():
                if is_cumulative(key[0]) and key in previous:
                    assert number >= previous[key], f"{key} went back from {previous[key]} to {number}"
            gone = {key for key in set(previous) - set(samples) if is_cumulative(key[0])}
            assert not gone, f"counted series disappeared: {gone}"  # a dead worker's live gauges may go
            previous = samples
            starts = [number for (name, _), number in samples.items() if name == "process_start_time_seconds"]
            assert len(starts) == 1, starts
            start_times.update(starts)
            assert value(samples, *PROBE_SERIES) <= sent

    # The killed worker's replacement counts once it serves: under load its start can take longer than
    # the rounds above, so send until a third worker's file appears (uvicorn restarts it; bounded).
    deadline = time.monotonic() + 60
    while len(worker_files(metrics_dir)) < 3:
        assert time.monotonic() < deadline, f"no worker replaced {victim}: {worker_files(metrics_dir)}"
        drive(base, 10)
        sent += 10

    assert len(start_times) == 1, "the instance's start time changed between scrapes"
    assert abs(start_times.pop() - time.time()) < 600
    # Counted after each answer was sent: the last few land a moment after the client saw them.
    deadline = time.monotonic() + 10
    while value(scrape(base), *PROBE_SERIES) != sent:
        assert time.monotonic() < deadline, (value(scrape(base), *PROBE_SERIES), sent)
        time.sleep(0.1)

    served_by = {pid: probe_count_in(path) for pid, path in worker_files(metrics_dir).items()}
    assert sum(served_by.values()) == sent
    # Both workers answered probes, and a third one replaced the killed worker, whose counts stayed.
    assert len(served_by) >= 3 and len([pid for pid, count in served_by.items() if count]) >= 2, served_by
    assert served_by[victim] > 0, served_by
    assert not (metrics_dir / "counter_1.db").exists()

    samples = scrape(base)
    in_progress = {labels: n for (name, labels), n in samples.items() if name.endswith("_requests_in_progress")}
    # Only this scrape is in progress; the killed worker's requests are not stuck in the gauge.
    assert {dict(labels)["path"]: n for labels, n in in_progress.items() if n} == {"/metrics": 1.0}
    assert all({key for key, _ in labels} == {"method", "path"} for labels in in_progress)
    assert value(samples, "ladys_essence_auth_account_events_unpublished", {}) >= 0
    assert not [key for key in samples if "app_name" in dict(key[1])]


def test_the_cut_over_guide_names_the_metrics_as_they_are(instance: tuple[str, Path]) -> None:
    base, _ = instance
    httpx.post(f"{base}/api/auth/refresh", timeout=10)  # a 401 of the API's own
    documented, exposed = documented_metric_names(), exposed_names(base)
    assert exposed <= documented, f"exposed but not in docs/cutover.md: {sorted(exposed - documented)}"
    # Series with labels appear once something is counted (a 5xx, a refusal); these are there from the start.
    always = {
        "ladys_essence_auth_requests_total",
        "ladys_essence_auth_request_duration_seconds",
        "ladys_essence_auth_requests_in_progress",
        "ladys_essence_auth_account_events_unpublished",
        "ladys_essence_auth_account_events_oldest_unpublished_seconds",
        "ladys_essence_auth_signing_keys_refresh_failures_total",
    }
    assert always <= exposed and always <= documented
