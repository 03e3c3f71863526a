"""Pair rules at the edge, and what each order type must hold: pure functions.

Every refusal has a stable code. The hold is what the order could ever spend, so the
engine can never make an account pay more than it set aside (DESIGN §4):
- a limit (or stop-limit) buy holds price × qty in quote plus the largest fee; every
  sell holds its qty (its fee comes out of the quote it receives);
- a market buy by quote amount holds that amount and spends at most it, fee included;
- a market (or stop-market) buy by quantity holds qty at the edge of the market price
  band, and the engine is told that as a spending cap, so a moving market can make
  it fill less but never cost more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.api.schemas import OrderRequest
from services.common.errors import ExchangeError
from services.common.pairs import Asset, Pair

# Amounts compared in Lua must stay exact as doubles.
MAX_EXACT_UNITS = 2**53


@dataclass(frozen=True)
class MarketRef:
    """What the edge knows of the pair at the time of the order (last commit)."""

    last_price: int | None
    best_bid: int | None
    best_ask: int | None
    halted: bool = False


@dataclass(frozen=True)
class OrderPlan:
    """A validated order: engine fields in ticks / lots / tick*lots, and its hold."""

    side: str
    type: str
    tif: str
    price: int
    qty: int
    quote_qty: int  # tick*lot units the engine may spend (0 = no cap)
    stop_price: int
    post_only: bool
    stp: str
    hold_asset: Asset
    hold: int  # units of hold_asset


def _refuse(code: str, message: str) -> ExchangeError:
    return ExchangeError(code, message)


def price_ticks(pair: Pair, text: object) -> int:
    """`text` in ticks; a positive price so small that it rounds to no tick is refused."""
    ticks = pair.price_to_ticks(text)
    if ticks <= 0:
        raise _refuse("INVALID_PRICE_TICK", f"price must be a multiple of {pair.tick_size}")
    return ticks


def plan_order(pair: Pair, req: OrderRequest, ref: MarketRef) -> OrderPlan:
    """Check `req` against the pair's rules and work out its hold, or refuse."""
    if ref.halted:
        raise ExchangeError("MARKET_HALTED", f"{pair.symbol} is halted", 409)
    kind = req.type
    limit_priced = kind in ("limit", "stop_limit")
    stop = kind in ("stop_limit", "stop_market")
    market = kind in ("market", "stop_market")
    if limit_priced and req.price is None:
        raise _refuse("INVALID_REQUEST", f"a {kind} order needs price")
    if not limit_priced and req.price is not None:
        raise _refuse("INVALID_REQUEST", f"a {kind} order takes no price")
    if stop and req.stop_price is None:
        raise _refuse("INVALID_REQUEST", f"a {kind} order needs stop_price")
    if not stop and req.stop_price is not None:
        raise _refuse("INVALID_REQUEST", f"a {kind} order takes no stop_price")
    if req.quote_qty is not None:
        if not market or req.side != "buy":
            raise _refuse("INVALID_QUOTE_QTY", "quote_qty is for market buys only")
        if req.qty is not None:
            raise _refuse("INVALID_REQUEST", "give qty or quote_qty, not both")
        if req.tif == "FOK":
            raise _refuse("INVALID_TIME_IN_FORCE", "FOK needs a quantity")
    elif req.qty is None:
        raise _refuse("INVALID_REQUEST", "qty is required")
    if req.post_only and (kind != "limit" or req.tif != "GTC"):
        raise _refuse("INVALID_POST_ONLY", "post_only is for GTC limit orders")
    # A market order never rests: GTC means "as much as possible now", i.e. IOC.
    tif = "IOC" if market and req.tif == "GTC" else req.tif

    price = price_ticks(pair, req.price) if limit_priced else 0
    stop_price = price_ticks(pair, req.stop_price) if stop else 0
    for ticks in (price, stop_price):
        if ticks:
            pair.check_price_band(ticks, ref.last_price)
    if req.post_only:
        best = ref.best_ask if req.side == "buy" else ref.best_bid
        if best is not None and (price >= best if req.side == "buy" else price <= best):
            # The engine re-checks against the live book; this refuses the obvious case.
            raise _refuse("POST_ONLY_WOULD_TAKE", "a post-only order must not take liquidity")
    lots = pair.qty_to_lots(req.qty) if req.qty is not None else 0
    # Whatever the side, the order's value at its prices must stay exact (a sell holds
    # base, so the hold check below does not bound its price).
    if pair.notional_units(max(price, stop_price), max(lots, 1)) >= MAX_EXACT_UNITS:
        raise _refuse("QTY_TOO_LARGE", "order value is too large")

    quote_cap = 0
    if req.quote_qty is not None:
        units = pair.quote.to_units(req.quote_qty, "quote_qty")
        if units < pair.min_notional_units:
            raise _refuse("MIN_NOTIONAL", f"quote_qty must be at least {pair.min_notional}")
        # quote_qty pays for the fills and their fee: the engine may spend what leaves room
        # for the largest fee.
        spendable = units * 10_000 // (10_000 + pair.hold_fee_bps)
        quote_cap = spendable // pair.quote_units_per_tick_lot
        hold_asset, hold = pair.quote, units
    else:
        # The price the notional is judged at: the limit, else the trigger, else the
        # market (for a market order with no reference, the engine will find no liquidity).
        basis = price or stop_price or ref.last_price or (
            ref.best_ask if req.side == "buy" else ref.best_bid)
        if basis is not None and pair.notional_units(basis, lots) < pair.min_notional_units:
            raise _refuse("MIN_NOTIONAL", f"price * qty must be at least {pair.min_notional}")
        if req.side == "sell":
            hold_asset, hold = pair.base, pair.base_units(lots)
        elif market:
            reference = stop_price or ref.last_price or ref.best_ask
            if reference is None:
                raise _refuse("NO_LIQUIDITY", "no price to bound a market buy: no trades and "
                              "no asks yet")
            edge = math.ceil(reference * (10_000 + pair.market_band_bps) / 10_000)
            quote_cap = edge * lots
            hold_asset, hold = pair.quote, pair.with_hold_fee(pair.notional_units(edge, lots))
        else:
            hold_asset, hold = pair.quote, pair.with_hold_fee(pair.notional_units(price, lots))
    if hold >= MAX_EXACT_UNITS:
        raise _refuse("QTY_TOO_LARGE", "order value is too large")
    return OrderPlan(req.side, kind, tif, price, lots, quote_cap, stop_price, req.post_only,
                     req.stp or "none", hold_asset, hold)
