"""The chart's Redis Cluster scripts and config, run for real on local servers.

The chart's Redis pods start each node with files/redis/start.sh and the rendered
redis.conf, and a Job forms the cluster with files/redis/create.sh. Here the same
files, taken from the rendered chart, run six real servers on this machine, each "pod"
named 127.0.0.1 with its own port instead of a DNS name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import RedisError

from services.common.keys import PairKeys
from services.common.redis_conn import connect
from services.local.redis_cluster import find_server_binaries, free_ports
from tests.deploy.chart import of_kind, render
from tests.support.waiting import eventually


@dataclass
class Nodes:
    root: Path
    ports: list[int]
    env: dict[str, str]
    processes: dict[int, subprocess.Popen[bytes]]

    @property
    def spec(self) -> str:
        return " ".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self, port: int) -> None:
        data = self.root / str(port)
        data.mkdir(exist_ok=True)
        env = self.env | {"REDIS_PORT": str(port), "REDIS_DATA": str(data),
                          "POD_IP": "127.0.0.1", "POD_FQDN": "127.0.0.1"}
        # The data directory and the bind address differ here; all else is the chart's.
        self.processes[port] = subprocess.Popen(
            ["sh", str(self.root / "scripts" / "start.sh"), "--bind", "127.0.0.1",
             "--logfile", str(data / "server.log"), "--repl-diskless-sync-delay", "0"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        """SIGTERM each node's process group: the server and a meet.sh still running."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):  # the whole group is gone
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def create(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(self.root / "scripts" / "create.sh")],
                              env=self.env | {"REDIS_NODES": self.spec, "REDIS_REPLICAS": "1"},
                              capture_output=True, text=True, timeout=120)

    def client(self, port: int) -> Redis:
        return Redis("127.0.0.1", port, decode_responses=True, socket_timeout=2)

    def layout(self) -> dict[str, tuple[str, str]]:
        """node id -> (role, slots) as the first node sees the cluster."""
        with self.client(self.ports[0]) as client:
            nodes = client.execute_command("CLUSTER", "NODES")
        rows = [line.split() for line in nodes.splitlines() if line]
        return {row[0]: ("master" if "master" in row[2] else "replica", " ".join(row[8:]))
                for row in rows}


def answers(nodes: Nodes, port: int) -> bool:
    try:
        with nodes.client(port) as client:
            return bool(client.ping())
    except (OSError, RedisError):
        return False


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    docs = render()
    (config,) = [cm for cm in of_kind(docs, "ConfigMap") if "redis.conf" in cm["data"]]
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name, text in config["data"].items():
        (scripts / name).write_text(text)
    # The pods' image names them redis-server and redis-cli; here they may be Valkey's.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    server, cli = find_server_binaries()
    (bin_dir / "redis-server").symlink_to(server)
    (bin_dir / "redis-cli").symlink_to(cli)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "REDIS_CONF": str(scripts / "redis.conf")}
    ports = free_ports(6)
    running = Nodes(tmp_path, ports, env | {"REDIS_NODES": " ".join(
        f"127.0.0.1:{port}" for port in ports)}, {})
    try:
        for port in ports:
            running.start(port)
        await eventually(lambda: all(answers(running, port) for port in ports),
                         "every node answering PING", 20)
        yield running
    finally:
        running.stop()


def cluster_ok(nodes: Nodes) -> bool:
    for port in nodes.ports:
        try:
            with nodes.client(port) as client:
                if client.cluster("INFO").get("cluster_state") != "ok":
                    return False
        except (OSError, RedisError):
            return False
    return True


async def test_create_script_forms_three_masters_with_a_replica_each_once(
        nodes: Nodes) -> None:
    done = nodes.create()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("cluster ok")
    layout = nodes.layout()
    assert sorted(role for role, _ in layout.values()) == ["master"] * 3 + ["replica"] * 3

    # The services work on it, with the nodes' announced names as endpoints.
    client = await connect(f"redis://127.0.0.1:{nodes.ports[0]}")
    try:
        for pair in ("BTC-USD", "ETH-USD", "ETH-BTC"):
            await client.set(PairKeys(pair).lease, "probe")
            assert await client.get(PairKeys(pair).lease) == b"probe"
    finally:
        await client.aclose()

    # Run again, as every chart upgrade does: nothing changes.
    again = nodes.create()
    assert again.returncode == 0, again.stdout + again.stderr
    assert nodes.layout() == layout


async def test_nodes_restarted_together_rejoin_the_cluster_they_had(nodes: Nodes) -> None:
    assert nodes.create().returncode == 0
    layout = nodes.layout()
    nodes.stop()
    for port in nodes.ports:
        nodes.start(port)  # nodes.conf is kept: each meets its peers again
    await eventually(lambda: cluster_ok(nodes), "cluster_state:ok after the restart", 60)
    assert set(nodes.layout()) == set(layout)
