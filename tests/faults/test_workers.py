"""`serve --workers 2` whose master is killed: its workers go with it, and a new serve binds the port."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from app.core.embedded import free_port, stop_process
from tests.faults.support import serve_env, start_serve, wait_healthy, wait_until

pytestmark = pytest.mark.slow


def test_workers_exit_when_their_master_is_killed_and_the_port_is_free_again(settings, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = serve_env(settings, tmp_path)
    log = tmp_path / "serve.log"
    master = start_serve(env, port, log, workers=2)
    again = None
    workers: list[psutil.Process] = []
    try:
        wait_healthy(base, master, log)
        children = psutil.Process(master.pid).children(recursive=True)
        workers = [child for child in children if "spawn_main" in " ".join(child.cmdline())]
        assert len(workers) >= 2, [child.cmdline() for child in workers]

        os.kill(master.pid, signal.SIGKILL)
        master.wait()
        assert wait_until(
            lambda: not any(worker.is_running() and worker.status() != "zombie" for worker in workers), 20
        )

        again = start_serve(env, port, log)
        wait_healthy(base, again, log)  # it bound the port: no orphan holds it
    finally:
        for worker in workers:  # should the test fail: no orphan left behind
            if worker.is_running():
                worker.kill()
        if master.poll() is None:
            master.kill()
        if again is not None:
            stop_process(again, 20)
