"""`helm test`: a trade placed through the API shows on the WebSocket, as a client sees it.

Two fresh accounts trade with each other: the maker's post-only sell rests inside the
spread (post-only, so it never takes anyone's order), the taker's IOC buy at the same
price can only meet it. The check passes once the taker's fill is on the REST API and
a gateway has sent that trade to a `trades` subscriber. Exit 0 on success, 1 with the
reason otherwise.

Environment: EXCHANGE_API_URL, EXCHANGE_WS_URL, EXCHANGE_ADMIN_TOKEN, EXCHANGE_TEST_PAIR
(empty: the first market), EXCHANGE_TEST_TIMEOUT_S (default 60).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from decimal import ROUND_CEILING, Decimal

from websockets.asyncio.client import ClientConnection, connect

from services.common.client import ApiError, ExchangeClient


def price_inside_spread(book: dict, last: str | None, tick: Decimal,
                        floor: Decimal) -> Decimal:
    """A price no resting order is at or beyond: between the best bid and the best ask."""
    bid = Decimal(book["bids"][0][0]) if book["bids"] else None
    ask = Decimal(book["asks"][0][0]) if book["asks"] else None
    if bid is not None and ask is not None:
        if ask - bid < 2 * tick:
            raise RuntimeError(f"no free price inside the spread {bid}..{ask}")
        return bid + tick
    if bid is not None:
        return bid + tick
    if ask is not None:
        if ask - tick < floor:
            raise RuntimeError(f"no free price below the best ask {ask}")
        return ask - tick
    return max(Decimal(last), floor) if last else floor


def ceil_to(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value(rounding=ROUND_CEILING) * step


async def next_frame(ws: ClientConnection, deadline: float) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))


async def check(api_url: str, ws_url: str, admin_token: str, pair: str,
                timeout_s: float) -> str:
    """Trade once on `pair` (first market if empty); returns what was seen."""
    deadline = time.monotonic() + timeout_s
    admin = ExchangeClient(api_url, admin_token=admin_token)
    try:
        markets = await admin.markets()
        market = next((m for m in markets if m["symbol"] == pair), None) if pair else markets[0]
        if market is None:
            raise RuntimeError(f"no market {pair}")
        symbol = market["symbol"]
        tick, lot = Decimal(market["tick_size"]), Decimal(market["lot_size"])
        min_qty, min_notional = Decimal(market["min_qty"]), Decimal(market["min_notional"])
        trades = await admin.trades(symbol, limit=1)
        price = price_inside_spread(await admin.book(symbol, depth=1),
                                    trades[0]["px"] if trades else None, tick,
                                    ceil_to(min_notional / min_qty, tick))
        qty = max(min_qty, ceil_to(min_notional / price, lot))
        px = f"{price:.{market['price_decimals']}f}"
        amount = f"{qty:.{market['qty_decimals']}f}"

        maker_creds, taker_creds = await admin.create_account(), await admin.create_account()
        await admin.deposit(maker_creds.account_id, market["base"], amount)
        # Twice the notional: room for the taker fee whatever the pair charges.
        await admin.deposit(taker_creds.account_id, market["quote"], str(2 * price * qty))
        maker, taker = admin.as_account(maker_creds), admin.as_account(taker_creds)

        async with connect(ws_url) as ws:
            await ws.send(json.dumps({"op": "subscribe", "id": 1,
                                      "args": [{"ch": "trades", "symbol": symbol}]}))
            while (reply := await next_frame(ws, deadline)).get("op") != "subscribe":
                pass
            if not reply.get("ok"):
                raise RuntimeError(f"subscribe refused: {reply}")
            sell = await maker.place_order(symbol, "sell", px, amount, post_only=True)
            try:
                await taker.place_order(symbol, "buy", px, amount, tif="IOC")
                fill_id = await taker_fill(taker, symbol, deadline)
                while True:
                    frame = await next_frame(ws, deadline)
                    if frame.get("ch") == "trades" and any(
                            t["id"] == fill_id for t in frame["data"]):
                        return f"trade {fill_id} on {symbol}: {amount} at {px} seen on {ws_url}"
            finally:
                await cancel_quietly(maker, sell["order_id"])
    finally:
        await admin.aclose()


async def taker_fill(taker: ExchangeClient, symbol: str, deadline: float) -> str:
    """The trade id of the taker's fill, once settlement recorded it."""
    while time.monotonic() < deadline:
        fills = await taker.call("GET", f"/api/v1/fills?symbol={symbol}", signed=True)
        if fills:
            return str(fills[0]["trade_id"])
        await asyncio.sleep(0.2)
    raise TimeoutError("the buy was not filled in time")


async def cancel_quietly(maker: ExchangeClient, order_id: str) -> None:
    """Leave nothing resting: the sell is gone already if it traded."""
    try:
        await maker.cancel_order(order_id)
    except ApiError:
        pass


def main() -> int:
    env = os.environ
    try:
        seen = asyncio.run(check(env["EXCHANGE_API_URL"], env["EXCHANGE_WS_URL"],
                                 env["EXCHANGE_ADMIN_TOKEN"], env.get("EXCHANGE_TEST_PAIR", ""),
                                 float(env.get("EXCHANGE_TEST_TIMEOUT_S", "60"))))
    except Exception as exc:  # the test's verdict: any failure, with its reason
        print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"OK: {seen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
