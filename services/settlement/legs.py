"""Pure translation of engine events into per-account settlement legs."""

from __future__ import annotations

from collections import defaultdict

from services.common.messages import (
    Event,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    Trade,
)
from services.common.pairs import Pair


def legs_by_account(pair: Pair, events: list[Event]) -> dict[str, list[dict[str, object]]]:
    """For each account touched by `events`, its legs in event order.

    Amounts are decimal integer strings so the settle script never does float math.
    Accepted or triggered orders and refused cancels or amends move no money and
    produce no leg; an amend changes only the order record.
    """
    legs: dict[str, list[dict[str, object]]] = defaultdict(list)
    for event in events:
        if isinstance(event, Trade):
            base = str(pair.base_units(event.qty))
            quote = str(pair.notional_units(event.price, event.qty))
            maker_side = "sell" if event.taker_side == "buy" else "buy"
            for order_id, account_id, side, done in (
                (event.maker_order_id, event.maker_account_id, maker_side, event.maker_done),
                (event.taker_order_id, event.taker_account_id, event.taker_side, event.taker_done),
            ):
                legs[account_id].append({
                    "id": order_id, "kind": "fill", "side": side, "base": base,
                    "quote": quote, "lots": str(event.qty), "done": done, "ts": event.ts,
                })
        elif isinstance(event, OrderCancelled | OrderExpired):
            # An expired order (IOC/FOK/market remainder) shows as cancelled with the
            # reason, keeping API.md's order statuses.
            legs[event.account_id].append({
                "id": event.order_id, "kind": "cancel", "reason": event.reason, "done": True,
                "ts": event.ts,
            })
        elif isinstance(event, OrderRejected):
            legs[event.account_id].append({
                "id": event.order_id, "kind": "reject", "reason": event.reason, "done": True,
                "ts": event.ts,
            })
        elif isinstance(event, OrderAmended):
            legs[event.account_id].append({
                "id": event.order_id, "kind": "amend", "price": str(event.price),
                "qty": str(event.qty), "done": False, "ts": event.ts,
            })
    return legs
