"""The simulated market. It trades through the public signed API like any client."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from services.common.client import ApiError, Credentials, ExchangeClient

log = logging.getLogger("exchange.simulator")

# Where each pair's mid starts when its book is empty.
DEFAULT_MIDS = {"BTC-USD": Decimal("60000"), "ETH-USD": Decimal("3000"),
                "ETH-BTC": Decimal("0.05")}
# Funds deposited into each simulated account, per asset: plenty for a long run.
DEPOSIT = {"USD": "100000000", "BTC": "10000", "ETH": "100000"}


@dataclass
class PairState:
    symbol: str
    tick: Decimal
    lot: Decimal
    min_qty: Decimal
    min_notional: Decimal
    mid_ticks: int
    open_orders: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=400))


@dataclass(frozen=True)
class SimulatorOptions:
    rate: float = 20.0  # orders per second, all pairs together
    accounts: int = 4
    pairs: tuple[str, ...] = ()  # empty = every pair
    seed: int | None = None
    duration_s: float | None = None  # None = until stopped


class MarketSimulator:
    def __init__(self, client: ExchangeClient, options: SimulatorOptions) -> None:
        self.client = client
        self.options = options
        self.random = random.Random(options.seed)
        self.accounts: list[ExchangeClient] = []
        self.pairs: list[PairState] = []
        self.placed = 0
        self.errors = 0

    async def setup(self) -> None:
        markets = await self.client.markets()
        wanted = set(self.options.pairs)
        for market in markets:
            if wanted and market["symbol"] not in wanted:
                continue
            tick = Decimal(market["tick_size"])
            book = await self.client.book(market["symbol"], depth=1)
            if book["bids"] and book["asks"]:
                mid = (Decimal(book["bids"][0][0]) + Decimal(book["asks"][0][0])) / 2
            else:
                mid = DEFAULT_MIDS.get(market["symbol"], Decimal(1000) * tick)
            self.pairs.append(PairState(
                market["symbol"], tick, Decimal(market["lot_size"]), Decimal(market["min_qty"]),
                Decimal(market["min_notional"]), int(mid / tick)))
        assets = {m["base"] for m in markets} | {m["quote"] for m in markets}
        for _ in range(self.options.accounts):
            credentials: Credentials = await self.client.create_account()
            for asset in sorted(assets):
                await self.client.deposit(credentials.account_id, asset,
                                          DEPOSIT.get(asset, "1000000"))
            self.accounts.append(self.client.as_account(credentials))

    async def run(self, stop: asyncio.Event) -> None:
        """Act at the configured rate until `stop` (or the duration) ends it."""
        await self.setup()
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.options.rate
        started = next_at = loop.time()
        while not stop.is_set():
            if self.options.duration_s and loop.time() - started >= self.options.duration_s:
                break
            try:
                await self.step()
            except ApiError as exc:
                self.errors += 1
                log.debug("simulator order refused: %s", exc)
            next_at += interval
            delay = next_at - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
            else:
                next_at = loop.time()  # behind schedule: don't burst to catch up

    async def step(self) -> None:
        rnd = self.random
        pair = rnd.choice(self.pairs)
        account_index = rnd.randrange(len(self.accounts))
        account = self.accounts[account_index]
        # A price step of about 0.5 bp of the mid: books stay dense around the touch.
        step = max(1, pair.mid_ticks // 20000)
        pair.mid_ticks = max(10 * step, pair.mid_ticks + round(rnd.gauss(0, step / 2)))
        roll = rnd.random()
        if roll < 0.25 and pair.open_orders:
            owner, order_id = pair.open_orders.popleft()
            try:
                await self.accounts[owner].cancel_order(order_id)
            except ApiError:
                pass  # it filled first: normal in a live market
            return
        side = rnd.choice(("buy", "sell"))
        if roll < 0.40:  # a taker crossing the spread
            offset = 2 * step if side == "buy" else -2 * step
            tif = "IOC"
        else:  # a maker quoting behind the touch
            offset = rnd.randint(1, 20) * step * (-1 if side == "buy" else 1)
            tif = "GTC"
        price = (pair.mid_ticks + offset) * pair.tick
        lots_for_notional = math.ceil(pair.min_notional / (price * pair.lot))
        min_lots = max(math.ceil(pair.min_qty / pair.lot), lots_for_notional)
        qty = pair.lot * int(min_lots) * rnd.randint(1, 20)
        order = await account.place_order(pair.symbol, side, str(price), str(qty), tif=tif)
        self.placed += 1
        if tif == "GTC":
            pair.open_orders.append((account_index, order["order_id"]))
