"""Driving one private pair's engine and settlement in-process, step by step."""

from __future__ import annotations

from services.common import keys
from services.common.pairs import Pair
from services.common.redis_conn import AnyRedis
from services.engine.runner import Engine
from services.settlement.worker import PairSettler


async def match_queued(redis: AnyRedis, pair: Pair) -> Engine:
    """Start an engine for `pair` and commit everything queued for it as one batch."""
    engine = Engine(redis, pair)
    await engine.recover()
    batch = await engine.read_batch()
    if batch:
        await engine.process_batch(batch)
    return engine


async def settle_all(redis: AnyRedis, pair: Pair) -> None:
    """Apply every committed event entry of `pair` to the accounts it concerns."""
    settler = PairSettler(redis, pair)
    for _, fields in await redis.xrange(keys.PairKeys(pair.symbol).events):
        await settler.settle_entry(fields)
