"""A throwaway single Redis/Valkey node (cluster mode off), for single-node tests."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from services.local.redis_cluster import find_server_binaries


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def single_node(workdir: Path, timeout: float = 10.0) -> Iterator[str]:
    """Run one server on a free port until the block ends; yields its URL."""
    server, _ = find_server_binaries()
    for _ in range(3):  # the free port may be taken between our probe and the bind
        port = free_port()
        proc = subprocess.Popen(
            [str(server), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = redis.Redis(port=port)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    proc.kill()
                    raise TimeoutError("the server did not answer PING") from None
                time.sleep(0.02)
        probe.close()
        if proc.poll() is None:
            break
    else:
        raise RuntimeError("could not start a Redis server")
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
