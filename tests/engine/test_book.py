"""The pure order book: price-time priority, IOC, cancel, level changes, replay."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.messages import (
    CancelOrder,
    CancelRejected,
    OrderAccepted,
    OrderCancelled,
    OrderRejected,
    PlaceOrder,
    Trade,
)
from services.engine.book import OrderBook


def place(oid: str, side: str, price: int, qty: int, tif: str = "GTC",
          account: str = "a") -> PlaceOrder:
    return PlaceOrder(oid, account, side, price, qty, tif)  # type: ignore[arg-type]


def trades(events: list) -> list[tuple[int, int, str, str]]:
    return [(e.price, e.qty, e.maker_order_id, e.taker_order_id)
            for e in events if isinstance(e, Trade)]


def test_crossing_order_trades_at_maker_price_best_price_first_then_time() -> None:
    book = OrderBook()
    book.apply(place("s1", "sell", 101, 5), 1)
    book.apply(place("s2", "sell", 100, 5), 2)
    book.apply(place("s3", "sell", 100, 5), 3)
    events = book.apply(place("b1", "buy", 101, 12), 4)
    assert trades(events) == [(100, 5, "s2", "b1"), (100, 5, "s3", "b1"), (101, 2, "s1", "b1")]
    assert [e.trade_id for e in events if isinstance(e, Trade)] == [1, 2, 3]
    assert events[-1].taker_done and not events[-1].maker_done
    assert list(book.depth("sell")) == [(101, 3)]
    assert list(book.depth("buy")) == []


def test_gtc_remainder_rests_and_ioc_remainder_is_cancelled() -> None:
    book = OrderBook()
    book.apply(place("s1", "sell", 100, 2), 1)
    ioc = book.apply(place("b1", "buy", 100, 5, "IOC"), 2)
    assert isinstance(ioc[-1], OrderCancelled)
    assert (ioc[-1].remaining, ioc[-1].reason) == (3, "ioc_remainder")
    assert list(book.depth("buy")) == []
    book.apply(place("b2", "buy", 99, 4), 3)
    assert list(book.depth("buy")) == [(99, 4)]


def test_cancel_removes_only_own_open_order() -> None:
    book = OrderBook()
    book.apply(place("b1", "buy", 99, 4, account="alice"), 1)
    refused = book.apply(CancelOrder("b1", "mallory"), 2)
    assert isinstance(refused[0], CancelRejected)
    assert list(book.depth("buy")) == [(99, 4)]
    done = book.apply(CancelOrder("b1", "alice"), 3)
    assert isinstance(done[0], OrderCancelled) and done[0].remaining == 4
    assert list(book.depth("buy")) == []
    again = book.apply(CancelOrder("b1", "alice"), 4)
    assert isinstance(again[0], CancelRejected)


def test_duplicate_order_id_is_rejected_without_touching_the_book() -> None:
    book = OrderBook()
    book.apply(place("x", "buy", 99, 4), 1)
    events = book.apply(place("x", "sell", 90, 4), 2)
    assert [type(e) for e in events] == [OrderRejected]
    assert list(book.depth("buy")) == [(99, 4)]


def test_level_changes_report_absolute_totals_and_removed_levels() -> None:
    book = OrderBook()
    book.apply(place("s1", "sell", 100, 2), 1)
    book.apply(place("s2", "sell", 100, 3), 2)
    book.apply(place("b0", "buy", 98, 1), 3)
    assert book.take_level_changes() == ({98: 1}, {100: 5})
    book.apply(place("b1", "buy", 100, 5), 4)
    assert book.take_level_changes() == ({}, {100: 0})
    assert book.take_level_changes() == ({}, {})


# ---- property: the book against an obviously-correct reference model ------------------


@dataclass
class RefOrder:
    oid: str
    account: str
    side: str
    price: int
    qty: int
    arrival: int


class ReferenceBook:
    """Scan-everything matching: slow, short, and easy to check by eye."""

    def __init__(self) -> None:
        self.resting: list[RefOrder] = []
        self.arrivals = 0
        self.trades: list[tuple[int, int, str, str]] = []

    def place(self, cmd: PlaceOrder) -> None:
        if any(o.oid == cmd.order_id for o in self.resting):
            return
        remaining = cmd.qty
        while remaining:
            crossing = [o for o in self.resting if o.side != cmd.side and (
                o.price <= cmd.price if cmd.side == "buy" else o.price >= cmd.price)]
            if not crossing:
                break
            best = min(crossing, key=lambda o: (o.price if cmd.side == "buy" else -o.price,
                                                o.arrival))
            qty = min(remaining, best.qty)
            self.trades.append((best.price, qty, best.oid, cmd.order_id))
            best.qty -= qty
            remaining -= qty
            if best.qty == 0:
                self.resting.remove(best)
        if remaining and cmd.tif == "GTC":
            self.arrivals += 1
            self.resting.append(RefOrder(cmd.order_id, cmd.account_id, cmd.side, cmd.price,
                                         remaining, self.arrivals))

    def cancel(self, cmd: CancelOrder) -> None:
        self.resting = [o for o in self.resting
                        if not (o.oid == cmd.order_id and o.account == cmd.account_id)]

    def depth(self, side: str) -> list[tuple[int, int]]:
        totals: dict[int, int] = {}
        for o in self.resting:
            if o.side == side:
                totals[o.price] = totals.get(o.price, 0) + o.qty
        return sorted(totals.items(), reverse=(side == "buy"))


order_ids = st.sampled_from([f"o{i}" for i in range(30)])
commands = st.lists(
    st.one_of(
        st.builds(place, order_ids, st.sampled_from(["buy", "sell"]),
                  st.integers(95, 105), st.integers(1, 10), st.sampled_from(["GTC", "IOC"]),
                  st.sampled_from(["a", "b"])),
        st.builds(CancelOrder, order_ids, st.sampled_from(["a", "b"])),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(commands)
def test_book_matches_reference_model_and_conserves_quantity(cmds: list) -> None:
    book, ref = OrderBook(), ReferenceBook()
    events = []
    for ts, cmd in enumerate(cmds):
        events += book.apply(cmd, ts)
        if isinstance(cmd, PlaceOrder):
            ref.place(cmd)
        else:
            ref.cancel(cmd)
    assert trades(events) == ref.trades
    assert list(book.depth("buy")) == ref.depth("buy")
    assert list(book.depth("sell")) == ref.depth("sell")
    best_bid, best_ask = book.best_bid(), book.best_ask()
    assert best_bid is None or best_ask is None or best_bid < best_ask  # never crossed
    # Every accepted lot is filled (counted on both sides), cancelled, or resting.
    accepted = sum(e.qty for e in events if isinstance(e, OrderAccepted))
    filled = 2 * sum(e.qty for e in events if isinstance(e, Trade))
    cancelled = sum(e.remaining for e in events if isinstance(e, OrderCancelled))
    resting = sum(o.remaining for o in book.orders.values())
    assert accepted == filled + cancelled + resting
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


@settings(max_examples=100, deadline=None)
@given(commands)
def test_replaying_the_same_commands_gives_identical_events(cmds: list) -> None:
    from services.common.messages import encode

    first, second = OrderBook(), OrderBook()
    assert encode([e for ts, c in enumerate(cmds) for e in first.apply(c, ts)]) == \
        encode([e for ts, c in enumerate(cmds) for e in second.apply(c, ts)])
