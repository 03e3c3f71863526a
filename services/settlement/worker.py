"""The settlement worker: reads every pair's event stream and settles each account.

Exactly once: an account's legs from one event entry are applied by one script that
also advances the account's per-pair high-water mark of settled event seq, so an entry
re-read after a crash (it is acknowledged only after every account is settled) is
skipped by the accounts that already have it. The entry is acknowledged only once
every account's settlement reached a replica (WAIT on the account's master): a master
lost in a failover cannot take an account's update with it while the entry counts as
settled. Legs carry their event's seq, so an engine commit lost in a failover and made
again in other batches is applied once too.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from services.common import keys
from services.common.durable import DurableWriter
from services.common.errors import ExchangeError
from services.common.messages import Event, events_decoder
from services.common.metrics import SETTLE_SECONDS, SETTLED_BATCHES, SETTLED_LEGS
from services.common.pairs import Pair
from services.common.redis_conn import AnyRedis
from services.common.scripts import lua
from services.common.tracing import (
    OrderTraces,
    order_traces,
    record_settlement,
    setup_tracing,
)
from services.settlement.legs import Leg, legs_by_account
from services.settlement.reconciler import run_reconciler

log = logging.getLogger("exchange.settlement")

HISTORY = 1000  # fills and closed orders kept per account for the REST API
_SETTLE_LUA = lua("services.settlement", "settle.lua", publishes=True)


class PairSettler:
    """Settles one pair's event stream, entry by entry, in order."""

    def __init__(self, redis: AnyRedis, pair: Pair, *, consumer: str = "settlement",
                 batch_size: int = 200, block_ms: int = 1000,
                 durable: DurableWriter | None = None) -> None:
        self.redis = redis
        # Each account's settlement waits for a replica (0 replicas: as is).
        self.durable = durable or DurableWriter(redis, replicas=0)
        self.pair = pair
        self.keys = keys.PairKeys(pair.symbol)
        self.consumer = consumer
        self.batch_size = batch_size
        self.block_ms = block_ms
        self._settle = redis.register_script(_SETTLE_LUA)
        self._json = msgspec.json.Encoder()
        self._tracer = setup_tracing("exchange-settlement")

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.keys.events, keys.SETTLEMENT_GROUP, id="0",
                                           mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Settle the pair's entries until `stop`. `stop` is looked at between reads
        only: a stop (SIGTERM) settles and acknowledges the batch in hand, reads no
        other, and leaves nothing read but unsettled for the next worker."""
        await self.ensure_group()
        pending_first = True  # entries read but not acknowledged before a crash
        delay = 0.1
        while not stop.is_set():
            try:
                streams = await self.redis.xreadgroup(
                    keys.SETTLEMENT_GROUP, self.consumer,
                    {self.keys.events: "0" if pending_first else ">"},
                    count=self.batch_size, block=None if pending_first else self.block_ms,
                )
                entries = streams[0][1] if streams else []
                if pending_first and not entries:
                    pending_first = False
                for entry_id, fields in entries:
                    await self.settle_entry(fields)
                    await self.redis.xack(self.keys.events, keys.SETTLEMENT_GROUP, entry_id)
                delay = 0.1
            except (RedisError, OSError, ExchangeError) as exc:
                # ExchangeError: a settlement no replica confirmed (NOT_DURABLE); the
                # entry stays unacknowledged and is settled again (idempotent).
                log.warning("%s settlement: %s; retrying", self.pair.symbol, exc)
                pending_first = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def settle_entry(self, fields: dict[bytes, bytes]) -> None:
        """Apply one committed engine entry to every account it concerns."""
        started_s = time.perf_counter()
        events = events_decoder.decode(fields[b"e"])
        seq = int(fields[b"seq"])
        by_account = legs_by_account(self.pair, events)
        traces = order_traces(fields)
        if traces:
            await self._settle_traced(by_account, seq, events, traces)
        else:
            await asyncio.gather(*(self._settle_account(account_id, legs, seq)
                                   for account_id, legs in by_account.items()))
        symbol = self.pair.symbol
        SETTLE_SECONDS.labels(symbol).observe(time.perf_counter() - started_s)
        SETTLED_BATCHES.labels(symbol).inc()
        SETTLED_LEGS.labels(symbol).inc(sum(len(legs) for legs in by_account.values()))

    async def _settle_traced(self, by_account: dict[str, list[Leg]], seq: int,
                             events: list[Event], traces: OrderTraces) -> None:
        """The entry holds sampled orders: time each account's settlement for their
        spans."""
        timings: dict[str, tuple[int, int]] = {}

        async def timed(account_id: str, legs: list[Leg]) -> None:
            start = time.time_ns()
            await self._settle_account(account_id, legs, seq)
            timings[account_id] = (start, time.time_ns())

        started = time.time_ns()
        await asyncio.gather(*(timed(account_id, legs) for account_id, legs
                               in by_account.items()))
        record_settlement(self._tracer, self.pair.symbol, seq, traces, events, started,
                          time.time_ns(), timings)

    async def _settle_account(self, account_id: str, legs: list[Leg],
                              seq: int) -> None:
        account = keys.AccountKeys(account_id)
        order_keys: list[str] = []
        index: dict[str, int] = {}
        for leg in legs:
            if "id" not in leg:  # the fee account's share names no order
                continue
            order_id = str(leg["id"])
            if order_id not in index:
                index[order_id] = 9 + len(order_keys)  # Lua KEYS are 1-based after 8 fixed
                order_keys.append(account.order(order_id))
            leg["o"] = index[order_id]
        script_keys = [account.balances, account.applied, account.open_orders, account.fills,
                       account.closed_orders, account.unconfirmed, account.updates_seq,
                       account.updates, *order_keys]
        args = [self.pair.symbol, seq, self._json.encode(legs), HISTORY]

        async def settle(pipe: Pipeline) -> None:
            await self._settle(keys=script_keys, args=args, client=pipe)

        await self.durable.run(account.balances, settle)


async def run_settlement(redis: AnyRedis, pairs: list[Pair], stop: asyncio.Event) -> None:
    """Settle every pair concurrently, and watch for stranded holds, until `stop`."""
    durable = await DurableWriter.for_deployment(redis)
    try:
        await asyncio.gather(*(PairSettler(redis, pair, durable=durable).run(stop)
                               for pair in pairs), run_reconciler(redis, stop))
    finally:
        await durable.aclose()
