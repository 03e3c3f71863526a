"""Test session fixtures: a real local Redis Cluster and the exchange's real processes.

No fake Redis and no mocks of what we sell: the cluster is real server processes on
free ports, and the stack is the same `LocalExchange` that `make up` runs.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import pytest

from services.common.client import ExchangeClient
from services.common.pairs import Markets, load_markets
from services.common.redis_conn import AnyRedis, connect
from services.local.redis_cluster import ClusterSpec, LocalRedisCluster, free_ports
from services.local.up import LocalExchange, UpOptions


@pytest.fixture(scope="session")
def markets() -> Markets:
    return load_markets()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A 3-master, 3-replica cluster for the whole session."""
    spec = ClusterSpec(tmp_path_factory.mktemp("redis"), tuple(free_ports(6)))
    with LocalRedisCluster(spec) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def stack(redis_cluster: LocalRedisCluster,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalExchange]:
    """Engines for every pair, settlement, the API and two gateway replicas, each a
    process, and Prometheus scraping them (as `make up` runs them); the replicas get
    distinct ports so a test can address each one."""
    api_port, prometheus_port, *gateway_ports = free_ports(4)
    root = tmp_path_factory.mktemp("exchange")
    options = UpOptions(
        data_dir=root, redis_url=redis_cluster.url, api_port=api_port,
        gateway_ports=tuple(gateway_ports), simulate_rate=0,
        admin_token=secrets.token_urlsafe(16), log_dir=root / "logs",
        prometheus_port=prometheus_port,
    )
    with LocalExchange(options) as exchange:
        yield exchange


@pytest.fixture
async def redis(redis_cluster: LocalRedisCluster) -> AsyncIterator[AnyRedis]:
    """A client of the session's cluster (the one the stack runs on)."""
    client = await connect(redis_cluster.url)
    yield client
    await client.aclose()


@pytest.fixture
async def admin(stack: LocalExchange) -> AsyncIterator[ExchangeClient]:
    """An operator client of the running stack."""
    client = ExchangeClient(stack.api_url, admin_token=stack.options.admin_token)
    yield client
    await client.aclose()
