"""What a run looked like from the generator: the live line, the summary table, the PNG plot."""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Answer:
    label: str  # "login attack", "ussd legit", ...
    status: int  # 0: no answer (refused, reset, timed out)
    at: float  # seconds since the load started, when the answer came
    latency: float  # seconds
    error: str = ""  # why there was no answer


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def live_line(answers: list[Answer], started: float) -> str:
    statuses = Counter(answer.status for answer in answers)
    shown = " ".join(f"{status}:{count}" for status, count in sorted(statuses.items()))
    p99 = percentile([answer.latency * 1000 for answer in answers[-2000:]], 0.99)
    return f"{time.perf_counter() - started:5.1f}s  answers {len(answers)}  {shown or '-'}  p99 {p99:.0f} ms"


def summary_table(answers: list[Answer]) -> str:
    """One row per kind of request: how many, answered how, how fast."""
    statuses = sorted({answer.status for answer in answers})
    by_label: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        by_label[answer.label].append(answer)
    header = ["request", "count", *(str(status) if status else "no answer" for status in statuses), "p50 ms", "p99 ms"]
    rows = [header]
    for label in sorted(by_label):
        group = by_label[label]
        counts = Counter(answer.status for answer in group)
        latencies = [answer.latency * 1000 for answer in group if answer.status]
        rows.append(
            [
                label,
                str(len(group)),
                *(str(counts.get(status, 0)) for status in statuses),
                f"{percentile(latencies, 0.5):.1f}",
                f"{percentile(latencies, 0.99):.1f}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    errors = Counter(answer.error for answer in answers if answer.error)
    if errors:
        lines.append("no answer: " + ", ".join(f"{why} {count}" for why, count in errors.most_common()))
    return "\n".join(lines) + "\n"


def plot(answers: list[Answer], path: Path, title: str) -> Path:
    """Answers per second by status, and p50/p99 latency per second, over the run (PNG)."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font cache is news to nobody
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = int(max((answer.at for answer in answers), default=0)) + 1
    statuses = sorted({answer.status for answer in answers})
    per_second = {status: [0] * seconds for status in statuses}
    latencies: list[list[float]] = [[] for _ in range(seconds)]
    for answer in answers:
        second = int(answer.at)
        per_second[answer.status][second] += 1
        if answer.status:
            latencies[second].append(answer.latency * 1000)
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6))
    for status in statuses:
        top.plot(range(seconds), per_second[status], label=str(status) if status else "no answer")
    top.set_ylabel("answers / s")
    top.legend(loc="upper right")
    top.set_title(title)
    for fraction, name in ((0.5, "p50"), (0.99, "p99")):
        bottom.plot(range(seconds), [percentile(values, fraction) for values in latencies], label=name)
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds into the run")
    bottom.legend(loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
