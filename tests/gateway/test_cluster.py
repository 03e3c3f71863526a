"""The gateway on a real Redis Cluster (3 Valkey masters): sharded subscriptions on the
owning master, and recovery when subscriptions break or a pair's slot moves.

Each recovery must end with a fresh snapshot from the gateway, after which deltas
continue it: messages published meanwhile may be lost (pub/sub is at-most-once), so
only a re-read of the book keeps clients exact.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio.cluster import RedisCluster
from websockets.asyncio.client import ClientConnection, connect

from services.common.book_cache import read_book, wire_levels
from services.common.keys import PairKeys
from services.common.messages import PlaceOrder, encode
from services.common.pairs import load_markets
from services.common.redis_conn import connect as redis_connect
from services.engine.runner import Engine
from services.gateway.server import Gateway, GatewaySettings
from services.local.redis_cluster import ClusterSpec, LocalRedisCluster, free_ports

PAIR = load_markets().pair("BTC-USD")
KEYS = PairKeys("BTC-USD")
BOOK = {"ch": "book", "symbol": "BTC-USD", "depth": 10}
TIMEOUT = 10.0
fixture = pytest_asyncio.fixture


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    spec = ClusterSpec(Path(tmp_path_factory.mktemp("cluster")), tuple(free_ports(3)),
                       masters=3, replicas=0)
    with LocalRedisCluster(spec) as cluster:
        yield cluster.url


@fixture(scope="module", loop_scope="session")
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = await redis_connect(cluster_url)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()


@fixture(scope="module", loop_scope="session")
async def engine(cluster: RedisCluster) -> Engine:
    engine = Engine(cluster, PAIR)
    await engine.recover()
    return engine


_ids = iter(range(1, 1 << 30))


async def place(cluster: RedisCluster, engine: Engine, side: str, price: str) -> None:
    """One order, committed by the engine as one batch."""
    command = PlaceOrder(order_id=f"c{next(_ids)}", account_id="a1", side=side,
                         price=PAIR.price_to_ticks(price), qty=PAIR.qty_to_lots("0.0100"))
    await cluster.xadd(KEYS.inbox, {"c": encode(command)})
    await engine.process_batch(await engine.read_batch())


@fixture(scope="module", loop_scope="session")
async def gateway(cluster_url: str) -> AsyncIterator[Gateway]:
    gw = Gateway(GatewaySettings(port=0, redis_url=cluster_url))
    await gw.start()
    yield gw
    await gw.aclose()


async def next_book(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while (frame := json.loads(await ws.recv())).get("ch") != "book":
            pass
    return frame


async def expect_live(ws: ClientConnection, snapshot: dict[str, Any], cluster: RedisCluster,
                      engine: Engine, price: str) -> None:
    """The snapshot is the book in Redis, and the next change comes as a delta after it."""
    book = await read_book(cluster, KEYS)
    assert snapshot["type"] == "snapshot"
    assert (snapshot["seq"], snapshot["bids"]) == (book.seq, wire_levels(PAIR, book.bids[:10]))
    await place(cluster, engine, "buy", price)
    delta = await next_book(ws)
    assert (delta["type"], delta["prev_seq"], delta["seq"]) == ("delta", book.seq, book.seq + 1)
    assert delta["bids"] == [[price, "0.0100"]]


async def resync_after(ws: ClientConnection, disruption: Any) -> dict[str, Any]:
    await disruption
    frame = await next_book(ws)
    assert frame["type"] == "snapshot", "a broken subscription must bring a fresh snapshot"
    return frame


async def test_book_stream_on_the_owning_master(gateway: Gateway, cluster: RedisCluster,
                                                engine: Engine) -> None:
    await place(cluster, engine, "buy", "60000.00")
    async with connect(f"ws://127.0.0.1:{gateway.port}/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "args": [BOOK]}))
        await expect_live(ws, await next_book(ws), cluster, engine, "60001.00")
        owner = cluster.get_node_from_key(KEYS.md)
        counts = {node.name: (await cluster.pubsub_shardnumsub(KEYS.md, target_nodes=node))
                  for node in cluster.get_primaries()}
        assert counts[owner.name] == [(KEYS.md.encode(), 1)]  # subscribed where it is published

        # Every pub/sub connection dropped (as when a node restarts): resubscribe + resync.
        kill = asyncio.gather(*(cluster.execute_command("CLIENT KILL", "TYPE", "pubsub",
                                                        target_nodes=node)
                                for node in cluster.get_primaries()))
        await expect_live(ws, await resync_after(ws, kill), cluster, engine, "60002.00")

        # The pair's slot moves to another master (resharding): the old master drops the
        # subscription; the gateway follows the slot and resyncs.
        target = next(n for n in cluster.get_primaries() if n.name != owner.name)
        moved = migrate_slot(cluster, cluster.keyslot(KEYS.md), owner, target)
        await expect_live(ws, await resync_after(ws, moved), cluster, engine, "60003.00")
        assert cluster.get_node_from_key(KEYS.md).name == target.name


async def migrate_slot(cluster: RedisCluster, slot: int, source: Any, target: Any) -> None:
    """Move `slot` with its keys from `source` to `target`, as `--cluster reshard` does."""
    source_id = (await cluster.cluster_myid(source)).decode()
    target_id = (await cluster.cluster_myid(target)).decode()
    await cluster.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id,
                                  target_nodes=target)
    await cluster.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id,
                                  target_nodes=source)
    while keys := await cluster.execute_command("CLUSTER GETKEYSINSLOT", slot, 100,
                                                target_nodes=source):
        await cluster.execute_command("MIGRATE", target.host, target.port, "", 0, 5000,
                                      "KEYS", *keys, target_nodes=source)
    for node in (target, source):
        await cluster.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id,
                                      target_nodes=node)
