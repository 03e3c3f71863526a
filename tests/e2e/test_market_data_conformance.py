"""Public market data under a busy simulated market: every frame keeps the contract, and
what a client builds from the stream ends equal to what REST serves.

Real processes throughout: the project's simulator trades through the REST API, the
pair's engine matches, a gateway streams; conformance clients check every frame.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

from services.common.client import ExchangeClient
from services.common.redis_conn import AnyRedis
from services.local.up import LocalExchange
from services.simulator.market import MarketSimulator, SimulatorOptions
from tests.support.conformance import (
    MarketDataChecker,
    WireFormat,
    api_checksum,
    checked_client,
)
from tests.support.ledger import wait_until_settled
from tests.support.waiting import eventually

SYMBOL = "BTC-USD"
DEPTHS = (10, 50, 200)
INTERVALS = ("1m", "5m")
SIM_RATE = 250  # orders/s asked of the simulator; it reaches what the REST round trips allow
SIM_SECONDS = 6.0


def test_the_clients_checksum_is_the_documented_one() -> None:
    """The contract's worked example "67001.5:0.250:67002.0:0.400:67001.0:1.100":
    the client's own checksum is the documented one."""
    bids = [["67001.5", "0.250"], ["67001.0", "1.100"]]
    asks = [["67002.0", "0.400"]]
    assert api_checksum(bids, asks, depth=10) == 4109368868
    assert api_checksum(bids, asks, depth=1) == api_checksum(bids[:1], asks, depth=1)


def test_the_conformance_client_catches_each_broken_rule_and_recovers_on_a_snapshot() -> None:
    """The checker is what this module's verdict rests on: it must not accept everything."""
    wire = WireFormat(price_decimals=2, qty_decimals=4)
    checker = MarketDataChecker(SYMBOL, depth=2, trades=True, intervals=["1m"], wire=wire)
    bids, asks = [["100.00", "1.0000"], ["99.00", "2.0000"]], [["101.00", "1.0000"]]

    def book(kind: str, seq: int, bids: list, asks: list, checksum: int, **extra: object) -> None:
        checker.handle({"ch": "book", "symbol": SYMBOL, "depth": 2, "type": kind, "epoch": "e1",
                        "seq": seq, "bids": bids, "asks": asks, "checksum": checksum, **extra})

    book("snapshot", 5, bids, asks, api_checksum(bids, asks, 2))
    # A better bid enters the top 2 and 99.00 leaves it: both sent, the checksum right.
    top = [["100.50", "1.0000"], ["100.00", "1.0000"]]
    book("delta", 7, [["99.00", "0"], ["100.50", "1.0000"]], [], api_checksum(top, asks, 2),
         prev_seq=5)
    assert checker.violations == [] and checker.book.book() == (top, asks)
    book("delta", 8, [["100.50", "2.0000"]], [], 12345, prev_seq=7)  # wrong checksum
    trimmed = [["100.75", "1.0000"], ["100.50", "2.0000"]]  # 100.00 left, not removed:
    book("delta", 9, [["100.75", "1.0000"]], [], api_checksum(trimmed, asks, 2), prev_seq=8)
    book("delta", 11, [], [], 0, prev_seq=10)  # a gap: resubscribe
    assert checker.book.needs_resync
    book("delta", 12, [], [], 0, prev_seq=11)  # ignored until the fresh snapshot
    book("snapshot", 12, bids, asks, api_checksum(bids, asks, 2))
    assert checker.book.synced and checker.book.seq == 12
    checker.handle({"ch": "trades", "symbol": SYMBOL, "seq": 3, "data": [
        {"id": "5", "px": "1.00", "qty": "1.0000", "side": "buy", "ts": 1},
        {"id": "7", "px": "1.0", "qty": "1.0000", "side": "sell", "ts": 1}]})
    for t, closed in ((120_000, False), (180_000, False), (60_000, True)):
        checker.handle({"ch": "candles", "symbol": SYMBOL, "interval": "1m", "data": {
            "t": t, "o": "1", "h": "2", "l": "1", "c": "1", "n": 1, "closed": closed}})
    expected = ["checksum 12345", "beyond depth", "prev_seq 10", "trade id 7", "'1.0'",
                "bar 120000 never sent closed", "goes back"]
    assert len(checker.violations) == len(expected), checker.violations
    for violation, words in zip(checker.violations, expected, strict=True):
        assert words in violation, (words, violation)


async def cancel_orders(accounts: list[ExchangeClient]) -> None:
    for account in accounts:
        await account.call("DELETE", f"/api/v1/orders?symbol={SYMBOL}", signed=True)


async def funded_account(admin: ExchangeClient, asset: str, amount: str) -> ExchangeClient:
    credentials = await admin.create_account()
    await admin.deposit(credentials.account_id, asset, amount)
    return admin.as_account(credentials)


async def test_every_frame_of_a_busy_market_keeps_the_contract_and_ends_equal_to_rest(
        stack: LocalExchange, admin: ExchangeClient, redis: AnyRedis) -> None:
    market = next(m for m in await admin.markets() if m["symbol"] == SYMBOL)
    wire = WireFormat.of_market(market)
    books = [MarketDataChecker(SYMBOL, depth=depth, wire=wire) for depth in DEPTHS]
    tape = MarketDataChecker(SYMBOL, trades=True, intervals=INTERVALS, wire=wire)
    gateway = stack.ws_urls[0]
    async with AsyncExitStack() as clients:
        for checker in (*books, tape):
            await clients.enter_async_context(checked_client(gateway, checker))
        await eventually(lambda: all(c.book and c.book.synced for c in books),
                         "a snapshot at every depth")

        started = time.monotonic()
        # In this process, so that its accounts' orders can be cancelled afterwards: the
        # tests after this one find the pair's book as it was.
        simulator = MarketSimulator(admin, SimulatorOptions(
            rate=SIM_RATE, accounts=8, pairs=(SYMBOL,), seed=7, duration_s=SIM_SECONDS))
        clients.push_async_callback(cancel_orders, simulator.accounts)
        await simulator.run(asyncio.Event())
        await wait_until_settled(redis, [SYMBOL])
        busy_s = time.monotonic() - started
        trades, candles = tape.trades, tape.candles
        assert trades is not None and candles is not None
        seen = trades.trades
        figures = {f"book@{c.book.depth} deltas": c.book.deltas for c in books if c.book}
        figures |= {"trades": len(seen), "candle frames": sum(candles.frames.values()),
                    "seconds": round(busy_s, 1)}
        print(f"\nconformance over a busy market: {figures}")
        # Busy enough to prove something: many changes at every depth, trades and bars.
        assert all(n >= 100 for name, n in figures.items() if name.startswith("book@")), figures
        assert len(seen) >= 20 and all(candles.frames.values()), figures

        # A marker order at the best bid changes the top level, so every depth's stream
        # moves to the same seq as the REST book: the comparison is at one seq.
        top = await admin.book(SYMBOL, depth=1)
        assert top["bids"], "the simulated market left no bid"
        buyer = await funded_account(admin, "USD", "1000000")
        marker = await buyer.place_order(SYMBOL, "buy", top["bids"][0][0], market["min_qty"],
                                         post_only=True)
        try:
            async def marker_committed() -> bool:
                return (await admin.book(SYMBOL, depth=1))["seq"] > top["seq"]

            await eventually(marker_committed, "the marker order's commit")
            for checker in books:
                book = checker.book
                assert book is not None
                rest = await admin.book(SYMBOL, depth=book.depth)
                await eventually(lambda: book.seq is not None and book.seq >= rest["seq"],
                                 f"depth {book.depth} to reach the REST seq {rest['seq']}")
                assert book.seq == rest["seq"]
                assert book.epoch == rest["epoch"]
                assert book.book() == (rest["bids"], rest["asks"])
                assert book.checksum() == rest["checksum"]
        finally:
            await buyer.cancel_order(marker["order_id"])

        # Once quiet, a heartbeat, whose pos each checker compares with its own seq.
        beats = [c.heartbeats for c in books]

        def beat_again() -> bool:
            return all(c.heartbeats > n for c, n in zip(books, beats, strict=True))

        await eventually(beat_again, "a heartbeat on the quiet stream", 5)
        for checker in (*books, tape):
            assert checker.violations == []

        rest_trades = await admin.trades(SYMBOL, limit=min(1000, len(seen)))
        fields = ("id", "px", "qty", "side", "ts")
        assert [[t[f] for f in fields] for t in reversed(rest_trades)] == \
            [[t[f] for f in fields] for t in seen[-len(rest_trades):]]

        for interval, bar in candles.latest.items():
            [rest_bar] = await admin.call(
                "GET", f"/api/v1/markets/{SYMBOL}/candles?interval={interval}"
                       f"&start={bar['t']}&limit=1")
            assert {k: v for k, v in bar.items() if k != "closed"} == rest_bar

        # Deeper streams hold the shallower ones: each change of the top 10 is one of the
        # top 50 and the top 200 (from when all three were subscribed).
        seqs = [c.book.seqs for c in books if c.book]
        start = max(s[0] for s in seqs)
        shallow, middle, deep = ({q for q in s if q >= start} for s in seqs)
        assert shallow <= middle <= deep
