"""The order record kept on the account's slot, as both the API and settlement read it."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal

from services.common.messages import PlaceOrder
from services.common.pairs import Pair


def place_command(record: Mapping[str, str | int]) -> PlaceOrder:
    """The engine command of an order record (also how a stranded order is re-sent)."""
    return PlaceOrder(
        str(record["order_id"]), str(record["account_id"]), record["side"],  # type: ignore[arg-type]
        int(record["price"]), int(record["qty"]), record["tif"],  # type: ignore[arg-type]
        record["type"], bool(int(record["post_only"])), record["stp"],  # type: ignore[arg-type]
        int(record["quote_cap"]), int(record["stop_price"]))


def order_to_wire(pair: Pair, record: Mapping[str, str]) -> dict[str, object]:
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
        "price": pair.format_price(int(record["price"])) if record["price"] != "0" else None,
        "qty": pair.format_qty(int(record["qty"])) if record["qty"] != "0" else None,
        "filled_qty": pair.format_qty(filled),
        "fee": pair.quote.format(int(record.get("fee", 0))),
        "avg_px": avg_px,
        "status": record["status"],
        "tif": record["tif"],
        "created_ts": int(record["created_ts"]),
        "updated_ts": int(record["updated_ts"]),
    }
    if record.get("stop_price", "0") != "0":
        wire["stop_price"] = pair.format_price(int(record["stop_price"]))
    if record.get("quote_qty"):
        wire["quote_qty"] = record["quote_qty"]
    if record["status"] == "rejected":
        wire["reject_reason"] = record["reason"]
    elif record["status"] == "cancelled" and record["reason"] != "user":
        wire["cancel_reason"] = record["reason"]  # e.g. ioc_remainder, stp, cancel_all
    return wire
