"""The refused (429) login path on a 3-master Redis Cluster vs one Redis, and script calls/s per master.

One run, two stores started by the benchmark on loopback ports from the same ``redis-server``
binary with the same options (no persistence): one Redis, and a Redis Cluster of 3 masters with
the slots split evenly (``tests/cluster.py``). Then:

(a) the 429 path: two uvicorn servers (one worker each) on the same Postgres, one on the single
    Redis, one with ``REDIS_CLUSTER=true`` on the cluster, both trusting the loopback proxy. Clients
    (``X-Forwarded-For``, two per shard, so every master holds some) spend their budgets first; then
    wrk sends them refused logins round robin, the servers taking turns, rounds interleaved. Each
    round also gives the worker's CPU and every redis-server's (``INFO cpu``) over its seconds;
    the run checks that every request was refused and no refusal was a 503.
(b) script calls/s: the limiter's reserve + settle calls (``LoginLimiter`` in this process, the
    app's coalescer and transport: one pipeline, or one per master) for fresh clients, a few
    batches in flight, for ``--seconds`` at each store in turn; each master's share from its
    ``INFO commandstats`` ``cmdstat_evalsha`` calls before and after, with its CPU. One Python
    client drives them, so calls/s is a floor set by the client; calls per CPU-second of each
    redis-server is what that master could serve at one full core.

    python -m bench.bench_cluster [--rounds 5] [--seconds 5] [--database-url ...] [--redis-url ...]

``--redis-url`` replaces the single Redis the benchmark starts (keys under a run prefix); compare
with care: the cluster's nodes run without persistence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import psutil
import redis
from redis.cluster import RedisCluster as SyncRedisCluster

from app.core.embedded import free_port, stop_process
from app.core.redis import create_redis
from app.core.redis_keys import KeySpace
from app.core.settings import Settings
from app.ratelimit.limiter import LoginLimiter
from bench.common import api_process, bench_parser, median, servers, wrk
from tests.cluster import LocalCluster, local_cluster, redis_server_binary

TARGET = 0.8
CLIENTS_PER_SHARD = 2
BATCH, IN_FLIGHT = 500, 4  # (b): calls per limiter.execute, and how many of them at once
WRONG = json.dumps({"phone_number": "0788123456", "password": "Wrong-Password-77"})
TRUSTED = {"TRUSTED_PROXIES": "127.0.0.1/32"}


# ---- the stores ---------------------------------------------------------------------------------------


@dataclass
class Node:
    """One redis-server: its counters, read over its own connection."""

    name: str
    port: int
    host: str = "127.0.0.1"
    db: int = 0
    _client: redis.Redis | None = field(default=None, repr=False)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis(host=self.host, port=self.port, db=self.db, socket_timeout=5)
        return self._client

    def evalsha_calls(self) -> int:
        stats = self.client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    def cpu_seconds(self) -> float:
        cpu = self.client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    def memory(self) -> tuple[int, int]:
        """(used_memory, used_memory_rss) in bytes."""
        info = self.client.info("memory")
        return int(info["used_memory"]), int(info["used_memory_rss"])

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@dataclass
class Counters:
    """A snapshot of every node of a store, and of the API worker when there is one."""

    wall: float
    evalsha: list[int]
    cpu: list[float]
    worker_cpu: float

    @classmethod
    def take(cls, nodes: list[Node], worker: psutil.Process | None = None) -> Counters:
        times = worker.cpu_times() if worker is not None else None
        return cls(
            time.perf_counter(),
            [node.evalsha_calls() for node in nodes],
            [node.cpu_seconds() for node in nodes],
            times.user + times.system if times is not None else 0.0,
        )

    def since(self, before: Counters) -> Delta:
        seconds = self.wall - before.wall
        return Delta(
            seconds,
            [(a - b) / seconds for a, b in zip(self.evalsha, before.evalsha, strict=True)],
            [(a - b) / seconds for a, b in zip(self.cpu, before.cpu, strict=True)],
            (self.worker_cpu - before.worker_cpu) / seconds,
        )


@dataclass
class Delta:
    seconds: float
    evalsha_per_s: list[float]  # per node
    cpu_share: list[float]  # per node, of one core
    worker_cpu_share: float


@contextlib.contextmanager
def single_redis(data_dir: Path) -> Iterator[str]:
    """One redis-server: the cluster nodes' binary and options, without cluster mode."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # fmt: off
    command = [
        redis_server_binary(),
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--appendonly", "no", "--save", "", "--daemonize", "no", "--logfile", str(data_dir / "redis.log"),
    ]
    # fmt: on
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        with redis.Redis(port=port, socket_timeout=1) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"redis-server exited; see {data_dir / 'redis.log'}")
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer in time")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(process, 5)


def node_of_url(url: str, name: str) -> Node:
    kwargs = redis.connection.parse_url(url)
    return Node(name, int(kwargs.get("port", 6379)), kwargs.get("host", "127.0.0.1"), int(kwargs.get("db", 0)))


def shards_per_master(cluster: LocalCluster, keys: KeySpace) -> list[list[int]]:
    owners = [cluster.master_of_key(keys.audit_stream(shard)).port for shard in range(keys.shards)]
    return [[shard for shard, port in enumerate(owners) if port == master.port] for master in cluster.masters]


def spread_clients(keys: KeySpace, per_shard: int) -> list[str]:
    """Addresses from the benchmarking range 198.18.0.0/15, ``per_shard`` in every shard."""
    chosen: dict[int, list[str]] = {shard: [] for shard in range(keys.shards)}
    for index in range(1, 65536):
        address = f"198.18.{index >> 8}.{index & 255}"
        shard = keys.shard_of(address)
        if len(chosen[shard]) < per_shard:
            chosen[shard].append(address)
        if all(len(found) == per_shard for found in chosen.values()):
            break
    # Interleave the shards, so that consecutive requests go to different masters.
    return [chosen[shard][i] for i in range(per_shard) for shard in range(keys.shards)]


# ---- (a) the 429 path ---------------------------------------------------------------------------------


def worker_of(base: str) -> psutil.Process | None:
    """The process listening on ``base``'s port (``serve --workers 1`` serves in its own process)."""
    port = int(base.rsplit(":", 1)[1])
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


async def spend_budgets(base: str, clients: list[str], failures: int) -> list[int]:
    """``failures`` wrong passwords from each client (its own number each), then one more: the statuses of that one."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        gate = asyncio.Semaphore(8)

        async def spend(index: int, address: str) -> int:
            body = {"phone_number": f"0788{700000 + index}", "password": "Wrong-Password-77"}
            headers = {"x-forwarded-for": address}
            async with gate:
                for _ in range(failures):
                    await http.post("/api/auth/login", json=body, headers=headers)
                response = await http.post("/api/auth/login", json=body, headers=headers)
            return response.status_code

        return list(await asyncio.gather(*(spend(i, address) for i, address in enumerate(clients))))


def refused_counts(base: str) -> dict[str, float]:
    """The gate's refusals by reason, from the worker's /metrics (open outside production)."""
    counts: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("ladys_essence_auth_login_refused_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
    return counts


def stream_backlog(client: redis.Redis | SyncRedisCluster, keys: KeySpace) -> int:
    return sum(int(client.xlen(stream)) for stream in keys.audit_streams())


def wait_drained(client: redis.Redis | SyncRedisCluster, keys: KeySpace, timeout: float = 20) -> None:
    """Until the server's audit writer has emptied the streams: a round must not pay for the last one's."""
    deadline = time.monotonic() + timeout
    while stream_backlog(client, keys) and time.monotonic() < deadline:
        time.sleep(0.1)


@dataclass
class Store:
    name: str
    nodes: list[Node]
    streams: redis.Redis | SyncRedisCluster
    base: str = ""
    worker: psutil.Process | None = None
    rps: list[float] = field(default_factory=list)
    deltas: list[Delta] = field(default_factory=list)
    backlogs: list[int] = field(default_factory=list)  # audit entries left in the streams after each round
    requests: int = 0  # answers wrk read over all rounds
    refused_before: float = 0.0  # the gate's refusals before the rounds


def refusal_round(store: Store, stores: list[Store], keys: KeySpace, clients: list[str], seconds: float) -> str:
    for each in stores:  # the other server's writer too: it would still be draining its last round
        wait_drained(each.streams, keys)
    before = Counters.take(store.nodes, store.worker)
    result = wrk(f"{store.base}/api/auth/login", seconds=seconds, body=WRONG, clients=clients)
    delta = Counters.take(store.nodes, store.worker).since(before)
    store.backlogs.append(stream_backlog(store.streams, keys))  # refusals its writer had not yet written
    assert result.non_2xx == result.requests, f"{store.name}: every request must be refused"
    store.rps.append(result.requests_per_second)
    store.deltas.append(delta)
    store.requests += result.requests
    redis_cpu = " ".join(f"{share:4.0%}" for share in delta.cpu_share)
    return (
        f"{store.name} {result.requests_per_second:6.0f} req/s "
        f"(p99 {result.latency_p99_ms:5.1f} ms, worker {delta.worker_cpu_share:4.0%}, redis {redis_cpu})"
    )


def refusals(
    stores: list[Store], keys: KeySpace, clients: list[str], failures: int, rounds: int, seconds: float
) -> None:
    for store in stores:
        statuses = asyncio.run(spend_budgets(store.base, clients, failures))
        assert set(statuses) == {429}, f"{store.name}: budgets not spent: {sorted(set(statuses))}"
        store.refused_before = refused_counts(store.base).get("rate_limited", 0)
    for round_number in range(rounds):
        order = stores if round_number % 2 == 0 else stores[::-1]  # neither always goes first
        lines = {store.name: refusal_round(store, stores, keys, clients, seconds) for store in order}
        print(f"  round {round_number + 1}: " + "   ".join(lines[store.name] for store in stores), flush=True)
    for store in stores:
        counts = refused_counts(store.base)
        assert not counts.get("limiter_unavailable"), f"{store.name}: {counts} (503s: the limiter failed)"
        # wrk counts the answers it read; the gate may have refused a few more in flight at the end.
        refused = counts.get("rate_limited", 0) - store.refused_before
        assert refused >= store.requests, f"{store.name}: {refused} refused, wrk read {store.requests}"


# ---- (b) script calls/s -------------------------------------------------------------------------------


async def reserve_and_settle(limiter: LoginLimiter, identities: list[str]) -> int:
    replies = await limiter.execute([limiter.reserve_call("login", identity) for identity in identities])
    settles = []
    for identity, reply in zip(identities, replies, strict=True):
        decision = limiter.decision("login", identity, reply)
        assert decision.allowed and decision.reservation, decision
        settles.append(limiter.settle_call(decision.reservation, "failure"))
    await limiter.execute(settles)
    return 2 * len(identities)


async def drive(limiter: LoginLimiter, seconds: float, tag: str) -> int:
    """Reserve + settle for fresh clients, ``IN_FLIGHT`` batches at a time, for ``seconds``: the calls made."""
    calls, serial = 0, 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        groups = []
        for _ in range(IN_FLIGHT):
            groups.append([f"{tag}:{serial + i}" for i in range(BATCH)])
            serial += BATCH
        calls += sum(await asyncio.gather(*(reserve_and_settle(limiter, group) for group in groups)))
    return calls


async def script_calls(
    settings: Settings, seed_url: str, stores: list[Store], rounds: int, seconds: float
) -> dict[str, list[tuple[float, Delta]]]:
    configs = {
        stores[0].name: settings,
        stores[1].name: msgspec.structs.replace(settings, redis_url=seed_url, redis_cluster=True),
    }
    clients = {name: create_redis(config) for name, config in configs.items()}
    limiters = {name: LoginLimiter(clients[name], configs[name]) for name in configs}
    results: dict[str, list[tuple[float, Delta]]] = {name: [] for name in configs}
    this_process = psutil.Process()  # the client: when the machine starves it, calls/s drop with its CPU
    try:
        for name, limiter in limiters.items():
            await drive(limiter, 0.5, f"warm-{name}")  # scripts loaded, connections open
        for round_number in range(rounds):
            order = stores if round_number % 2 == 0 else stores[::-1]
            for store in order:
                before = Counters.take(store.nodes, this_process)
                calls = await drive(limiters[store.name], seconds, f"r{round_number}-{store.name}")
                delta = Counters.take(store.nodes, this_process).since(before)
                results[store.name].append((calls / delta.seconds, delta))
            print(
                f"  round {round_number + 1}: "
                + "   ".join(
                    f"{store.name} {results[store.name][-1][0]:6.0f} calls/s ("
                    + " ".join(f"{rate:5.0f}" for rate in results[store.name][-1][1].evalsha_per_s)
                    + f", client {results[store.name][-1][1].worker_cpu_share:4.0%})"
                    for store in stores
                ),
                flush=True,
            )
    finally:
        for client in clients.values():
            await client.aclose()
    return results


# ---- the run ------------------------------------------------------------------------------------------


def run(rounds: int, seconds: float, database_url: str | None, redis_url: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="le-bench-cluster-") as tmp, contextlib.ExitStack() as stack:
        single_url = redis_url or stack.enter_context(single_redis(Path(tmp) / "single"))
        cluster = stack.enter_context(local_cluster(Path(tmp) / "cluster", masters=3))
        settings = stack.enter_context(servers(database_url, single_url))
        keys = KeySpace(settings.redis_key_prefix, settings.redis_shards)
        single_node = node_of_url(single_url, "single")
        masters = [Node(f"m{i + 1}", master.port) for i, master in enumerate(cluster.masters)]
        stack.callback(lambda: [node.close() for node in [single_node, *masters]])
        single_streams = redis.Redis.from_url(single_url)
        cluster_streams = SyncRedisCluster.from_url(cluster.seed_url)
        stack.callback(single_streams.close)
        stack.callback(cluster_streams.close)
        stores = [Store("single", [single_node], single_streams), Store("cluster", masters, cluster_streams)]

        version = single_node.client.info("server")["redis_version"]
        print(f"redis-server {version} ({redis_server_binary()}), no persistence, all on this machine")
        owned = shards_per_master(cluster, keys)
        print(
            f"cluster: 3 masters, no replicas; the {keys.shards} shards per master: "
            + ", ".join(f"{node.name} (:{node.port}) {len(s)}" for node, s in zip(masters, owned, strict=True))
        )
        clients = spread_clients(keys, CLIENTS_PER_SHARD)

        print(
            f"(a) 429 path, one uvicorn worker each, {len(clients)} clients with spent budgets "
            f"({CLIENTS_PER_SHARD} per shard), wrk -c32 {seconds:.0f} s, rounds interleaved "
            "(worker and redis-server CPU: share of one core):"
        )
        with (
            api_process(settings, workers=1, **TRUSTED) as single_base,
            api_process(settings, workers=1, REDIS_URL=cluster.seed_url, REDIS_CLUSTER="true", **TRUSTED) as cb,
        ):
            stores[0].base, stores[1].base = single_base, cb
            for store in stores:
                store.worker = worker_of(store.base)
            refusals(stores, keys, clients, settings.rate_limit_login_failures, rounds, seconds)
        single, on_cluster = stores
        single_rps, cluster_rps = median(single.rps), median(on_cluster.rps)
        ratio = cluster_rps / single_rps
        verdict = "ok" if ratio >= TARGET else "MISSED"
        print(
            f"429 path, 3-master cluster vs single Redis: {ratio:.2f}x (target >= {TARGET}) [{verdict}]  "
            f"(medians of {rounds}: {cluster_rps:.0f} / {single_rps:.0f} req/s)"
        )
        for store in stores:
            cpu_per_request = [d.worker_cpu_share / rps * 1e6 for d, rps in zip(store.deltas, store.rps, strict=True)]
            redis_per_request = [sum(d.cpu_share) / rps * 1e6 for d, rps in zip(store.deltas, store.rps, strict=True)]
            served = [median([d.evalsha_per_s[i] for d in store.deltas]) for i in range(len(store.nodes))]
            print(
                f"  {store.name}: worker CPU {median(cpu_per_request):.0f} us per refusal, redis-server "
                f"{median(redis_per_request):.0f} us (all nodes); EVALSHA/s per node "
                + " ".join(f"{node.name} {rate:.0f}" for node, rate in zip(store.nodes, served, strict=True))
                + f"; audit entries unwritten at a round's end: max {max(store.backlogs)}"
            )

        print(
            f"(b) script calls/s: reserve + settle for fresh clients through LoginLimiter in this process "
            f"({IN_FLIGHT} x {BATCH} calls in flight), {seconds:.0f} s per store, rounds interleaved "
            "(EVALSHA/s per node and the client's CPU in brackets):"
        )
        results = asyncio.run(script_calls(settings, cluster.seed_url, stores, rounds, seconds))
        for store in stores:
            totals = [rate for rate, _ in results[store.name]]
            deltas = [delta for _, delta in results[store.name]]
            client_cpu = median([delta.worker_cpu_share for delta in deltas])
            print(
                f"  {store.name}: {median(totals):.0f} calls/s from this client (median of {rounds}; "
                f"the client at {client_cpu:.0%} of a core)"
            )
            for index, node in enumerate(store.nodes):
                served = median([d.evalsha_per_s[index] for d in deltas])
                cpu = median([d.cpu_share[index] for d in deltas])
                per_cpu = median([d.evalsha_per_s[index] / d.cpu_share[index] for d in deltas if d.cpu_share[index]])
                print(
                    f"    {node.name} (:{node.port}): {served:7.0f} calls/s served at {cpu:4.0%} of a core "
                    f"= {per_cpu:7.0f} calls per CPU-second"
                )
        memory = ", ".join(
            f"{node.name} {used / 2**20:.1f}/{rss / 2**20:.1f}"
            for node in [single_node, *masters]
            for used, rss in [node.memory()]
        )
        print(f"redis-server memory at the end, used/RSS MiB: {memory}")
        return 0 if ratio >= TARGET else 1  # as the other benchmarks: a missed target fails the run


def main() -> int:
    parser = bench_parser(__doc__, rounds=True)
    args = parser.parse_args()
    return run(args.rounds, args.seconds, args.database_url, args.redis_url)


if __name__ == "__main__":
    raise SystemExit(main())
