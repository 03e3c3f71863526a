"""Placing, reading and cancelling orders: hold on the account's slot, then enqueue.

An order is acknowledged only after its funds are held (stage R1) and its command is
in the pair's input stream; from there the engine matches it and settlement moves
the money, updating the order record this module reads.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import resources

from services.common import keys
from services.common.errors import ExchangeError
from services.common.messages import CancelOrder, PlaceOrder, encode
from services.common.pairs import Markets, Pair
from services.common.redis_conn import AnyRedis
from services.common.tracing import current_traceparent

_HOLD_LUA = resources.files("services.api").joinpath("hold.lua").read_text()
TERMINAL = frozenset({"filled", "cancelled", "rejected"})
# Amounts compared in Lua must stay exact as doubles.
MAX_EXACT_UNITS = 2**53


def new_order_id() -> str:
    """Unique without coordination: time-ordered prefix, 40 random bits."""
    return f"{int(time.time() * 1000):x}{secrets.token_hex(5)}"


class OrderService:
    def __init__(self, redis: AnyRedis, markets: Markets) -> None:
        self.redis = redis
        self.markets = markets
        self._hold = redis.register_script(_HOLD_LUA)

    async def place(self, account_id: str, symbol: str, side: str, order_type: str,
                    price: str | None, qty: str | None, tif: str,
                    client_order_id: str | None) -> tuple[dict[str, object], bool]:
        """Validate, hold, enqueue. Returns (order, created); created is False when a
        repeated client_order_id returned the first order instead."""
        pair = self.markets.pair(symbol)
        if order_type != "limit":
            raise ExchangeError("UNSUPPORTED_ORDER_TYPE", "only limit orders are supported yet")
        if tif not in ("GTC", "IOC"):
            raise ExchangeError("UNSUPPORTED_TIME_IN_FORCE", "tif must be GTC or IOC")
        if price is None or qty is None:
            raise ExchangeError("INVALID_REQUEST", "a limit order needs price and qty")
        ticks = pair.price_to_ticks(price)
        lots = pair.qty_to_lots(qty)
        last = await self.redis.hget(keys.PairKeys(pair.symbol).state, "last_price")
        pair.check_price_band(ticks, int(last) if last and int(last) else None)
        notional = pair.notional_units(ticks, lots)
        if notional < pair.min_notional_units:
            raise ExchangeError("MIN_NOTIONAL", f"price * qty must be at least {pair.min_notional}")
        hold_asset, hold = (pair.quote, notional) if side == "buy" else (pair.base,
                                                                          pair.base_units(lots))
        if hold >= MAX_EXACT_UNITS:
            raise ExchangeError("QTY_TOO_LARGE", "order value is too large")
        order_id = new_order_id()
        now = int(time.time() * 1000)
        record = {
            "order_id": order_id, "client_order_id": client_order_id or "",
            "account_id": account_id, "symbol": pair.symbol, "base": pair.base.symbol,
            "quote": pair.quote.symbol, "side": side, "type": order_type, "tif": tif,
            "price": ticks, "qty": lots, "filled": 0, "quote_filled": 0, "status": "new",
            "reason": "", "created_ts": now, "updated_ts": now,
            "hold_asset": hold_asset.symbol, "hold_left": hold,
        }
        account = keys.AccountKeys(account_id)
        outcome, detail = await self._hold(
            keys=[account.balances, account.order(order_id), account.open_orders,
                  account.client_ids],
            args=[hold_asset.symbol, hold, order_id, client_order_id or "",
                  *(x for item in record.items() for x in item)],
        )
        if outcome == -1:
            raise ExchangeError("INSUFFICIENT_FUNDS",
                                f"not enough {hold_asset.symbol} available for this order")
        if outcome == 0:
            return await self.get(account_id, detail.decode()), False
        command = PlaceOrder(order_id, account_id, side, ticks, lots, tif)  # type: ignore[arg-type]
        await self.redis.xadd(keys.PairKeys(pair.symbol).inbox,
                              {"c": encode(command), "tp": current_traceparent()})
        return order_to_wire(pair, record), True

    async def get(self, account_id: str, order_id: str) -> dict[str, object]:
        record = await self._record(account_id, order_id)
        return order_to_wire(self.markets.pair(record["symbol"]), record)

    async def cancel(self, account_id: str, order_id: str,
                     wait_s: float = 2.0) -> tuple[dict[str, object], bool]:
        """Ask the engine to cancel; wait up to `wait_s` for the outcome to settle.

        Returns (order, settled): settled is False if the order was still open when
        the wait ended (the cancel stays queued and its outcome follows)."""
        record = await self._record(account_id, order_id)
        if record["status"] in TERMINAL:
            raise ExchangeError("ORDER_NOT_OPEN", f"order {order_id} is {record['status']}")
        pair = self.markets.pair(record["symbol"])
        await self.redis.xadd(keys.PairKeys(pair.symbol).inbox, {
            "c": encode(CancelOrder(order_id, account_id)), "tp": current_traceparent(),
        })
        order_key = keys.AccountKeys(account_id).order(order_id)
        deadline = time.monotonic() + wait_s
        pause = 0.001
        while time.monotonic() < deadline:
            status = await self.redis.hget(order_key, "status")
            if status is not None and status.decode() in TERMINAL:
                return await self.get(account_id, order_id), True
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        return await self.get(account_id, order_id), False

    async def _record(self, account_id: str, order_id: str) -> dict[str, str]:
        if not order_id or len(order_id) > 64:
            raise ExchangeError("UNKNOWN_ORDER", "no such order", 404)
        raw = await self.redis.hgetall(keys.AccountKeys(account_id).order(order_id))
        if not raw:
            raise ExchangeError("UNKNOWN_ORDER", "no such order", 404)
        return {k.decode(): v.decode() for k, v in raw.items()}


def order_to_wire(pair: Pair, record: dict) -> dict[str, object]:
    """An order record as API.md shows it: decimal strings, ms times."""
    filled = int(record["filled"])
    avg_px = None
    if filled:
        avg = Decimal(int(record["quote_filled"])) * pair.quote.unit / (filled * pair.lot_size)
        avg_px = str(avg.quantize(pair.tick_size, rounding=ROUND_HALF_EVEN))
    wire: dict[str, object] = {
        "order_id": record["order_id"],
        "client_order_id": record["client_order_id"] or None,
        "symbol": record["symbol"],
        "side": record["side"],
        "type": record["type"],
        "price": pair.format_price(int(record["price"])),
        "qty": pair.format_qty(int(record["qty"])),
        "filled_qty": pair.format_qty(filled),
        "avg_px": avg_px,
        "status": record["status"],
        "tif": record["tif"],
        "created_ts": int(record["created_ts"]),
        "updated_ts": int(record["updated_ts"]),
    }
    if record["status"] == "rejected":
        wire["reject_reason"] = record["reason"]
    return wire
