"""The durable writer's scripts: loaded once per master, not checked before every write,
and loaded again when a master has lost them (a promoted replica, a restart)."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio.client import Pipeline

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
