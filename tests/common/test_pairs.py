"""Exact conversion between wire decimals and integers, and the pair rules."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.book_cache import book_checksum
from services.common.errors import ExchangeError
from services.common.pairs import Markets, load_markets, parse_markets


def test_default_pairs_have_rules_and_wire_decimals(markets: Markets) -> None:
    assert set(markets.pairs) == {"BTC-USD", "ETH-USD", "ETH-BTC"}
    btc = markets.pair("BTC-USD")
    assert btc.to_wire()["price_decimals"] == 2 and btc.to_wire()["qty_decimals"] == 4
    assert btc.format_price(btc.price_to_ticks("67001.5")) == "67001.50"
    assert btc.format_qty(btc.qty_to_lots("0.25")) == "0.2500"


def test_notional_is_exact_integer_units(markets: Markets) -> None:
    pair = markets.pair("ETH-BTC")
    ticks, lots = pair.price_to_ticks("0.05123"), pair.qty_to_lots("1.234")
    # 0.05123 BTC * 1.234 ETH = 0.06321782 BTC = 6321782 satoshi, no rounding anywhere.
    assert pair.notional_units(ticks, lots) == 6321782
    assert pair.base_units(lots) == 123400000


@pytest.mark.parametrize(("price", "code"), [
    ("67001.505", "INVALID_PRICE_TICK"), ("-1", "INVALID_PRICE"), ("0", "INVALID_PRICE"),
    ("abc", "INVALID_NUMBER"), ("NaN", "INVALID_NUMBER"), ("Infinity", "INVALID_NUMBER"),
    (67001.5, "INVALID_NUMBER"), ("6.7e4", "INVALID_NUMBER"), ("67_001.50", "INVALID_NUMBER"),
    (" 67001.50", "INVALID_NUMBER"), ("６７００１", "INVALID_NUMBER"), ("+67001", "INVALID_NUMBER"),
    ("67001.", "INVALID_NUMBER"), (".5", "INVALID_NUMBER"),
])
def test_bad_prices_are_refused_with_stable_codes(markets: Markets, price: object,
                                                  code: str) -> None:
    with pytest.raises(ExchangeError) as refused:
        markets.pair("BTC-USD").price_to_ticks(price)
    assert refused.value.code == code


@pytest.mark.parametrize(("qty", "code"), [
    ("0.00005", "INVALID_QTY_LOT"), ("0", "INVALID_QTY"), ("1000.0001", "QTY_TOO_LARGE"),
])
def test_bad_quantities_are_refused_with_stable_codes(markets: Markets, qty: str,
                                                      code: str) -> None:
    with pytest.raises(ExchangeError) as refused:
        markets.pair("BTC-USD").qty_to_lots(qty)
    assert refused.value.code == code


def test_unknown_symbol_is_a_404_error(markets: Markets) -> None:
    with pytest.raises(ExchangeError) as refused:
        markets.pair("DOGE-USD")
    assert (refused.value.code, refused.value.http_status) == ("UNKNOWN_SYMBOL", 404)


def test_a_pair_whose_notional_could_be_inexact_fails_at_load() -> None:
    document = {
        "assets": {"AAA": {"decimals": 2}, "USD": {"decimals": 2}},
        "pairs": [{"symbol": "AAA-USD", "tick_size": "0.01", "lot_size": "0.01",
                   "min_qty": "0.01", "max_qty": "10", "min_notional": "1",
                   "price_decimals": 2, "qty_decimals": 2}],
    }
    with pytest.raises(ValueError, match="tick\\*lot"):
        parse_markets(document)


@given(st.integers(-10**15, 10**15), st.sampled_from(["BTC-USD", "ETH-USD", "ETH-BTC"]))
def test_integer_formatting_equals_exact_decimal_formatting(n: int, symbol: str) -> None:
    pair = load_markets().pair(symbol)
    assert pair.format_price(n) == f"{pair.tick_size * n:.{pair.price_decimals}f}"
    assert pair.format_qty(n) == f"{pair.lot_size * n:.{pair.qty_decimals}f}"
    places = pair.quote.decimals
    assert pair.quote.format(n) == f"{Decimal(n).scaleb(-places):.{places}f}"


def test_checksum_matches_the_api_example() -> None:
    bids = [["67001.5", "0.250"], ["67001.0", "1.100"]]
    asks = [["67002.0", "0.400"]]
    assert book_checksum(bids, asks, depth=50) == 4109368868
