"""Real server processes for the fault tests: `ladys-essence serve` on a port the test chooses."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers import serve_env as serve_env  # the fault tests start `serve` with the same environment


def start_serve(env: dict[str, str], port: int, log_path: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    with log_path.open("a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_healthy(base: str, process: subprocess.Popen[bytes], log_path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(log_path.read_text())
        time.sleep(0.2)


def wait_until(condition, seconds: float, step: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``condition`` until it holds (True) or ``seconds`` pass (False)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())
