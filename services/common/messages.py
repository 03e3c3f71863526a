"""Immutable message types shared by producer and consumer.

Commands travel API -> engine in `{PAIR}:in`; events travel engine -> settlement in
`{PAIR}:events`; market-data updates travel engine -> gateways on `{PAIR}:md`.
All are msgpack-encoded msgspec structs: compact, fast, and typed at both ends.
Prices are integer ticks, quantities integer lots (DESIGN §4).
"""

from __future__ import annotations

from typing import Literal

import msgspec

Side = Literal["buy", "sell"]
TimeInForce = Literal["GTC", "IOC"]


class _Message(msgspec.Struct, frozen=True, tag_field="k", array_like=False):
    pass


# ---- commands (API -> engine) -------------------------------------------------------


class PlaceOrder(_Message, tag="place"):
    order_id: str
    account_id: str
    side: Side
    price: int
    qty: int
    tif: TimeInForce = "GTC"


class CancelOrder(_Message, tag="cancel"):
    order_id: str
    account_id: str


Command = PlaceOrder | CancelOrder


# ---- events (engine -> settlement); `seq` is the pair's event sequence -------------


class OrderAccepted(_Message, tag="accepted"):
    seq: int
    ts: int
    order_id: str
    account_id: str
    side: Side
    price: int
    qty: int
    tif: TimeInForce


class OrderRejected(_Message, tag="rejected"):
    seq: int
    ts: int
    order_id: str
    account_id: str
    reason: str


class Trade(_Message, tag="trade"):
    seq: int
    ts: int
    trade_id: int
    price: int
    qty: int
    taker_side: Side
    maker_order_id: str
    maker_account_id: str
    taker_order_id: str
    taker_account_id: str
    maker_done: bool  # the maker order has nothing left after this fill
    taker_done: bool


class OrderCancelled(_Message, tag="cancelled"):
    seq: int
    ts: int
    order_id: str
    account_id: str
    remaining: int  # lots that will never fill
    reason: Literal["user", "ioc_remainder"]


class CancelRejected(_Message, tag="cancel_rejected"):
    """A cancel that found nothing to cancel; the order itself is unaffected."""

    seq: int
    ts: int
    order_id: str
    account_id: str
    reason: str


Event = OrderAccepted | OrderRejected | Trade | OrderCancelled | CancelRejected


# ---- market data (engine -> gateways), one message per committed batch -------------


class TradeTick(msgspec.Struct, frozen=True, array_like=True):
    id: int
    price: int
    qty: int
    side: Side  # taker side
    ts: int


class MarketDataUpdate(msgspec.Struct, frozen=True, array_like=True):
    """What one engine batch changed. Book levels are absolute lots; 0 removes a level.

    `seq` rises by exactly one per published update of the pair, so a subscriber
    that sees `prev_seq` differ from the last `seq` it applied knows it missed one.
    """

    seq: int
    prev_seq: int
    ts: int
    epoch: str
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]
    trades: list[TradeTick]


_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
command_decoder = msgspec.msgpack.Decoder(Command)
events_decoder = msgspec.msgpack.Decoder(list[Event])
md_decoder = msgspec.msgpack.Decoder(MarketDataUpdate)
