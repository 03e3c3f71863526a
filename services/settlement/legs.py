"""Pure translation of engine events into per-account settlement legs."""

from __future__ import annotations

from collections import defaultdict

import msgspec

from services.common import keys
from services.common.messages import (
    Event,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    Trade,
)
from services.common.pairs import Pair

Leg = dict[str, object]
_json = msgspec.json.Encoder()


def legs_by_account(pair: Pair, events: list[Event]) -> dict[str, list[Leg]]:
    """For each account touched by `events`, its legs in event order.

    Amounts are decimal integer strings so the settle script never does float math.
    Fees are in the quote asset: the buyer pays notional + fee, the seller receives
    notional - fee (a negative fee is a rebate), and the fee account receives the sum,
    so every asset is conserved exactly. Each leg carries its event's seq: an account
    applies only legs past the last seq it settled on the pair, so an engine commit lost
    in a failover and made again in other batches is never applied twice in part. An
    accepted order only stops being
    "unconfirmed"; an amend changes only the order record; triggers and refused cancels
    or amends produce no leg.
    """
    legs: dict[str, list[Leg]] = defaultdict(list)
    for event in events:
        if isinstance(event, Trade):
            notional = pair.notional_units(event.price, event.qty)
            maker_fee = pair.fee_units(notional, pair.maker_fee_bps)
            taker_fee = pair.fee_units(notional, pair.taker_fee_bps)
            maker_side = "sell" if event.taker_side == "buy" else "buy"
            for order_id, account_id, side, done, fee, liquidity in (
                (event.maker_order_id, event.maker_account_id, maker_side, event.maker_done,
                 maker_fee, "maker"),
                (event.taker_order_id, event.taker_account_id, event.taker_side,
                 event.taker_done, taker_fee, "taker"),
            ):
                leg: Leg = {"id": order_id, "kind": "fill", "side": side,
                            "base": str(pair.base_units(event.qty)), "quote": str(notional),
                            "lots": str(event.qty), "fee": str(fee), "done": done,
                            "ts": event.ts, "seq": event.seq}
                if side == "buy":
                    leg["pay"] = str(notional + max(fee, 0))
                    leg["rebate"] = str(max(-fee, 0))
                else:
                    leg["gain"] = str(notional - fee)
                leg["fill"] = _json.encode({
                    "trade_id": str(event.trade_id), "order_id": order_id,
                    "symbol": pair.symbol, "side": side,
                    "px": pair.format_price(event.price), "qty": pair.format_qty(event.qty),
                    "fee": pair.quote.format(fee), "fee_asset": pair.quote.symbol,
                    "liquidity": liquidity, "ts": event.ts,
                }).decode()
                legs[account_id].append(leg)
            if maker_fee + taker_fee:
                legs[keys.FEE_ACCOUNT].append({"kind": "fee", "asset": pair.quote.symbol,
                                               "amount": str(maker_fee + taker_fee),
                                               "seq": event.seq})
        elif isinstance(event, OrderCancelled | OrderExpired):
            # An expired order (IOC/FOK/market remainder) shows as cancelled with the
            # reason, keeping API.md's order statuses.
            legs[event.account_id].append({
                "id": event.order_id, "kind": "cancel", "reason": event.reason, "done": True,
                "ts": event.ts, "seq": event.seq,
            })
        elif isinstance(event, OrderAccepted):
            # The engine has the order: the stranded-hold reconciler can stop watching it.
            legs[event.account_id].append({"id": event.order_id, "kind": "seen",
                                           "done": False, "ts": event.ts, "seq": event.seq})
        elif isinstance(event, OrderRejected):
            legs[event.account_id].append({
                "id": event.order_id, "kind": "reject", "reason": event.reason, "done": True,
                "ts": event.ts, "seq": event.seq,
            })
        elif isinstance(event, OrderAmended):
            legs[event.account_id].append({
                "id": event.order_id, "kind": "amend", "price": str(event.price),
                "qty": str(event.qty), "done": False, "ts": event.ts, "seq": event.seq,
            })
    return legs
