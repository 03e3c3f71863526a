"""Redis connections that work the same on a Redis Cluster and on a single node."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

AnyRedis = Redis | RedisCluster

REDIS_URL_ENV = "REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:7000"


async def connect(url: str, *, decode_responses: bool = False) -> AnyRedis:
    """A client for `url`: a RedisCluster if that node has cluster mode on, else a Redis.

    Callers use only commands whose keys share one hash tag, so the same code runs on
    both (DESIGN §3).
    """
    probe = Redis.from_url(url)
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    if info.get("cluster_enabled"):
        cluster = RedisCluster.from_url(url, decode_responses=decode_responses)
        await cluster.initialize()
        return cluster
    return Redis.from_url(url, decode_responses=decode_responses)


def is_cluster(client: AnyRedis) -> bool:
    return isinstance(client, RedisCluster)
