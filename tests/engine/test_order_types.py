"""One hand-checked scenario per order type and per self-trade prevention mode."""

from __future__ import annotations

from services.common.messages import (
    AmendOrder,
    AmendRejected,
    CancelAll,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderTriggered,
    PlaceOrder,
    Trade,
)
from services.engine.book import OrderBook


def limit(oid: str, side: str, price: int, qty: int, account: str = "m", **kw) -> PlaceOrder:
    return PlaceOrder(oid, account, side, price, qty, **kw)  # type: ignore[arg-type]


def market(oid: str, side: str, qty: int = 0, account: str = "t", **kw) -> PlaceOrder:
    return PlaceOrder(oid, account, side, 0, qty, "IOC", "market", **kw)  # type: ignore[arg-type]


def fills(events: list) -> list[tuple[int, int, str]]:
    return [(e.price, e.qty, e.maker_order_id) for e in events if isinstance(e, Trade)]


def ladder(book: OrderBook, side: str = "sell", prices=(100, 101, 102), qty: int = 5) -> None:
    for i, price in enumerate(prices):
        book.apply(limit(f"{side}{price}", side, price, qty), i)


def test_fok_fills_completely_or_expires_untouched() -> None:
    book = OrderBook()
    ladder(book)
    events = book.apply(limit("f1", "buy", 101, 11, tif="FOK"), 10)
    assert fills(events) == [] and isinstance(events[-1], OrderExpired)
    assert events[-1].reason == "fok_unfilled"
    assert book.depth("sell") == [(100, 5), (101, 5), (102, 5)]
    events = book.apply(limit("f2", "buy", 101, 10, tif="FOK"), 11)
    assert fills(events) == [(100, 5, "sell100"), (101, 5, "sell101")]


def test_post_only_rests_when_passive_and_is_rejected_never_repriced_when_it_would_take(
) -> None:
    book = OrderBook()
    ladder(book)
    rejected = book.apply(limit("p1", "buy", 100, 1, post_only=True), 10)
    assert [type(e) for e in rejected] == [OrderRejected]
    assert rejected[0].reason == "POST_ONLY_WOULD_TAKE"
    rested = book.apply(limit("p2", "buy", 99, 1, post_only=True), 11)
    assert [type(e) for e in rested] == [OrderAccepted]
    assert book.depth("buy") == [(99, 1)]


def test_market_by_quantity_sweeps_only_within_the_price_band() -> None:
    book = OrderBook(band_bps=150)  # 1.5 % of the best ask 100: up to 101
    ladder(book)
    events = book.apply(market("m1", "buy", 12), 10)
    assert fills(events) == [(100, 5, "sell100"), (101, 5, "sell101")]
    assert (events[-1].remaining, events[-1].reason) == (2, "price_band")
    assert book.depth("sell") == [(102, 5)]


def test_market_on_an_empty_book_expires_with_no_liquidity() -> None:
    events = OrderBook().apply(market("m1", "sell", 3), 1)
    assert isinstance(events[-1], OrderExpired) and events[-1].reason == "no_liquidity"


def test_market_buy_by_quote_amount_spends_at_most_its_budget() -> None:
    book = OrderBook()
    ladder(book)
    # 700 tick*lots: 5 lots at 100 (500), then 1 lot at 101 (101): 99 left < 101.
    events = book.apply(market("q1", "buy", quote_qty=700), 10)
    assert fills(events) == [(100, 5, "sell100"), (101, 1, "sell101")]
    assert events[-1].taker_done


def test_market_buy_with_quantity_and_spending_cap_stops_at_the_cap() -> None:
    book = OrderBook()
    ladder(book)
    events = book.apply(market("q2", "buy", 8, quote_qty=600), 10)
    assert fills(events) == [(100, 5, "sell100")]  # a 6th lot at 101 would cost 601
    assert isinstance(events[-1], OrderExpired) and events[-1].remaining == 3


def test_cancel_all_ends_resting_and_waiting_orders_of_one_account_only() -> None:
    book = OrderBook()
    book.apply(limit("a1", "buy", 90, 1, account="alice"), 1)
    book.apply(limit("a2", "sell", 110, 1, account="alice"), 2)
    book.apply(limit("b1", "buy", 91, 1, account="bob"), 3)
    book.apply(PlaceOrder("a3", "alice", "buy", 0, 1, type="stop_market", stop_price=105), 4)
    events = book.apply(CancelAll("alice"), 5)
    assert [(e.order_id, e.reason) for e in events] == [
        ("a1", "cancel_all"), ("a2", "cancel_all"), ("a3", "cancel_all")]
    assert book.depth("buy") == [(91, 1)] and book.depth("sell") == [] and not book.stops


def test_amend_down_keeps_priority_while_up_or_reprice_requeues() -> None:
    book = OrderBook()
    book.apply(limit("first", "sell", 100, 5), 1)
    book.apply(limit("second", "sell", 100, 5), 2)
    [amended] = book.apply(AmendOrder("first", "m", qty=3), 3)
    assert isinstance(amended, OrderAmended) and not amended.requeued
    assert fills(book.apply(market("t1", "buy", 1), 4)) == [(100, 1, "first")]
    [amended] = book.apply(AmendOrder("first", "m", qty=6), 5)  # bigger: back of the queue
    assert amended.requeued and amended.remaining == 5  # 1 of 6 already filled
    assert fills(book.apply(market("t2", "buy", 1), 6)) == [(100, 1, "second")]
    events = book.apply(AmendOrder("first", "m", price=95), 7)  # repriced
    assert isinstance(events[0], OrderAmended) and events[0].requeued
    assert book.depth("sell") == [(95, 5), (100, 4)]
    [refused] = book.apply(AmendOrder("first", "m", qty=1), 8)
    assert isinstance(refused, AmendRejected) and refused.reason == "QTY_NOT_ABOVE_FILLED"


def test_stp_cancel_newest_expires_the_incoming_order() -> None:
    book = OrderBook()
    book.apply(limit("own", "sell", 100, 5, account="x"), 1)
    events = book.apply(limit("in", "buy", 100, 5, account="x", stp="cancel_newest"), 2)
    assert fills(events) == [] and (events[-1].order_id, events[-1].reason) == ("in", "stp")
    assert book.depth("sell") == [(100, 5)]


def test_stp_cancel_oldest_cancels_the_resting_order_and_goes_on_matching() -> None:
    book = OrderBook()
    book.apply(limit("own", "sell", 100, 5, account="x"), 1)
    book.apply(limit("other", "sell", 100, 5, account="y"), 2)
    events = book.apply(limit("in", "buy", 100, 5, account="x", stp="cancel_oldest"), 3)
    assert isinstance(events[1], OrderCancelled) and events[1].order_id == "own"
    assert fills(events) == [(100, 5, "other")]


def test_stp_cancel_both_cancels_resting_and_expires_incoming() -> None:
    book = OrderBook()
    book.apply(limit("own", "sell", 100, 5, account="x"), 1)
    events = book.apply(limit("in", "buy", 100, 5, account="x", stp="cancel_both"), 2)
    assert [(type(e).__name__, e.order_id) for e in events[1:]] == [
        ("OrderCancelled", "own"), ("OrderExpired", "in")]
    assert book.depth("sell") == [] and book.depth("buy") == []


def test_stop_orders_wait_then_trigger_in_the_order_the_price_crosses_them() -> None:
    book = OrderBook()
    ladder(book, prices=(100, 101, 102, 103, 104))
    book.apply(limit("t0", "buy", 100, 1, account="t"), 5)  # last = 100
    book.apply(PlaceOrder("hi", "s", "buy", 0, 1, type="stop_market", stop_price=102), 6)
    book.apply(PlaceOrder("lo", "s", "buy", 104, 1, type="stop_limit", stop_price=101), 7)
    rejected = book.apply(PlaceOrder("now", "s", "buy", 0, 1, type="stop_market",
                                     stop_price=99), 8)
    assert rejected[-1].reason == "STOP_WOULD_TRIGGER"
    # "push" trades through 101, which triggers "lo"; its fill at 102 triggers "hi".
    events = book.apply(limit("push", "buy", 102, 9, account="t"), 9)
    triggered = [e.order_id for e in events if isinstance(e, OrderTriggered)]
    assert triggered == ["lo", "hi"]  # 101 was crossed before 102
    assert not book.stops
