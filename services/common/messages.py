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
OrderType = Literal["limit", "market", "stop_limit", "stop_market"]
TimeInForce = Literal["GTC", "IOC", "FOK"]
# Self-trade prevention, decided by the incoming (taker) order.
StpMode = Literal["none", "cancel_newest", "cancel_oldest", "cancel_both"]


class _Message(msgspec.Struct, frozen=True, tag_field="k", omit_defaults=True, gc=False):
    """Commands and events. gc=False: they hold only strings, numbers and flags, so they
    can form no reference cycle, and the collector need not track the millions made."""


# ---- commands (API -> engine) -------------------------------------------------------


class PlaceOrder(_Message, tag="place"):
    """A new order. Limit orders need `price`; market orders fill within the pair's
    price band and need `qty` or, for buys, `quote_qty` (a budget in tick*lot units);
    stop orders wait for a trade at or through `stop_price`."""

    order_id: str
    account_id: str
    side: Side
    price: int  # ticks; 0 for market and stop-market orders
    qty: int  # lots; 0 for a market buy by quote amount
    tif: TimeInForce = "GTC"
    type: OrderType = "limit"
    post_only: bool = False
    stp: StpMode = "none"
    quote_qty: int = 0  # tick*lot units a market buy may spend
    stop_price: int = 0  # ticks


class CancelOrder(_Message, tag="cancel"):
    order_id: str
    account_id: str


class CancelAll(_Message, tag="cancel_all"):
    """Cancel every open order (resting or waiting stop) of an account on the pair."""

    account_id: str


class AmendOrder(_Message, tag="amend"):
    """Change a resting order. `qty` is the new total quantity (0 = unchanged), `price`
    the new limit (0 = unchanged). Only a smaller quantity keeps queue priority."""

    order_id: str
    account_id: str
    qty: int = 0
    price: int = 0


Command = PlaceOrder | CancelOrder | CancelAll | AmendOrder


# ---- events (engine -> settlement); `seq` is the pair's event sequence -------------


class OrderAccepted(_Message, tag="accepted"):
    seq: int
    ts: int
    order_id: str
    account_id: str
    side: Side
    type: OrderType
    price: int
    qty: int
    tif: TimeInForce
    quote_qty: int = 0
    stop_price: int = 0


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
    """Ended by request: the owner's cancel, a cancel-all, or self-trade prevention."""

    seq: int
    ts: int
    order_id: str
    account_id: str
    remaining: int  # lots that will never fill
    reason: Literal["user", "cancel_all", "stp"]


class OrderExpired(_Message, tag="expired"):
    """Ended by its own terms: what an IOC, FOK or market order could not fill."""

    seq: int
    ts: int
    order_id: str
    account_id: str
    remaining: int
    reason: Literal["ioc_remainder", "fok_unfilled", "market_remainder", "price_band",
                    "no_liquidity", "stp"]


class OrderAmended(_Message, tag="amended"):
    seq: int
    ts: int
    order_id: str
    account_id: str
    price: int
    qty: int  # new total quantity
    remaining: int
    requeued: bool  # lost its queue priority (price change or larger quantity)


class OrderTriggered(_Message, tag="triggered"):
    """A stop order's condition was met by the trade at `last_price`; it now trades."""

    seq: int
    ts: int
    order_id: str
    account_id: str
    last_price: int


class CancelRejected(_Message, tag="cancel_rejected"):
    """A cancel that found nothing to cancel; the order itself is unaffected."""

    seq: int
    ts: int
    order_id: str
    account_id: str
    reason: str


class DuplicateIgnored(_Message, tag="duplicate"):
    """A placement whose order id was already used: a re-sent command. Nothing changes,
    and settlement must not touch the first order of that id."""

    seq: int
    ts: int
    order_id: str
    account_id: str


class AmendRejected(_Message, tag="amend_rejected"):
    """An amend that could not be applied; the order is unchanged."""

    seq: int
    ts: int
    order_id: str
    account_id: str
    reason: str


Event = (OrderAccepted | OrderRejected | Trade | OrderCancelled | OrderExpired | OrderAmended
         | OrderTriggered | CancelRejected | AmendRejected | DuplicateIgnored)


# ---- market data (engine -> gateways), one message per committed batch -------------


class TradeTick(msgspec.Struct, frozen=True, array_like=True):
    id: int
    price: int
    qty: int
    side: Side  # taker side
    ts: int


class CandleTick(msgspec.Struct, frozen=True, array_like=True):
    """A bar as it stands after the batch: prices in ticks, `v` lots, `qv` quote units."""

    interval: str
    t: int
    o: int
    h: int
    l: int  # noqa: E741 - the field name of every OHLC format
    c: int
    v: int
    qv: int
    n: int


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
    candles: list[CandleTick] = msgspec.field(default_factory=list)
    # (order_id, traceparent) of each sampled order of the batch, so a gateway's span of
    # its write joins the order's trace; an envelope field, never forwarded to clients.
    traces: list[tuple[str, str]] = msgspec.field(default_factory=list)


_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
command_decoder = msgspec.msgpack.Decoder(Command)
events_decoder = msgspec.msgpack.Decoder(list[Event])
md_decoder = msgspec.msgpack.Decoder(MarketDataUpdate)
