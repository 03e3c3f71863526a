"""The simulated market. It trades through the public signed API and watches the
public WebSocket like any client: takers hit the touch they see, makers put back the
liquidity they see taken, and the mid follows the book they watch (a random walk of
their own while they see none)."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from services.common.client import ApiError, Credentials, ExchangeClient
from services.simulator.view import PairView
from services.simulator.watch import MarketWatch

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
    ws_url: str | None = None  # the public WebSocket to watch; None = trade blind


class MarketSimulator:
    def __init__(self, client: ExchangeClient, options: SimulatorOptions) -> None:
        self.client = client
        self.options = options
        self.random = random.Random(options.seed)
        self.accounts: list[ExchangeClient] = []
        self.pairs: list[PairState] = []
        self.views: dict[str, PairView] = {}
        self.placed = 0
        self.cancels = 0
        self.requotes = 0
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

    def stats(self) -> dict[str, int]:
        """What the run did, and what it saw of the market on the WebSocket."""
        return {"placed": self.placed, "cancels": self.cancels, "requotes": self.requotes,
                "errors": self.errors,
                "trades_seen": sum(v.trades_seen for v in self.views.values()),
                "book_updates": sum(v.book_updates for v in self.views.values())}

    async def run(self, stop: asyncio.Event) -> None:
        """Act at the configured rate until `stop` (or the duration) ends it."""
        await self.setup()
        watch: asyncio.Task[None] | None = None
        if self.options.ws_url:
            self.views = {p.symbol: PairView(p.symbol, p.tick) for p in self.pairs}
            watch = asyncio.create_task(MarketWatch(self.options.ws_url, self.views).run())
        try:
            await self._act(stop)
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)

    async def _act(self, stop: asyncio.Event) -> None:
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
        view = self.views.get(pair.symbol)
        account_index = rnd.randrange(len(self.accounts))
        account = self.accounts[account_index]
        bid, ask = (view.best_bid(), view.best_ask()) if view else (None, None)
        if bid is not None and ask is not None and bid < ask:
            pair.mid_ticks = (bid + ask) // 2  # the market's mid, as watched
        # A price step of about 0.5 bp of the mid: books stay dense around the touch.
        step = max(1, pair.mid_ticks // 20000)
        pair.mid_ticks = max(10 * step, pair.mid_ticks + round(rnd.gauss(0, step / 2)))
        roll = rnd.random()
        if roll < 0.25 and pair.open_orders:
            owner, order_id = pair.open_orders.popleft()
            try:
                await self.accounts[owner].cancel_order(order_id)
                self.cancels += 1
            except ApiError:
                pass  # it filled first: normal in a live market
            return
        side = rnd.choice(("buy", "sell"))
        if roll < 0.40:  # a taker: crosses the touch it sees (or where it guesses it is)
            tif = "IOC"
            if side == "buy":
                price_ticks = ask + step if ask is not None else pair.mid_ticks + 2 * step
            else:
                price_ticks = bid - step if bid is not None else pair.mid_ticks - 2 * step
        elif view is not None and view.taken:
            # A maker putting back liquidity it saw taken, a little behind the trade,
            # never through the other side's touch (that would make it a taker).
            side, traded = view.taken.popleft()
            tif = "GTC"
            behind = rnd.randint(0, 2) * step
            if side == "buy":
                price_ticks = traded - behind
                if ask is not None:
                    price_ticks = min(price_ticks, ask - step)
            else:
                price_ticks = traded + behind
                if bid is not None:
                    price_ticks = max(price_ticks, bid + step)
            self.requotes += 1
        else:  # a maker quoting behind the mid
            tif = "GTC"
            price_ticks = pair.mid_ticks + rnd.randint(1, 20) * step * (
                -1 if side == "buy" else 1)
        price = max(1, price_ticks) * pair.tick
        lots_for_notional = math.ceil(pair.min_notional / (price * pair.lot))
        min_lots = max(math.ceil(pair.min_qty / pair.lot), lots_for_notional)
        qty = pair.lot * int(min_lots) * rnd.randint(1, 20)
        order = await account.place_order(pair.symbol, side, str(price), str(qty), tif=tif)
        self.placed += 1
        if tif == "GTC":
            pair.open_orders.append((account_index, order["order_id"]))
