"""The simulated traders' view of a pair follows the public WebSocket contract."""

from __future__ import annotations

from decimal import Decimal

from services.simulator.view import PairView


def book(kind: str, seq: int, bids: list[list[str]], asks: list[list[str]],
         prev: int | None = None, epoch: str = "e1") -> dict[str, object]:
    frame: dict[str, object] = {"ch": "book", "symbol": "BTC-USD", "type": kind, "seq": seq,
                                "epoch": epoch, "bids": bids, "asks": asks}
    if prev is not None:
        frame["prev_seq"] = prev
    return frame


def test_the_touch_follows_snapshots_and_deltas_and_a_gap_hides_it_until_a_snapshot() -> None:
    view = PairView("BTC-USD", Decimal("0.01"))
    assert (view.best_bid(), view.best_ask()) == (None, None)  # nothing seen yet
    view.apply(book("snapshot", 10, [["100.00", "1.0000"], ["99.50", "2.0000"]],
                    [["100.50", "1.0000"]]))
    assert (view.best_bid(), view.best_ask()) == (10000, 10050)
    view.apply(book("delta", 11, [["100.00", "0"]], [["100.25", "0.5000"]], prev=10))
    assert (view.best_bid(), view.best_ask()) == (9950, 10025)
    # seq 12 was missed: the book may be wrong, so the traders stop trusting it...
    view.apply(book("delta", 13, [["99.90", "1.0000"]], [], prev=12))
    assert view.needs_resync and (view.best_bid(), view.best_ask()) == (None, None)
    # ...until a fresh snapshot, which replaces it whole.
    view.apply(book("snapshot", 20, [["99.00", "1.0000"]], [["101.00", "1.0000"]]))
    assert (view.best_bid(), view.best_ask()) == (9900, 10100)
    assert view.book_updates == 3


def test_each_trade_seen_is_liquidity_a_maker_may_put_back_on_the_side_it_left() -> None:
    view = PairView("BTC-USD", Decimal("0.01"))
    view.apply({"ch": "trades", "symbol": "BTC-USD", "data": [
        {"id": "1", "px": "100.50", "qty": "0.1000", "side": "buy", "ts": 1},
        {"id": "2", "px": "99.00", "qty": "0.2000", "side": "sell", "ts": 2}]})
    # A buy taker lifted an ask; a sell taker hit a bid.
    assert list(view.taken) == [("sell", 10050), ("buy", 9900)]
    assert view.trades_seen == 2
