"""Stranded holds: orders whose funds were held but whose command never reached the
engine (the API died between the two steps).

The hold script records each order as unconfirmed; settlement confirms it once the
engine has it (any engine event of the order). This reconciler re-sends the command of
an order left unconfirmed for a while whose entry is not in the pair's input stream. It
never releases such a hold instead: an API that was only slow may still deliver its
command, and the engine ignores a placement whose id it has seen, so re-sending is safe
where releasing would not be (the order could then trade without funds held).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import msgspec
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from services.common import keys
from services.common.messages import PlaceOrder, command_decoder, encode
from services.common.order_record import place_command
from services.common.redis_conn import AnyRedis, is_cluster

log = logging.getLogger("exchange.reconciler")

STALE_AFTER_MS = 10_000  # unconfirmed this long: look for the command
SEARCH_WINDOW_MS = 60_000  # an API enqueues within this of the hold, or not at all
INTERVAL_S = 5.0
TERMINAL = (b"filled", b"cancelled", b"rejected")


async def _unconfirmed_keys(redis: AnyRedis) -> AsyncIterator[bytes]:
    if is_cluster(redis):
        async for key in redis.scan_iter(match=keys.UNCONFIRMED_PATTERN, count=1000,
                                         target_nodes=RedisCluster.PRIMARIES):
            yield key
    else:
        async for key in redis.scan_iter(match=keys.UNCONFIRMED_PATTERN, count=1000):
            yield key


async def _command_enqueued(redis: AnyRedis, inbox: str, order_id: str,
                            created_ms: int) -> bool:
    """Is the order's placement in the input stream (read around its creation time)?"""
    start = f"{max(created_ms - 1000, 0)}-0"
    end = f"{created_ms + SEARCH_WINDOW_MS}-0"
    while True:
        entries = await redis.xrange(inbox, start, end, count=500)
        for _, fields in entries:
            try:
                command = command_decoder.decode(fields[b"c"])
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
                continue
            if isinstance(command, PlaceOrder) and command.order_id == order_id:
                return True
        if len(entries) < 500:
            return False
        start = "(" + entries[-1][0].decode()


async def reconcile_once(redis: AnyRedis, *, stale_after_ms: int = STALE_AFTER_MS,
                         now_ms: int | None = None) -> list[str]:
    """Re-send every stranded order's command; returns their ids."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    resent: list[str] = []
    async for key in _unconfirmed_keys(redis):
        account_id = key.decode()[len("{acct:"):].split("}", 1)[0]
        account = keys.AccountKeys(account_id)
        for raw_id in await redis.zrangebyscore(key, "-inf", now - stale_after_ms):
            order_id = raw_id.decode()
            raw = await redis.hgetall(account.order(order_id))
            if not raw or raw.get(b"status") in TERMINAL:
                await redis.zrem(key, order_id)  # settled meanwhile: nothing to watch
                continue
            record = {k.decode(): v.decode() for k, v in raw.items()}
            inbox = keys.PairKeys(record["symbol"]).inbox
            if await _command_enqueued(redis, inbox, order_id, int(record["created_ts"])):
                continue  # in flight: its engine or settlement is behind, not stranded
            await redis.xadd(inbox, {"c": encode(place_command(record)), "tp": b""})
            log.warning("re-sent stranded order %s of account %s", order_id, account_id)
            resent.append(order_id)
    return resent


async def run_reconciler(redis: AnyRedis, stop: asyncio.Event,
                         interval_s: float = INTERVAL_S) -> None:
    while not stop.is_set():
        try:
            await reconcile_once(redis)
        except (RedisError, OSError) as exc:
            log.warning("reconciler pass failed: %s", exc)
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass
