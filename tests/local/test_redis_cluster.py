"""The local Redis Cluster launcher, against real server processes (no mocks)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.cluster import RedisCluster

from services.local.redis_cluster import (
    ClusterSpec,
    LocalRedisCluster,
    free_ports,
    main,
    port_free,
)

ROOT = Path(__file__).resolve().parents[2]


def _node_ids(c: LocalRedisCluster) -> dict[str, str]:
    ids = {}
    for node in c.nodes:
        with Redis.from_url(f"redis://{node}", decode_responses=True) as r:
            ids[node] = r.execute_command("CLUSTER MYID")
    return ids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    c = LocalRedisCluster(ClusterSpec(tmp_path / "redis", tuple(free_ports(6))))
    c.start(timeout=30)
    try:
        yield c
    finally:
        c.stop()


def test_cluster_serves_keys_on_every_master(cluster: LocalRedisCluster) -> None:
    host, port = cluster.nodes[0].split(":")
    assert cluster.url == f"redis://{host}:{port}"
    rc = RedisCluster(host=host, port=int(port), decode_responses=True)
    try:
        # one key per master, so the client really follows the slot map
        keys: dict[str, str] = {}
        for i in range(100):
            owner = rc.get_node_from_key(f"k{i}").name
            keys.setdefault(owner, f"k{i}")
        assert len(keys) == 3
        assert len({rc.keyslot(k) for k in keys.values()}) == 3
        for k in keys.values():
            assert rc.set(k, f"v-{k}")
        assert {k: rc.get(k) for k in keys.values()} == {k: f"v-{k}" for k in keys.values()}
    finally:
        rc.close()

    for node in cluster.nodes:
        h, p = node.split(":")
        with Redis(h, int(p), decode_responses=True) as r:
            info = r.cluster("INFO")
            assert info["cluster_state"] == "ok"
            assert info["cluster_slots_assigned"] == "16384"
            repl = r.info("replication")
            if repl["role"] == "slave":
                assert repl["master_link_status"] == "up"
    with Redis(host, int(port), decode_responses=True) as r:
        flags = [n["flags"] for n in r.cluster("NODES").values()]  # parsed: {addr: {...}}
    assert len(flags) == 6
    assert sum("master" in f for f in flags) == 3
    assert sum("slave" in f for f in flags) == 3
    assert not any("fail" in f for f in flags)


def test_a_relative_data_dir_works_as_make_up_gives_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `make up` passes `.exchange`; each server enters its --dir before it opens its log.
    monkeypatch.chdir(tmp_path)
    spec = ClusterSpec(Path(".exchange") / "redis", tuple(free_ports(6)))
    with LocalRedisCluster(spec) as c:
        rc = RedisCluster.from_url(c.url, decode_responses=True)
        rc.set("{ETH-USD}:last", "3000")
        assert rc.get("{ETH-USD}:last") == "3000"
        rc.close()
    assert all((tmp_path / ".exchange" / "redis" / str(p) / "server.log").is_file()
               for p in spec.ports)


def test_restart_on_same_data_dir_keeps_data(tmp_path: Path) -> None:
    spec = ClusterSpec(tmp_path / "redis", tuple(free_ports(6)))
    with LocalRedisCluster(spec) as c:
        rc = RedisCluster.from_url(c.url, decode_responses=True)
        rc.set("{BTC-USD}:last", "42000.5")
        rc.close()
        # No WAITAOF (Redis >= 7.2 only): with appendfsync everysec the write reaches the disk
        # only because stop() shuts down cleanly with SIGTERM, which is what this checks.
        ids = _node_ids(c)
        pids = [p.pid for p in c.processes.values()]
    assert not any(_alive(pid) for pid in pids)
    assert all((spec.data_dir / str(p) / "nodes.conf").exists() for p in spec.ports)

    with LocalRedisCluster(spec) as c:
        # same node ids: the nodes rejoined from nodes.conf, no new `--cluster create`
        assert _node_ids(c) == ids
        rc = RedisCluster.from_url(c.url, decode_responses=True)
        assert rc.get("{BTC-USD}:last") == "42000.5"
        rc.close()


def test_stop_leaves_no_server_alive(cluster: LocalRedisCluster) -> None:
    procs = cluster.processes
    assert len(procs) == 6 and all(_alive(p.pid) for p in procs.values())
    victim = cluster.spec.ports[-1]
    cluster.kill_node(victim)
    assert procs[victim].returncode == -signal.SIGKILL
    assert all(_alive(p.pid) for port, p in procs.items() if port != victim)

    cluster.stop(timeout=5)
    assert all(p.returncode is not None for p in procs.values())
    assert not any(_alive(p.pid) for p in procs.values())
    assert all(port_free(p) for p in cluster.spec.ports)
    cluster.stop()  # idempotent


def test_cli_refuses_a_taken_base_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = free_ports(1)[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", base))
        s.listen()
        rc = main(["--dir", str(tmp_path), "--base-port", str(base), "--masters", "1",
                   "--replicas", "0"])
    assert rc == 1
    assert f"port {base} " in capsys.readouterr().err
    assert not (tmp_path / str(base)).exists()


def test_cli_runs_until_sigterm_then_stops(tmp_path: Path) -> None:
    ports = free_ports(6)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.local.redis_cluster", "--dir", str(tmp_path),
         "--ports", ",".join(map(str, ports))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(7)]
        want = [f"node 127.0.0.1:{p}" for p in ports] + [f"url redis://127.0.0.1:{ports[0]}"]
        assert lines == want
        with Redis("127.0.0.1", ports[0], decode_responses=True) as r:
            assert r.cluster("INFO")["cluster_state"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert all(port_free(p) for p in ports)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
