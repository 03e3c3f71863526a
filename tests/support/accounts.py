"""Accounts for tests, made through the operator API as an operator would."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from services.common.client import ExchangeClient
from tests.support.watcher import BookWatcher


async def funded(admin: ExchangeClient, **deposits: str) -> ExchangeClient:
    """A new account holding `deposits` (asset=amount), as a client of its own."""
    credentials = await admin.create_account()
    for asset, amount in deposits.items():
        await admin.deposit(credentials.account_id, asset, amount)
    return admin.as_account(credentials)


@dataclass(frozen=True)
class Cross:
    seller: ExchangeClient
    buyer: ExchangeClient
    price: str
    taker: dict[str, object]  # the buyer's order, as the API acknowledged it


async def trade_inside_the_spread(admin: ExchangeClient, watcher: BookWatcher,
                                  qty: str = "0.100") -> Cross:
    """Two new accounts trade `qty` of the watcher's ETH-USD pair with each other at a
    price inside the spread (orders other tests left rest outside it); returns once the
    watcher has seen the trade."""
    symbol = watcher.symbol
    seller = await funded(admin, ETH="1")
    buyer = await funded(admin, USD="10000")
    book = await admin.book(symbol, depth=1)
    price = Decimal(book["asks"][0][0]) - Decimal("0.01") if book["asks"] else Decimal(3000)
    px = f"{price:.2f}"
    await seller.place_order(symbol, "sell", px, qty)
    await watcher.wait_for(lambda w: w.asks.get(px) == qty, what="the resting ask")
    taker = await buyer.place_order(symbol, "buy", px, qty)
    await watcher.wait_for(lambda w: any(t["px"] == px for t in w.trades), what="the trade")
    return Cross(seller, buyer, px, taker)
