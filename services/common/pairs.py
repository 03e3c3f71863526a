"""Trading pairs, assets and the exact conversion between wire decimals and integers.

Inside the system a price is an integer number of ticks, a quantity an integer number
of lots and a balance an integer number of the asset's smallest unit; decimal strings
exist only at the edges. Every conversion here is exact or refuses with a stable code.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from importlib import resources
from pathlib import Path

from services.common.errors import ExchangeError

PAIRS_FILE_ENV = "EXCHANGE_PAIRS_FILE"


def _units(amount: Decimal, unit: Decimal, what: str) -> int:
    """`amount` as a whole number of `unit`s; raises ValueError if it is not one."""
    count = amount / unit
    if count != count.to_integral_value():
        raise ValueError(f"{what} {amount} is not a multiple of {unit}")
    return int(count)


def fixed_point(units: int, decimals: int) -> str:
    """`units` of 10**-decimals as a decimal string with exactly `decimals` places.

    Integer arithmetic only: this runs for every price and quantity on the wire."""
    if decimals == 0:
        return str(units)
    whole, frac = divmod(abs(units), 10**decimals)
    return f"{'-' if units < 0 else ''}{whole}.{frac:0{decimals}d}"


# Plain decimal notation only: ASCII digits, an optional sign and fraction. Exponents,
# underscores, spaces and non-ASCII digits (all of which Decimal() would take) are refused,
# which keeps every value within a few dozen digits.
_DECIMAL = re.compile(r"-?[0-9]{1,30}(\.[0-9]{1,30})?", re.ASCII)


def parse_decimal(text: object, field: str) -> Decimal:
    """A decimal from a wire string; JSON numbers are refused so no float sneaks in."""
    if not isinstance(text, str):
        raise ExchangeError("INVALID_NUMBER", f"{field} must be a decimal string")
    if not _DECIMAL.fullmatch(text):
        raise ExchangeError("INVALID_NUMBER", f"{field} is not a plain decimal: {text[:40]!r}")
    return Decimal(text)


@dataclass(frozen=True)
class Asset:
    symbol: str
    decimals: int

    @cached_property
    def unit(self) -> Decimal:
        return Decimal(1).scaleb(-self.decimals)

    def to_units(self, text: object, field: str = "amount") -> int:
        """A positive wire amount as integer units; INVALID_AMOUNT if finer than a unit."""
        value = parse_decimal(text, field)
        if value <= 0:
            raise ExchangeError("INVALID_AMOUNT", f"{field} must be positive")
        try:
            return _units(value, self.unit, field)
        except ValueError:
            raise ExchangeError(
                "INVALID_AMOUNT", f"{field} has more than {self.decimals} decimals"
            ) from None

    def format(self, units: int) -> str:
        return fixed_point(units, self.decimals)


@dataclass(frozen=True)
class Pair:
    """One trading pair's rules. Integers: price in ticks, quantity in lots."""

    symbol: str
    base: Asset
    quote: Asset
    tick_size: Decimal
    lot_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    price_decimals: int
    qty_decimals: int
    # Market orders fill at most this far (basis points) from the last trade price, or
    # from the best opposite price before the first trade.
    market_band_bps: int = 500
    # Limit and stop prices further than this from the last trade price are refused.
    price_band_bps: int = 5000
    # Fees in basis points of the notional, charged in the quote asset; a negative maker
    # fee is a rebate. Fees round down, so the sum over partial fills never exceeds the
    # fee on the whole, which is what an order holds.
    maker_fee_bps: int = 0
    taker_fee_bps: int = 0

    def __post_init__(self) -> None:
        # Fail at load, not at the first trade, if a notional could be inexact.
        _units(self.tick_size * self.lot_size, self.quote.unit, f"{self.symbol} tick*lot")
        _units(self.lot_size, self.base.unit, f"{self.symbol} lot")
        if self.price_decimals < -self.tick_size.as_tuple().exponent:
            raise ValueError(f"{self.symbol}: price_decimals finer than tick_size needed")
        if self.qty_decimals < -self.lot_size.as_tuple().exponent:
            raise ValueError(f"{self.symbol}: qty_decimals finer than lot_size needed")
        if self.maker_fee_bps + self.taker_fee_bps < 0 or self.taker_fee_bps < 0:
            # Each fill must leave the fee account a non-negative net.
            raise ValueError(f"{self.symbol}: a maker rebate larger than the taker fee")

    @cached_property
    def base_units_per_lot(self) -> int:
        return int(self.lot_size / self.base.unit)

    @cached_property
    def quote_units_per_tick_lot(self) -> int:
        return int(self.tick_size * self.lot_size / self.quote.unit)

    @cached_property
    def min_lots(self) -> int:
        return math.ceil(self.min_qty / self.lot_size)

    @cached_property
    def max_lots(self) -> int:
        return math.floor(self.max_qty / self.lot_size)

    @cached_property
    def min_notional_units(self) -> int:
        return math.ceil(self.min_notional / self.quote.unit)

    def price_to_ticks(self, text: object) -> int:
        value = parse_decimal(text, "price")
        if value <= 0:
            raise ExchangeError("INVALID_PRICE", "price must be positive")
        try:
            return _units(value, self.tick_size, "price")
        except ValueError:
            raise ExchangeError(
                "INVALID_PRICE_TICK", f"price must be a multiple of {self.tick_size}"
            ) from None

    def qty_to_lots(self, text: object) -> int:
        value = parse_decimal(text, "qty")
        if value <= 0:
            raise ExchangeError("INVALID_QTY", "qty must be positive")
        try:
            lots = _units(value, self.lot_size, "qty")
        except ValueError:
            raise ExchangeError(
                "INVALID_QTY_LOT", f"qty must be a multiple of {self.lot_size}"
            ) from None
        if lots < self.min_lots:
            raise ExchangeError("QTY_TOO_SMALL", f"qty must be at least {self.min_qty}")
        if lots > self.max_lots:
            raise ExchangeError("QTY_TOO_LARGE", f"qty must be at most {self.max_qty}")
        return lots

    def check_price_band(self, ticks: int, last_ticks: int | None) -> None:
        """PRICE_OUT_OF_BAND unless `ticks` is within the band around the last trade."""
        if last_ticks is None:
            return
        move = last_ticks * self.price_band_bps // 10_000
        if not last_ticks - move <= ticks <= last_ticks + move:
            raise ExchangeError(
                "PRICE_OUT_OF_BAND",
                f"price must be within {self.price_band_bps / 100:g}% of the last trade "
                f"({self.format_price(last_ticks)})")

    @cached_property
    def hold_fee_bps(self) -> int:
        """The fee an order holds for: it may end up maker or taker."""
        return max(self.maker_fee_bps, self.taker_fee_bps, 0)

    def fee_units(self, notional: int, bps: int) -> int:
        """Fee on `notional` quote units (negative = rebate), rounded toward zero."""
        fee = abs(notional) * abs(bps) // 10_000
        return fee if bps >= 0 else -fee

    def with_hold_fee(self, notional: int) -> int:
        """What a buy of `notional` must hold: the notional plus the largest fee."""
        return notional + notional * self.hold_fee_bps // 10_000

    def notional_units(self, ticks: int, lots: int) -> int:
        """Quote units paid for `lots` at `ticks`: exact by construction."""
        return ticks * lots * self.quote_units_per_tick_lot

    def base_units(self, lots: int) -> int:
        return lots * self.base_units_per_lot

    @cached_property
    def _price_scale(self) -> int:
        """Wire units (10**-price_decimals) per tick; whole, as __post_init__ checks."""
        return int(self.tick_size.scaleb(self.price_decimals))

    @cached_property
    def _qty_scale(self) -> int:
        return int(self.lot_size.scaleb(self.qty_decimals))

    def format_price(self, ticks: int) -> str:
        return fixed_point(ticks * self._price_scale, self.price_decimals)

    def format_qty(self, lots: int) -> str:
        return fixed_point(lots * self._qty_scale, self.qty_decimals)

    def to_wire(self) -> dict[str, object]:
        """The pair as `GET /markets` lists it (status added by the caller)."""
        return {
            "symbol": self.symbol,
            "base": self.base.symbol,
            "quote": self.quote.symbol,
            "tick_size": str(self.tick_size),
            "lot_size": str(self.lot_size),
            "min_qty": str(self.min_qty),
            "max_qty": str(self.max_qty),
            "min_notional": str(self.min_notional),
            "price_decimals": self.price_decimals,
            "qty_decimals": self.qty_decimals,
            "market_band_bps": self.market_band_bps,
            "price_band_bps": self.price_band_bps,
            "maker_fee_bps": self.maker_fee_bps,
            "taker_fee_bps": self.taker_fee_bps,
        }


@dataclass(frozen=True)
class Markets:
    """All configured assets and pairs, looked up by symbol."""

    assets: dict[str, Asset]
    pairs: dict[str, Pair]

    def pair(self, symbol: object) -> Pair:
        pair = self.pairs.get(symbol) if isinstance(symbol, str) else None
        if pair is None:
            raise ExchangeError("UNKNOWN_SYMBOL", f"unknown symbol {symbol!r}", 404)
        return pair

    def asset(self, symbol: object) -> Asset:
        asset = self.assets.get(symbol) if isinstance(symbol, str) else None
        if asset is None:
            raise ExchangeError("UNKNOWN_ASSET", f"unknown asset {symbol!r}")
        return asset


def parse_markets(document: dict) -> Markets:
    assets = {
        name: Asset(name, int(spec["decimals"])) for name, spec in document["assets"].items()
    }
    pairs: dict[str, Pair] = {}
    for spec in document["pairs"]:
        symbol = spec["symbol"]
        base, quote = symbol.split("-")
        pairs[symbol] = Pair(
            symbol=symbol,
            base=assets[base],
            quote=assets[quote],
            tick_size=Decimal(spec["tick_size"]),
            lot_size=Decimal(spec["lot_size"]),
            min_qty=Decimal(spec["min_qty"]),
            max_qty=Decimal(spec["max_qty"]),
            min_notional=Decimal(spec["min_notional"]),
            price_decimals=int(spec["price_decimals"]),
            qty_decimals=int(spec["qty_decimals"]),
            market_band_bps=int(spec.get("market_band_bps", Pair.market_band_bps)),
            price_band_bps=int(spec.get("price_band_bps", Pair.price_band_bps)),
            maker_fee_bps=int(spec.get("maker_fee_bps", Pair.maker_fee_bps)),
            taker_fee_bps=int(spec.get("taker_fee_bps", Pair.taker_fee_bps)),
        )
    return Markets(assets=assets, pairs=pairs)


def load_markets(path: str | Path | None = None) -> Markets:
    """Markets from `path`, else $EXCHANGE_PAIRS_FILE, else the packaged defaults."""
    path = path or os.environ.get(PAIRS_FILE_ENV)
    if path:
        text = Path(path).read_text()
    else:
        text = resources.files("services.common").joinpath("default_pairs.toml").read_text()
    return parse_markets(tomllib.loads(text))
