"""Settlement killed with SIGKILL mid-stream and restarted settles every fill exactly once
(DESIGN §2 and §4, issue 4 "Must show": idempotency and replay).

A fully deterministic scenario: a maker ladders resting bids and asks in an empty stretch
of one pair's book, a taker sweeps them with IOC and market orders sent one at a time, and
the settlement process is killed (SIGKILL) while the fills stream in, trading goes on
without it, and it is started again. Every fill is known in advance (price-time priority
over the maker's own ladder), so the balances of maker, taker and fee account are worked
out by hand and must match to the unit: a fill applied twice or lost shows at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass
from decimal import Decimal

from services.common import keys
from services.common.client import ExchangeClient
from services.common.pairs import Markets
from services.local.up import Child, LocalExchange
from tests.support.ledger import engine_caught_up, ledger_totals, wait_until_settled
from tests.support.waiting import eventually

SEED = 424242
LEVELS = 6  # price levels per side of the maker's ladder
PER_LEVEL = 6  # maker orders per level
TAKER_ORDERS = 40
PAUSE_AFTER = 2  # taker orders acknowledged before settlement stalls (SIGSTOP)
KILL_AFTER = 16  # ... before it resumes and is killed (SIGKILL) midway through its backlog
RESTART_AFTER = 28  # ... before it is started again
# symbol -> (default mid, size unit in lots, deposits {asset: amount})
PAIRS = {
    "BTC-USD": (Decimal("60000"), 10, {"USD": "2000000", "BTC": "40"}),
    "ETH-USD": (Decimal("3000"), 10, {"USD": "2000000", "ETH": "800"}),
    "ETH-BTC": (Decimal("0.05"), 10, {"BTC": "40", "ETH": "800"}),
}
SYMBOLS = list(PAIRS)


@dataclass
class Resting:
    """A maker order of the simulation: price-time priority over the ladder."""

    order_id: str
    side: str
    ticks: int
    lots: int
    filled: int = 0


@dataclass(frozen=True)
class Fill:
    ticks: int
    lots: int
    taker_side: str
    maker: Resting


@dataclass(frozen=True)
class Ladder:
    symbol: str
    center: int  # ticks
    step: int  # ticks between levels


async def find_ladder(admin: ExchangeClient, markets: Markets) -> Ladder:
    """A pair with an empty stretch of book, within its price band, wide enough for the
    ladder on both sides: the maker's orders are then the best levels and the taker's
    sweeps can meet nothing else, whatever other tests left resting."""
    tried = []
    for symbol, (default_mid, _, _) in PAIRS.items():
        pair = markets.pairs[symbol]
        book = await admin.book(symbol, depth=1)
        last = (await admin.call("GET", f"/api/v1/markets/{symbol}/ticker"))["last"]
        floor = int(Decimal(book["bids"][0][0]) / pair.tick_size) if book["bids"] else 0
        ceiling = (int(Decimal(book["asks"][0][0]) / pair.tick_size) if book["asks"]
                   else 10**15)
        reference = int((Decimal(last) if last else default_mid) / pair.tick_size)
        floor = max(floor, reference * 6 // 10)  # stay well inside the 50% band
        ceiling = min(ceiling, reference * 14 // 10)
        room = ceiling - floor - 2  # prices strictly between floor and ceiling
        step = min(max(1, reference // 5000), room // (2 * LEVELS + 2))  # ~0.02% apart
        tried.append(f"{symbol}: free ({floor}, {ceiling}) ticks")
        if step < 1:
            continue
        half = step * (LEVELS + 1)
        center = min(max(reference, floor + 1 + half), ceiling - 1 - half)
        return Ladder(symbol, center, step)
    raise AssertionError(f"no pair has an empty stretch of book for the ladder: {tried}")


class Scenario:
    """The deterministic market: the maker's ladder and what each taker order fills."""

    def __init__(self) -> None:
        self.asks: list[Resting] = []  # best first, then time
        self.bids: list[Resting] = []
        self.fills: list[Fill] = []

    def rest(self, order: Resting) -> None:
        book = self.asks if order.side == "sell" else self.bids
        book.append(order)
        if order.side == "sell":
            book.sort(key=lambda o: o.ticks)  # stable: time priority kept within a level
        else:
            book.sort(key=lambda o: -o.ticks)

    def take(self, side: str, lots: int, limit: int | None) -> int:
        """Match a taker order (limit None = market); returns the lots filled."""
        book = self.asks if side == "buy" else self.bids
        left = lots
        for maker in book:
            if left == 0:
                break
            if maker.lots == maker.filled:
                continue
            if limit is not None and (maker.ticks > limit if side == "buy"
                                      else maker.ticks < limit):
                break
            qty = min(left, maker.lots - maker.filled)
            maker.filled += qty
            left -= qty
            self.fills.append(Fill(maker.ticks, qty, side, maker))
        return lots - left


def units(amount: Decimal, unit: Decimal) -> int:
    count = amount / unit
    assert count == count.to_integral_value(), (amount, unit)
    return int(count)


async def test_settlement_killed_mid_stream_settles_every_fill_exactly_once(
        admin: ExchangeClient, redis, stack: LocalExchange, markets: Markets) -> None:
    started = time.monotonic()
    settlement: Child = next(c for c in stack.children if c.name == "settlement")
    assert settlement.process is not None and settlement.process.poll() is None
    await wait_until_settled(redis, SYMBOLS, timeout=60)  # earlier tests' work is done

    ladder = await find_ladder(admin, markets)
    symbol = ladder.symbol
    pair = markets.pairs[symbol]
    _, size_unit, deposits = PAIRS[symbol]
    base, quote = pair.base, pair.quote
    fees = {m["symbol"]: m for m in await admin.markets()}[symbol]
    maker_bps, taker_bps = int(fees["maker_fee_bps"]), int(fees["taker_fee_bps"])

    def px(ticks: int) -> str:
        return f"{pair.tick_size * ticks:.{pair.price_decimals}f}"

    def qty(lots: int) -> str:
        return f"{pair.lot_size * lots:.{pair.qty_decimals}f}"

    clients = {}
    for role in ("maker", "taker"):
        credentials = await admin.create_account()
        for asset, amount in deposits.items():
            await admin.deposit(credentials.account_id, asset, amount)
        clients[role] = admin.as_account(credentials)
    maker, taker = clients["maker"], clients["taker"]
    fee_account = keys.AccountKeys(keys.FEE_ACCOUNT).balances
    fees_before = int(await redis.hget(fee_account, f"avail:{quote.symbol}") or 0)
    trades_before = await admin.trades(symbol, limit=1)
    first_trade_id = int(trades_before[0]["id"]) + 1 if trades_before else 1

    rnd = random.Random(SEED)
    scenario = Scenario()
    counter = iter(range(10**6))
    for level in range(1, LEVELS + 1):
        for _ in range(PER_LEVEL):
            for side, ticks in (("sell", ladder.center + level * ladder.step),
                                ("buy", ladder.center - level * ladder.step)):
                lots = size_unit * rnd.randint(3, 12)
                order = await maker.place_order(symbol, side, px(ticks), qty(lots),
                                                client_order_id=f"m{next(counter)}")
                scenario.rest(Resting(order["order_id"], side, ticks, lots))
    top_ask = ladder.center + LEVELS * ladder.step
    low_bid = ladder.center - LEVELS * ladder.step
    ask_lots = sum(o.lots for o in scenario.asks)
    bid_lots = sum(o.lots for o in scenario.bids)

    taker_orders: list[tuple[dict, int]] = []  # (order, lots it fills)
    swept = {"buy": 0, "sell": 0}
    pair_keys = keys.PairKeys(symbol)
    backlog_at_kill = left_at_kill = unacked_at_kill = applied_unacked = 0
    backlog_at_restart = 0
    paused = False
    try:
        for n in range(TAKER_ORDERS):
            side = "buy" if n % 2 == 0 else "sell"
            lots = size_unit * rnd.randint(2, 14)
            # Never sweep past the ladder: beyond it lies the rest of the book.
            room = (ask_lots if side == "buy" else bid_lots) * 85 // 100 - swept[side]
            lots = min(lots, room - room % size_unit)
            if lots <= 0:
                continue
            market = n >= 4 and n % 5 == 0
            if market:
                # A market order's band is judged from the last trade: let the engine
                # commit the fills before it first, so the band is the one simulated.
                last = px(scenario.fills[-1].ticks)
                await eventually(
                    lambda: _last_price_is(admin, symbol, last), f"last trade {last}")
                order = await taker.call("POST", "/api/v1/orders", {
                    "symbol": symbol, "side": side, "type": "market", "qty": qty(lots),
                    "client_order_id": f"t{n}"}, signed=True)
                limit = None
            else:
                limit = top_ask if side == "buy" else low_bid
                order = await taker.place_order(symbol, side, px(limit), qty(lots),
                                                tif="IOC", client_order_id=f"t{n}")
            filled = scenario.take(side, lots, limit)
            assert filled == lots  # the ladder always has room: a full fill
            swept[side] += lots
            taker_orders.append((order, lots))
            if len(taker_orders) == PAUSE_AFTER:
                os.kill(settlement.process.pid, signal.SIGSTOP)  # a stalled worker
                paused = True
            if len(taker_orders) == KILL_AFTER:
                # Mid-stream: the worker resumes with a backlog of committed fills and is
                # killed as soon as it has settled part of it.
                await eventually(lambda: engine_caught_up(redis, pair_keys),
                                 "the engine to commit every order")
                backlog_at_kill = await _settlement_backlog(redis, pair_keys)
                assert backlog_at_kill > 1
                os.kill(settlement.process.pid, signal.SIGCONT)
                paused = False
                deadline = time.monotonic() + 10
                # Two entries done: the worker is past its first read and into the batch.
                while (await _settlement_backlog(redis, pair_keys) > backlog_at_kill - 2
                       and time.monotonic() < deadline):
                    pass  # no sleep: the worker gets through its backlog in milliseconds
                settlement.process.kill()
                await asyncio.to_thread(settlement.process.wait, 10)
                assert settlement.process.returncode == -signal.SIGKILL
                left_at_kill = await _settlement_backlog(redis, pair_keys)
                unacked_at_kill = await _settlement_unacked(redis, pair_keys)
                applied_unacked = await _applied_but_unacked(
                    redis, pair_keys, [*(c.credentials.account_id for c in clients.values()),
                                     keys.FEE_ACCOUNT])
            if len(taker_orders) == RESTART_AFTER:
                # Trading went on without settlement: the engine committed fills that
                # nobody applied yet. Now the worker comes back and replays.
                await eventually(lambda: engine_caught_up(redis, pair_keys),
                                 "the engine to commit every order")
                backlog_at_restart = await _settlement_backlog(redis, pair_keys)
                assert backlog_at_restart > 0, "the crash left nothing to settle"
                stack._spawn(settlement)
    finally:  # later tests need settlement running
        if paused and settlement.process.poll() is None:
            os.kill(settlement.process.pid, signal.SIGCONT)
        if settlement.process is None or settlement.process.poll() is not None:
            stack._spawn(settlement)
    assert len(taker_orders) >= RESTART_AFTER + 5
    await wait_until_settled(redis, SYMBOLS, timeout=60)

    # The public tape shows exactly the simulated fills, in order: nobody else traded.
    tape = (await admin.trades(symbol, limit=1000))[::-1]
    tape = [t for t in tape if int(t["id"]) >= first_trade_id]
    assert [(Decimal(t["px"]), Decimal(t["qty"]), t["side"]) for t in tape] == [
        (pair.tick_size * f.ticks, pair.lot_size * f.lots, f.taker_side)
        for f in scenario.fills]
    assert len(scenario.fills) >= 60

    # Every order shows exactly what it filled: filled once, never twice.
    for order, lots in taker_orders:
        got = await taker.order(order["order_id"])
        assert (got["status"], Decimal(got["filled_qty"])) == (
            "filled", pair.lot_size * lots), got
    for resting in scenario.asks + scenario.bids:
        got = await maker.order(resting.order_id)
        status = ("filled" if resting.filled == resting.lots
                  else "partially_filled" if resting.filled else "new")
        assert (got["status"], Decimal(got["filled_qty"])) == (
            status, pair.lot_size * resting.filled), got

    # The maker cancels what is left; then the books close to the unit.
    await maker.call("DELETE", f"/api/v1/orders?symbol={symbol}", signed=True)
    await wait_until_settled(redis, SYMBOLS, timeout=60)

    expected = {
        role: {asset: units(Decimal(amount), markets.assets[asset].unit)
               for asset, amount in deposits.items()}
        for role in ("maker", "taker")
    }
    fee_total = 0
    for fill in scenario.fills:
        notional = units(pair.tick_size * fill.ticks * pair.lot_size * fill.lots, quote.unit)
        base_units = units(pair.lot_size * fill.lots, base.unit)
        maker_fee = _fee(notional, maker_bps)
        taker_fee = _fee(notional, taker_bps)
        fee_total += maker_fee + taker_fee
        buyer, seller = (("taker", "maker") if fill.taker_side == "buy"
                         else ("maker", "taker"))
        buyer_fee, seller_fee = ((taker_fee, maker_fee) if fill.taker_side == "buy"
                                 else (maker_fee, taker_fee))
        expected[buyer][base.symbol] += base_units
        expected[buyer][quote.symbol] -= notional + buyer_fee
        expected[seller][base.symbol] -= base_units
        expected[seller][quote.symbol] += notional - seller_fee
    for role, client in clients.items():
        balances = await client.balances()
        for asset, amount in expected[role].items():
            unit = markets.assets[asset].unit
            assert balances[asset] == {
                "asset": asset, "available": f"{unit * amount:.{-unit.as_tuple().exponent}f}",
                "held": f"{Decimal(0):.{-unit.as_tuple().exponent}f}",
            }, (role, asset)
    fees_after = int(await redis.hget(fee_account, f"avail:{quote.symbol}") or 0)
    assert fees_after - fees_before == fee_total
    assert await redis.scard(keys.AccountKeys(maker.credentials.account_id).open_orders) == 0

    deposited, holdings, negatives = await ledger_totals(redis)
    assert negatives == []
    assert holdings == deposited
    print(f"\n{symbol}: {len(scenario.fills)} fills, {len(taker_orders)} taker orders, "
          f"settlement killed with {left_at_kill} of {backlog_at_kill} entries left "
          f"({unacked_at_kill} read but unacknowledged, {applied_unacked} of them already "
          f"applied to some account), "
          f"{backlog_at_restart} entries to settle at restart, "
          f"{time.monotonic() - started:.1f} s")


def _fee(notional: int, bps: int) -> int:
    """The documented fee of one fill: bps of its notional, rounded toward zero."""
    fee = notional * abs(bps) // 10_000
    return fee if bps >= 0 else -fee


async def _last_price_is(admin: ExchangeClient, symbol: str, price: str) -> bool:
    return (await admin.call("GET", f"/api/v1/markets/{symbol}/ticker"))["last"] == price


async def _settlement_backlog(redis, pair_keys: keys.PairKeys) -> int:
    """Event entries settlement has not acknowledged: read-but-unacked plus unread."""
    groups = {g["name"].decode(): g for g in await redis.xinfo_groups(pair_keys.events)}
    info = groups[keys.SETTLEMENT_GROUP]
    return int(info["pending"]) + int(info["lag"] or 0)


async def _settlement_unacked(redis, pair_keys: keys.PairKeys) -> int:
    """Event entries settlement read but never acknowledged."""
    groups = {g["name"].decode(): g for g in await redis.xinfo_groups(pair_keys.events)}
    return int(groups[keys.SETTLEMENT_GROUP]["pending"])


async def _applied_but_unacked(redis, pair_keys: keys.PairKeys, account_ids: list[str]) -> int:
    """Unacknowledged entries an account already applied (its high-water mark is past
    them): the replay after the restart must skip them for that account."""
    marks = [int(await redis.hget(keys.AccountKeys(a).applied, pair_keys.symbol) or 0)
             for a in account_ids]
    pending = await redis.xpending_range(pair_keys.events, keys.SETTLEMENT_GROUP,
                                         min="-", max="+", count=10_000)
    count = 0
    for entry in pending:
        (_, fields), = await redis.xrange(pair_keys.events, entry["message_id"],
                                          entry["message_id"])
        count += int(fields[b"seq"]) <= max(marks)
    return count
