"""The durable writer: its scripts loaded once per master, not checked before every
write, and loaded again when a master has lost them (a promoted replica, a restart);
concurrent writes to one master share one WAIT (group commit)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from services.common.durable import DurableWriter
from services.common.redis_conn import connect
from tests.support.servers import single_node

# Idempotent as the writer requires: credits a reference once.
CREDIT_ONCE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], 1) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'avail', ARGV[2])
"""


async def calls(redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_script_is_loaded_once_and_again_only_when_the_master_lost_it(
        tmp_path: Path) -> None:
    with single_node(tmp_path) as url:
        redis = await connect(url)
        writer = DurableWriter(redis, replicas=0)
        script = redis.register_script(CREDIT_ONCE)
        try:
            async def credit(reference: str) -> list:
                async def queue(pipe: Pipeline) -> None:
                    await script(keys=["balance", "references"], args=[reference, 10],
                                 client=pipe)
                return await writer.run("balance", queue)

            assert [await credit(f"r{i}") for i in range(5)] == [[10], [20], [30], [40], [50]]
            assert await calls(redis, "script|exists") == 0  # not one round trip per write
            assert await calls(redis, "script|load") == 1
            await redis.script_flush()  # as a restarted master or a promoted replica has
            assert await credit("r5") == [60]
            assert await credit("r5") == [0]  # sent again: applied once
            assert int(await redis.hget("balance", "avail")) == 60
            assert await calls(redis, "script|load") == 2
        finally:
            await writer.aclose()
            await redis.aclose()


async def test_concurrent_writes_to_one_master_share_one_wait_and_keep_their_outcomes(
        redis_cluster) -> None:
    redis = await connect(redis_cluster.url)
    writer = DurableWriter(redis, replicas=1)
    script = redis.register_script(CREDIT_ONCE)
    node = redis.get_node_from_key("{group}:balance")
    master = Redis(host=node.host, port=node.port)
    try:
        async def credit(reference: str, amount: int | str) -> list:
            async def queue(pipe: Pipeline) -> None:
                await script(keys=["{group}:balance", "{group}:references"],
                             args=[reference, amount], client=pipe)
            return await writer.run("{group}:balance", queue)

        waits = await calls(master, "wait")
        outcomes = await asyncio.gather(
            *(credit(f"g{i}", 1) for i in range(50)),
            credit("bad", "not a number"),  # an error reply fails this write alone
            return_exceptions=True)
        assert await calls(master, "wait") - waits < 5  # not one per write
        assert isinstance(outcomes[-1], ResponseError)
        assert sorted(result[0] for result in outcomes[:-1]) == list(range(1, 51))
        assert int(await redis.hget("{group}:balance", "avail")) == 50
    finally:
        await master.aclose()
        await writer.aclose()
        await redis.aclose()
