"""An order is acknowledged only once its hold and its command are on a replica."""

from __future__ import annotations

import os
import signal

from redis.asyncio.cluster import RedisCluster

from services.common import keys
from services.common.client import ExchangeClient
from services.local.redis_cluster import LocalRedisCluster
from services.local.up import LocalExchange


async def replica_port_of(cluster_url: str, key: str) -> int:
    """The port of the replica of the master that owns `key`'s slot."""
    client = RedisCluster.from_url(cluster_url)
    await client.initialize()
    try:
        master = client.get_node_from_key(key)
        nodes = await client.cluster_nodes()  # {"host:port": {node_id, master_id, ...}}
    finally:
        await client.aclose()
    master_id = nodes[f"{master.host}:{master.port}"]["node_id"]
    return next(int(address.rsplit(":", 1)[1]) for address, node in nodes.items()
                if node["master_id"] == master_id)


async def test_no_ack_while_the_replica_cannot_confirm_and_a_retry_returns_the_same_order(
        stack: LocalExchange, admin: ExchangeClient, redis_cluster: LocalRedisCluster) -> None:
    credentials = await admin.create_account()
    await admin.deposit(credentials.account_id, "ETH", "1")
    trader = admin.as_account(credentials)
    body = {"symbol": "ETH-USD", "side": "sell", "price": "3300.00", "qty": "0.010",
            "client_order_id": "durable-1"}
    replica = redis_cluster.processes[await replica_port_of(
        redis_cluster.url, keys.PairKeys("ETH-USD").inbox)]
    os.kill(replica.pid, signal.SIGSTOP)  # replication to it stalls (no failover: < 2 s)
    try:
        stalled = await trader.request("POST", "/api/v1/orders", body, signed=True)
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    assert stalled.status_code == 503
    assert stalled.json()["error"]["code"] == "NOT_DURABLE"
    # The outcome was unknown to the client; the retry with the same client id finds the
    # one order (held once), now safely replicated.
    retried = await trader.request("POST", "/api/v1/orders", body, signed=True)
    assert retried.status_code == 200
    order = retried.json()
    assert order["client_order_id"] == "durable-1"
    assert (await trader.balances())["ETH"] == {"asset": "ETH", "available": "0.99000000",
                                                 "held": "0.01000000"}
    await trader.cancel_order(order["order_id"])
