"""The engine process of one pair: read commands in batches, match, commit atomically.

Crash safety: a batch's events, book cache, candles, market data and the engine's
position in its input stream are written by ONE script on the pair's slot, so a batch is
committed whole or not at all, and only by the holder of the pair's lease (fencing token). On
start (or after a failed commit) the state is rebuilt from the latest snapshot plus the
committed inputs after it, replayed through the pure book: the same state exactly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import Counter
from importlib import resources

import msgspec
from redis.exceptions import (
    ClusterDownError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common import keys
from services.common.intervals import INTERVALS_MS
from services.common.messages import (
    CandleTick,
    Command,
    Event,
    MarketDataUpdate,
    OrderRejected,
    Trade,
    TradeTick,
    command_decoder,
    encode,
)
from services.common.metrics import (
    ENGINE_BATCH_SIZE,
    ENGINE_COMMANDS,
    ENGINE_COMMIT,
    ENGINE_LEADING,
    ENGINE_TRADES,
    LEASE_TAKEOVERS,
    ORDER_COMMIT_LATENCY,
    ORDER_REJECTS,
)
from services.common.pairs import Pair
from services.common.redis_conn import AnyRedis
from services.common.tracing import (
    EngineBatchTrace,
    encode_order_traces,
    exporting,
    setup_tracing,
)
from services.engine.book import OrderBook
from services.engine.candles import Bar, Candles
from services.engine.lease import Lease
from services.engine.snapshot import capture, restore

log = logging.getLogger("exchange.engine")

# A commit is retried this long while the pair's master fails over (DESIGN §5).
COMMIT_RETRY_S = 10.0
# Errors after which sending the commit again is right: the node was unreachable or the
# cluster between two masters (ClusterDownError and TryAgainError are ResponseErrors).
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, OSError)
Entries = list[tuple[bytes, dict[bytes, bytes]]]  # input stream entries: (id, fields)
TRADE_HISTORY = 1000  # trades kept for GET /markets/{symbol}/trades
CANDLE_HISTORY = 5000  # bars kept per interval
_COMMIT_LUA = resources.files("services.engine").joinpath("commit.lua").read_text()
_SNAPSHOT_LUA = resources.files("services.engine").joinpath("snapshot_write.lua").read_text()


# Lua KEYS index of each interval's candle key (after the 8 fixed keys).
_CANDLE_KEY_INDEX = {interval: 9 + i for i, interval in enumerate(INTERVALS_MS)}


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as source:
        return source.read()


def entry_time_ms(entry_id: bytes) -> int:
    """Event time comes from the input entry id, never the clock, so replays match."""
    return int(entry_id.split(b"-", 1)[0])


class Engine:
    """Owns one pair's book and is the only writer of the pair's slot."""

    def __init__(self, redis: AnyRedis, pair: Pair, *, batch_size: int = 500,
                 block_ms: int = 1000, lease: Lease | None = None,
                 snapshot_every: int = 0) -> None:
        self.redis = redis
        self.pair = pair
        self.keys = keys.PairKeys(pair.symbol)
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.lease = lease  # None: no lease (tests, benchmarks); fenced once one exists
        self.book = OrderBook(band_bps=pair.market_band_bps)
        self.candles = Candles()
        self.md_seq = 0
        self.epoch = ""
        self._commit = redis.register_script(_COMMIT_LUA)
        self._write_snapshot = redis.register_script(_SNAPSHOT_LUA)
        self._json = msgspec.json.Encoder()
        self.snapshot_every = snapshot_every  # committed inputs between snapshots; 0 = none
        self._since_snapshot = 0
        # The engine's place in its input stream is the last input it committed: it reads
        # on from there (XREAD, no consumer group), so what a crashed or fenced-off
        # leader read but did not commit is simply read again by the next one, and a
        # fenced-off leader that goes on reading moves nothing for anyone else.
        self._last_input_id = ""
        self._inputs = 0  # inputs committed since the pair began (state "inputs")
        self._snapshotting: asyncio.Task[None] | None = None
        self._previous_snapshot_input = ""
        self._tracer = setup_tracing("exchange-engine")
        # Exported from the start: a standby shows 0, and counters start at 0.
        ENGINE_LEADING.labels(pair.symbol).set(0)
        for counter in (LEASE_TAKEOVERS, ENGINE_COMMANDS, ENGINE_TRADES):
            counter.labels(pair.symbol)

    # ---- recovery -------------------------------------------------------------------

    async def recover(self) -> None:
        """Rebuild the book from the committed inputs and resume the pair's counters."""
        k = self.keys
        # The epoch names this history of the pair; it changes only if state starts over.
        await self.redis.hsetnx(k.state, "epoch", secrets.token_hex(4))
        state = {key.decode(): value.decode()
                 for key, value in (await self.redis.hgetall(k.state)).items()}
        self.epoch = state["epoch"]
        self.md_seq = int(state.get("md_seq", 0))
        self._inputs = int(state.get("inputs", 0))
        self.book = OrderBook(band_bps=self.pair.market_band_bps)
        self.candles = Candles()
        last_input = state.get("last_input_id")
        start = "-"
        blob = await self.redis.get(k.snapshot) if last_input else None
        if blob:
            snap, self.book, self.candles = restore(blob, self.pair.market_band_bps)
            start = "(" + snap.last_input_id
        if last_input:
            while True:
                entries = await self.redis.xrange(k.inbox, start, last_input, count=1000)
                self._apply(entries)
                if len(entries) < 1000:
                    break
                start = "(" + entries[-1][0].decode()
        self.book.take_level_changes()
        self.candles.take_changed()
        expected = int(state.get("event_seq", 0))
        if self.book.last_seq != expected:
            raise RuntimeError(
                f"{self.pair.symbol}: replay gave event seq {self.book.last_seq}, "
                f"committed state says {expected}"
            )
        self._last_input_id = last_input or ""
        log.info("%s recovered%s: event seq %d, md seq %d, %d resting orders",
                 self.pair.symbol, " from a snapshot" if blob else "", expected, self.md_seq,
                 len(self.book.orders))

    def _apply(self, entries: Entries) -> list[Event]:
        """Match a batch of input entries; the events, in order."""
        commands: list[tuple[Command, int]] = []
        decode = command_decoder.decode
        for entry_id, fields in entries:
            try:
                # entry_time_ms(entry_id), inlined: this loop runs for every order.
                commands.append((decode(fields[b"c"]), int(entry_id.partition(b"-")[0])))
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
                # Only the API writes here and it validates; an undecodable entry is skipped
                # (and acknowledged) the same way on every replay, so state stays consistent.
                log.error("%s: skipping malformed input %s", self.pair.symbol, entry_id)
        events = self.book.apply_batch(commands)
        self.candles.on_trades(events, self.pair.quote_units_per_tick_lot)
        return events

    # ---- the loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Lead the pair until `stop`: wait for the lease (as a standby), recover, process
        batches; on losing the lease go back to waiting. Recover and go on after a
        failed commit."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            if self.lease is not None:
                if not await self.lease.acquire(stop):
                    return
                LEASE_TAKEOVERS.labels(self.pair.symbol).inc()
            ENGINE_LEADING.labels(self.pair.symbol).set(1)
            lost = asyncio.Event()
            keeper = asyncio.create_task(self._keep_lease(stop, lost)) if self.lease else None
            try:
                await self._recover_until_ok(stop)
                await self._lead(stop, lost)
            finally:
                ENGINE_LEADING.labels(self.pair.symbol).set(0)
                if keeper:
                    keeper.cancel()
                if self.lease is not None and stop.is_set() and not lost.is_set():
                    # The batch in hand was committed (or not started): hand over now.
                    try:
                        await self.lease.release()
                    except (RedisError, OSError) as exc:
                        log.warning("%s: lease not released (%s)", self.pair.symbol, exc)
            if lost.is_set():
                log.warning("%s: lease lost; back to standby", self.pair.symbol)

    async def _keep_lease(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        assert self.lease is not None
        while not stop.is_set() and not lost.is_set():
            await asyncio.sleep(self.lease.ttl_ms / 3000)
            try:
                if not await self.lease.renew():
                    lost.set()
            except (RedisError, OSError) as exc:
                log.warning("%s: lease renewal failed (%s)", self.pair.symbol, exc)

    async def read_batch(self, block_ms: int | None = None) -> Entries:
        """The next inputs after the last committed one, up to a batch (waiting up to
        `block_ms` for the first; None: not at all)."""
        streams = await self.redis.xread({self.keys.inbox: self._last_input_id or "0-0"},
                                         count=self.batch_size, block=block_ms)
        return streams[0][1] if streams else []

    async def _lead(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        while not stop.is_set() and not lost.is_set():
            try:
                entries = await self.read_batch(self.block_ms)
                if entries:
                    await self.process_batch(entries)
            except TRANSIENT as exc:
                log.warning("%s: Redis unavailable (%r); resuming once it is back",
                            self.pair.symbol, exc)
                await self._resume(stop)
            except ResponseError as exc:
                if "FENCED" in str(exc):
                    lost.set()  # another writer holds the pair now: never write again
                    return
                log.warning("%s: batch failed (%s); recovering", self.pair.symbol, exc)
                await self._recover_until_ok(stop)
            except RedisError as exc:
                log.warning("%s: batch failed (%r); resuming", self.pair.symbol, exc)
                await self._resume(stop)

    async def _resume(self, stop: asyncio.Event) -> None:
        """After losing Redis for a while (a failover): keep the state in memory if the
        pair's slot still holds exactly the last commit we made, as it does when the
        promoted replica had it; else rebuild from what it holds."""
        delay = 0.1
        while not stop.is_set():
            try:
                seq, last_input = await self.redis.hmget(self.keys.state, "event_seq",
                                                         "last_input_id")
                break
            except (RedisError, OSError) as exc:
                log.warning("%s: still unavailable (%s)", self.pair.symbol, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        else:
            return
        if (int(seq or 0), (last_input or b"").decode()) != (self.book.last_seq,
                                                             self._last_input_id):
            log.warning("%s: the slot lost or gained commits; recovering", self.pair.symbol)
            await self._recover_until_ok(stop)

    async def _recover_until_ok(self, stop: asyncio.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            try:
                await self.recover()
                return
            except (RedisError, OSError) as exc:
                log.warning("%s: recovery failed (%s); retrying", self.pair.symbol, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def process_batch(self, entries: Entries) -> None:
        """Match every entry of the batch, then commit the whole batch in one script."""
        previous_seq = self.book.last_seq
        # Spans only for sampled orders, and only if they go anywhere (module doc of
        # services.common.tracing): an untraced batch pays one function call.
        traced = EngineBatchTrace.traced_inputs(entries) if exporting() else []
        batch_trace = EngineBatchTrace(self._tracer, self.pair.symbol, len(entries), traced,
                                       time.time_ns()) if traced else None
        events = self._apply(entries)
        order_traces = batch_trace.matched(time.time_ns()) if batch_trace else []
        bids, asks = self.book.take_level_changes()
        ticks = [TradeTick(e.trade_id, e.price, e.qty, e.taker_side, e.ts)
                 for e in events if type(e) is Trade]
        bars = self.candles.take_changed()
        ts = entry_time_ms(entries[-1][0])
        md_blob = b""
        md_seq = self.md_seq
        if bids or asks or ticks:
            md_seq += 1
            md_blob = encode(MarketDataUpdate(
                seq=md_seq, prev_seq=md_seq - 1, ts=ts, epoch=self.epoch,
                bids=list(bids.items()), asks=list(asks.items()), trades=ticks,
                candles=[CandleTick(b.interval, b.t, b.o, b.h, b.l, b.c, b.v, b.qv, b.n)
                         for b in bars],
                traces=order_traces,
            ))
        book = self.book
        best_bid, best_ask = book.best_bid, book.best_ask
        state = {  # event_seq first: the script reads it as the events entry's seq
            "event_seq": book.last_seq, "md_seq": md_seq, "trade_id": book.last_trade_id,
            "last_input_id": entries[-1][0], "inputs": self._inputs + len(entries),
            "last_price": book.last_price or 0,
            "best_bid": best_bid or 0, "best_bid_qty": book.bids[best_bid].total if best_bid else 0,
            "best_ask": best_ask or 0, "best_ask_qty": book.asks[best_ask].total if best_ask else 0,
        }
        args: list[bytes | str | int] = [
            previous_seq, entries[0][0], encode(events) if events else b"", md_blob,
            TRADE_HISTORY, CANDLE_HISTORY, self.lease.token if self.lease else 0, len(state),
            *(x for item in state.items() for x in item),
        ]
        for levels in (bids, asks):
            args.append(len(levels))
            for price, lots in levels.items():
                args += (price, lots)
        args.append(len(ticks))
        args += map(encode, ticks)  # kept as TradeTicks; REST formats the few it returns
        args.append(len(bars))
        for bar in bars:
            args += (_CANDLE_KEY_INDEX[bar.interval], bar.t, self._wire_bar(bar))
        args.append(encode_order_traces(order_traces))
        k = self.keys
        started = time.perf_counter()
        await self._commit_batch(
            [k.state, k.events, k.bids, k.asks, k.inbox, k.trades, k.md, k.lease,
             *(k.candles(interval) for interval in INTERVALS_MS)],
            args, entries[-1][0])
        self._observe(entries, events, len(ticks), time.perf_counter() - started)
        if batch_trace:
            batch_trace.committed(book.last_seq, md_seq if md_blob else 0)
        self.md_seq = md_seq
        self._last_input_id = entries[-1][0].decode()
        self._inputs += len(entries)
        self._since_snapshot += len(entries)
        if self.snapshot_every and self._since_snapshot >= self.snapshot_every and (
                self._snapshotting is None or self._snapshotting.done()):
            self._since_snapshot = 0
            self._snapshotting = asyncio.create_task(self.snapshot())

    def _observe(self, entries: Entries, events: list[Event], trades: int,
                 commit_s: float) -> None:
        """Metrics of a committed batch: per batch, plus each command's accept -> commit
        latency, counted by entry millisecond (few distinct values per batch)."""
        pair = self.pair.symbol
        ENGINE_COMMANDS.labels(pair).inc(len(entries))
        if trades:
            ENGINE_TRADES.labels(pair).inc(trades)
        ENGINE_BATCH_SIZE.labels(pair).observe(len(entries))
        ENGINE_COMMIT.labels(pair).observe(commit_s)
        now_ms = time.time() * 1000
        latency = ORDER_COMMIT_LATENCY.labels(pair)
        for accepted_ms, count in Counter(
                entry_id.partition(b"-")[0] for entry_id, _ in entries).items():
            latency.observe(max(0.0, now_ms - int(accepted_ms)) / 1000, count)
        for reason in [e.reason for e in events if type(e) is OrderRejected]:
            ORDER_REJECTS.labels(pair, reason, "engine").inc()

    async def _commit_batch(self, script_keys: list[str], args: list[bytes | str | int],
                            last_input: bytes) -> None:
        """Run the commit script, riding out a failover: a broken connection or a cluster
        between masters is retried with backoff for up to COMMIT_RETRY_S. Never twice:
        the script refuses a second run (STALE_WRITER), and a refusal that finds the
        slot at exactly this batch means an earlier attempt landed (its reply was lost)."""
        deadline = time.monotonic() + COMMIT_RETRY_S
        delay = 0.05
        while True:
            try:
                await self._commit(keys=script_keys, args=args)
                return
            except TRANSIENT as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: commit failed (%r); again in %.2f s", self.pair.symbol, exc,
                            delay)
            except ResponseError as exc:
                if "STALE_WRITER" in str(exc) and await self._is_committed(last_input):
                    return
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _is_committed(self, last_input: bytes) -> bool:
        """Does the pair's slot hold this engine's state after the batch ending at
        `last_input`? (Another writer would have been fenced off before this point.)"""
        seq, committed_input = await self.redis.hmget(self.keys.state, "event_seq",
                                                      "last_input_id")
        return (int(seq or 0), committed_input) == (self.book.last_seq, last_input)

    async def snapshot(self) -> None:
        """Write a snapshot of the state as of the last commit, without pausing matching:
        a forked child serialises its copy-on-write image while this process goes on."""
        snapshot_input = self._last_input_id
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: serialise, hand the bytes over, and vanish
            try:
                os.close(read_end)
                blob = capture(self.book, self.candles, last_input_id=snapshot_input,
                               md_seq=self.md_seq, epoch=self.epoch)
                with os.fdopen(write_end, "wb") as out:
                    out.write(blob)
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            blob = await asyncio.to_thread(_read_all, read_end)
        finally:
            await asyncio.to_thread(os.waitpid, pid, 0)
        try:
            await self._write_snapshot(keys=[self.keys.snapshot, self.keys.lease],
                                       args=[self.lease.token if self.lease else 0, blob])
            log.info("%s: snapshot at input %s (%d bytes)", self.pair.symbol,
                     snapshot_input, len(blob))
            # Inputs before the previous snapshot are needed by no recovery: one whole
            # generation is kept as a margin (and for the stranded-order search).
            if self._previous_snapshot_input:
                await self.redis.xtrim(self.keys.inbox, minid=self._previous_snapshot_input,
                                       approximate=True)
            self._previous_snapshot_input = snapshot_input
        except (RedisError, OSError) as exc:  # the next one will do; replay covers the gap
            log.warning("%s: snapshot not written: %s", self.pair.symbol, exc)

    def _wire_bar(self, bar: Bar) -> bytes:
        pair = self.pair
        return self._json.encode({
            "t": bar.t, "o": pair.format_price(bar.o), "h": pair.format_price(bar.h),
            "l": pair.format_price(bar.l), "c": pair.format_price(bar.c),
            "v": pair.format_qty(bar.v), "qv": pair.quote.format(bar.qv), "n": bar.n,
        })
