"""Private channels end to end: two traders on one gateway each see only their own."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

from websockets.asyncio.client import connect

from services.common.client import Credentials, ExchangeClient
from services.common.signing import sign
from services.local.up import LocalExchange


class PrivateSession:
    def __init__(self, url: str, credentials: Credentials) -> None:
        self.url, self.credentials = url, credentials
        self.frames: list[dict] = []

    async def __aenter__(self) -> PrivateSession:
        self.ws = await connect(self.url)
        ts = int(time.time() * 1000)
        await self.ws.send(json.dumps({
            "op": "login", "id": 1, "api_key": self.credentials.api_key, "timestamp": ts,
            "signature": sign(self.credentials.api_secret, ts, "GET", "/ws")}))
        await self.wait_for(lambda f: f.get("op") == "login", "the login reply")
        assert self.frames[-1]["ok"], self.frames[-1]
        await self.ws.send(json.dumps({"op": "subscribe", "id": 2, "args": [
            {"ch": "orders"}, {"ch": "fills"}, {"ch": "balances"}]}))
        await self.wait_for(lambda f: f.get("ch") == "balances", "the balances snapshot")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def wait_for(self, predicate, what: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        for frame in self.frames:
            if predicate(frame):
                return frame
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {what}; got {self.frames[-5:]}"
            try:
                frame = json.loads(await asyncio.wait_for(self.ws.recv(), remaining))
            except TimeoutError:
                continue
            self.frames.append(frame)
            if predicate(frame):
                return frame


async def test_two_traders_on_one_gateway_each_see_only_their_own_orders_and_fills(
        stack: LocalExchange, admin: ExchangeClient) -> None:
    seller, buyer = await admin.create_account(), await admin.create_account()
    await admin.deposit(seller.account_id, "BTC", "1")
    await admin.deposit(buyer.account_id, "USD", "100000")
    book = await admin.book("BTC-USD", depth=1)
    price = Decimal(book["asks"][0][0]) - Decimal("0.01") if book["asks"] else Decimal(60000)
    px = f"{price:.2f}"
    gateway = stack.ws_urls[0]
    async with PrivateSession(gateway, seller) as sells, PrivateSession(gateway, buyer) as buys:
        resting = await admin.as_account(seller).place_order("BTC-USD", "sell", px, "0.0100")
        taking = await admin.as_account(buyer).place_order("BTC-USD", "buy", px, "0.0100",
                                                           tif="IOC")
        sold = await sells.wait_for(lambda f: f.get("ch") == "fills", "the seller's fill")
        bought = await buys.wait_for(lambda f: f.get("ch") == "fills", "the buyer's fill")
        assert (sold["data"]["order_id"], sold["data"]["liquidity"]) == (
            resting["order_id"], "maker")
        assert (bought["data"]["order_id"], bought["data"]["liquidity"]) == (
            taking["order_id"], "taker")
        await buys.wait_for(lambda f: f.get("ch") == "orders"
                            and f["data"]["status"] == "filled", "the filled order")
        await buys.wait_for(lambda f: f.get("ch") == "balances" and any(
            b["asset"] == "BTC" and b["available"] == "0.01000000" for b in f["data"]),
            "the bought BTC")
        for session, own, other in ((sells, resting, taking), (buys, taking, resting)):
            order_ids = {f["data"]["order_id"] for f in session.frames
                         if f.get("ch") in ("orders", "fills")}
            assert own["order_id"] in order_ids and other["order_id"] not in order_ids
            seqs = [f["seq"] for f in session.frames if "seq" in f and f.get("ch") != "book"]
            assert seqs == sorted(seqs)
