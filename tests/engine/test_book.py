"""The pure order book: price-time priority, IOC, cancel, level changes, replay."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import order_status
from services.common.messages import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    CancelRejected,
    DuplicateIgnored,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    PlaceOrder,
    Trade,
    encode,
)
from services.common.order_status import TERMINAL, OrderState, orders_of
from services.engine import book as book_module
from services.engine.book import OrderBook, RestingOrder
from services.engine.snapshot import EngineSnapshot, restore
from tests.engine.reference import ReferenceBook, reduce_events


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
    assert book.depth("sell") == [(101, 3)]
    assert book.depth("buy") == []


def test_gtc_remainder_rests_and_ioc_remainder_expires() -> None:
    book = OrderBook()
    book.apply(place("s1", "sell", 100, 2), 1)
    ioc = book.apply(place("b1", "buy", 100, 5, "IOC"), 2)
    assert isinstance(ioc[-1], OrderExpired)
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


def test_a_resent_placement_is_ignored_even_after_its_order_ended() -> None:
    book = OrderBook()
    book.apply(place("x", "buy", 99, 4), 1)
    assert [type(e) for e in book.apply(place("x", "sell", 90, 4), 2)] == [DuplicateIgnored]
    assert book.depth("buy") == [(99, 4)]
    book.apply(CancelOrder("x", "a"), 3)
    assert [type(e) for e in book.apply(place("x", "buy", 99, 4), 4)] == [DuplicateIgnored]
    assert book.depth("buy") == []


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

order_ids = st.sampled_from([f"o{i}" for i in range(16)])
accounts = st.sampled_from(["a", "b"])
sides = st.sampled_from(["buy", "sell"])
prices = st.integers(97, 103)
sizes = st.integers(1, 10)
stp_modes = st.sampled_from(["none", "none", "cancel_newest", "cancel_oldest", "cancel_both"])
limit_orders = st.builds(
    PlaceOrder, order_ids, accounts, sides, prices, sizes,
    st.sampled_from(["GTC", "GTC", "GTC", "IOC", "FOK"]), st.just("limit"),
    st.sampled_from([False, False, False, True]), stp_modes)
market_orders = st.builds(
    PlaceOrder, order_ids, accounts, sides, st.just(0), sizes, st.sampled_from(["IOC", "FOK"]),
    st.just("market"), st.just(False), stp_modes)
budget_orders = st.builds(  # by quote amount alone, or a quantity with a spending cap
    lambda oid, acct, qty, budget, stp: PlaceOrder(oid, acct, "buy", 0, qty, "IOC", "market",
                                                   stp=stp, quote_qty=budget),
    order_ids, accounts, st.sampled_from([0, 0, 3, 8]), st.integers(50, 3000), stp_modes)
stop_orders = st.builds(
    lambda oid, acct, side, kind, price, qty, stop: PlaceOrder(
        oid, acct, side, price if kind == "stop_limit" else 0, qty, "GTC", kind,
        stop_price=stop),
    order_ids, accounts, sides, st.sampled_from(["stop_limit", "stop_market"]), prices, sizes,
    prices)


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """Pick a strategy with probability proportional to its weight."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


def unique_placements(cmds: list) -> list:
    """Give every placement its own id and point cancels and amends at earlier ones, as
    the API does (ids are never reused)."""
    placed: list[str] = []
    out = []
    for cmd in cmds:
        if isinstance(cmd, PlaceOrder):
            placed.append(f"p{len(placed)}")
            out.append(msgspec.structs.replace(cmd, order_id=placed[-1]))
        elif isinstance(cmd, CancelOrder | AmendOrder) and placed:
            target = placed[int(cmd.order_id[1:]) % len(placed)]
            out.append(msgspec.structs.replace(cmd, order_id=target))
        else:
            out.append(cmd)
    return out


# Every command type, placements with ids drawn from a few (so some are re-sent).
resent_commands = st.lists(
    weighted(
        (40, limit_orders), (6, market_orders), (4, budget_orders), (10, stop_orders),
        (10, st.builds(CancelOrder, order_ids, accounts)),
        (2, st.builds(CancelAll, accounts)),
        (12, st.builds(AmendOrder, order_ids, accounts, st.integers(0, 12),
                       st.sampled_from([0, 0, 97, 99, 100, 101, 103]))),
    ),
    min_size=5,
    max_size=80,
)
commands = resent_commands.map(unique_placements)


def run_both(cmds: list) -> tuple[OrderBook, ReferenceBook, list]:
    book, ref = OrderBook(band_bps=500), ReferenceBook(band_bps=500)
    events = []
    for ts, cmd in enumerate(cmds):
        events += book.apply(cmd, ts)
        ref.apply(cmd)
    return book, ref, events


@settings(max_examples=400, deadline=None)
@given(commands)
def test_book_matches_reference_model_event_for_event(cmds: list) -> None:
    book, ref, events = run_both(cmds)
    assert reduce_events(events) == ref.events
    assert book.depth("buy") == ref.depth("buy")
    assert book.depth("sell") == ref.depth("sell")
    assert set(book.stops) == {s.cmd.order_id for s in ref.stops}
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


@settings(max_examples=300, deadline=None)
@given(commands)
def test_book_is_never_crossed_and_every_lot_is_accounted_for(cmds: list) -> None:
    book = OrderBook()
    events = []
    for ts, cmd in enumerate(cmds):
        events += book.apply(cmd, ts)
        best_bid, best_ask = book.best_bid, book.best_ask
        assert best_bid is None or best_ask is None or best_bid < best_ask
    # Per order placed by quantity and never amended:
    # placed = filled (as maker or taker) + cancelled + expired + resting + waiting stop.
    placed: dict[str, int] = {}
    amended: set[str] = set()
    accounted: dict[str, int] = {}
    for e in events:
        if isinstance(e, OrderAccepted) and not e.quote_qty:
            placed[e.order_id] = placed.get(e.order_id, 0) + e.qty
        elif isinstance(e, OrderAmended):
            amended.add(e.order_id)
        elif isinstance(e, Trade):
            for order_id in (e.maker_order_id, e.taker_order_id):
                accounted[order_id] = accounted.get(order_id, 0) + e.qty
        elif isinstance(e, OrderCancelled | OrderExpired):
            accounted[e.order_id] = accounted.get(e.order_id, 0) + e.remaining
    for order in book.orders.values():
        accounted[order.order_id] = accounted.get(order.order_id, 0) + order.remaining
    for order_id, (cmd, _) in book.stops.items():
        accounted[order_id] = accounted.get(order_id, 0) + cmd.qty
    for order_id, qty in placed.items():
        if order_id not in amended:
            assert accounted.get(order_id, 0) == qty, order_id


@settings(max_examples=300, deadline=None)
@given(commands)
def test_every_order_follows_the_state_machine(cmds: list) -> None:
    book = OrderBook()
    states: dict[str, OrderState] = {}
    for ts, cmd in enumerate(cmds):
        for event in book.apply(cmd, ts):
            for order_id in orders_of(event):
                current = states.get(order_id, OrderState.RECEIVED)
                states[order_id] = order_status.apply(current, event, order_id)
    for order_id in book.orders:
        assert states[order_id] in (OrderState.NEW, OrderState.PARTIALLY_FILLED)
    for order_id in book.stops:
        assert states[order_id] is OrderState.WAITING
    ended = {oid for oid, state in states.items() if state in TERMINAL}
    assert not ended & (set(book.orders) | set(book.stops))


@settings(max_examples=100, deadline=None)
@given(commands)
def test_replaying_the_same_commands_gives_identical_events(cmds: list) -> None:
    first, second = OrderBook(), OrderBook()
    assert encode([e for ts, c in enumerate(cmds) for e in first.apply(c, ts)]) == \
        encode([e for ts, c in enumerate(cmds) for e in second.apply(c, ts)])


def test_deep_books_with_heavy_cancelling_still_match_the_reference() -> None:
    """Long queues with most orders cancelled (the book compacts them) and many levels
    opened and closed deep in the book (its price heaps are rebuilt): same events and
    book as the reference model, and each best price right after every command."""
    cmds: list = []
    for i in range(300):  # one long queue per side, then most of it cancelled
        cmds.append(place(f"qs{i}", "sell", 200, 1 + i % 3, account=f"m{i % 7}"))
        cmds.append(place(f"qb{i}", "buy", 50, 1 + i % 3, account=f"m{i % 7}"))
    cmds += [CancelOrder(f"q{side}{i}", f"m{i % 7}") for i in range(300) if i % 5
             for side in ("s", "b")]
    for i in range(400):  # levels opened and closed far from the best
        side, price = ("sell", 300 + i) if i % 2 else ("buy", 40 - i % 30)
        cmds.append(place(f"d{i}", side, price, 2, account="d"))
        cmds.append(CancelOrder(f"d{i}", "d"))
    cmds.append(place("sweep-buy", "buy", 260, 400, account="t"))
    cmds.append(place("sweep-sell", "sell", 1, 400, account="t"))
    book, ref = OrderBook(band_bps=500), ReferenceBook(band_bps=500)
    events = []
    for ts, cmd in enumerate(cmds):
        events += book.apply(cmd, ts)
        ref.apply(cmd)
        asks, bids = ref.depth("sell"), ref.depth("buy")
        assert book.best_ask == (asks[0][0] if asks else None)
        assert book.best_bid == (bids[0][0] if bids else None)
    assert reduce_events(events) == ref.events
    assert book.depth("buy") == ref.depth("buy") and book.depth("sell") == ref.depth("sell")
    assert len(book.bids) + len(book.asks) == len(ref.depth("buy")) + len(ref.depth("sell"))


# ---- batches, remembered ids, snapshots ---------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.one_of(commands, resent_commands), st.lists(st.integers(1, 20), min_size=1))
def test_batches_give_the_same_events_book_and_level_changes_as_one_command_at_a_time(
        cmds: list, sizes: list[int]) -> None:
    """The engine hands the book whole batches; a batch must be exactly its commands one
    after another (the batch loop keeps the event sequence and other state in locals)."""
    single, batched = OrderBook(), OrderBook()
    stamped = list(enumerate(cmds))
    start = 0
    for size in sizes * len(cmds):
        if start >= len(cmds):
            break
        chunk = [(cmd, ts) for ts, cmd in stamped[start:start + size]]
        start += size
        one_by_one: list = []
        bids: dict[int, int] = {}
        asks: dict[int, int] = {}
        for cmd, ts in chunk:
            one_by_one += single.apply(cmd, ts)
            changed_bids, changed_asks = single.take_level_changes()
            bids.update(changed_bids)
            asks.update(changed_asks)
        assert encode(batched.apply_batch(chunk)) == encode(one_by_one)
        changed_bids, changed_asks = batched.take_level_changes()
        assert list(changed_bids.items()) == list(bids.items())
        assert list(changed_asks.items()) == list(asks.items())
    assert batched.depth("buy") == single.depth("buy")
    assert batched.depth("sell") == single.depth("sell")
    assert [(o.order_id, o.remaining) for o in batched.orders.values()] == \
        [(o.order_id, o.remaining) for o in single.orders.values()]
    assert list(batched.stops) == list(single.stops)


def test_a_resent_order_id_is_refused_for_one_to_two_generations_of_ids(monkeypatch) -> None:
    monkeypatch.setattr(book_module, "REMEMBERED_IDS", 4)
    book = OrderBook()

    def kinds(batch: list[PlaceOrder]) -> list[str]:
        return [type(e).__name__ for e in book.apply_batch([(cmd, 1) for cmd in batch])]

    # a-d fill a generation, e starts the next: a is still remembered, as is a repeat
    # within one batch.
    assert kinds([place(i, "buy", 90, 1) for i in "abcde"]) == ["OrderAccepted"] * 5
    assert kinds([place("a", "buy", 90, 1)]) == ["DuplicateIgnored"]
    assert kinds([place("x", "buy", 90, 1), place("x", "buy", 90, 1)]) == \
        ["OrderAccepted", "DuplicateIgnored"]
    # x, f, g complete the second generation, and the one holding a-d is forgotten.
    assert kinds([place(i, "buy", 90, 1) for i in "fg"]) == ["OrderAccepted"] * 2
    assert kinds([place("a", "buy", 91, 1), place("e", "buy", 91, 1)]) == \
        ["OrderAccepted", "DuplicateIgnored"]
    assert book.depth("buy") == [(91, 1), (90, 8)]


def test_a_book_restored_from_an_older_snapshot_still_goes_oldest_first() -> None:
    """Snapshots written before arrivals became event seqs hold a separate arrival
    counter, far below the seq: what they restore still comes before anything newer,
    for cancel-all and for stops triggered at one price."""
    old = EngineSnapshot(
        "1-0", 0, "epoch", 40, 3, 100, 3,
        [("old-bid", "alice", "buy", 99, 5, 5, False, 1)],
        [(PlaceOrder("old-stop", "alice", "buy", 0, 1, "IOC", "stop_market",  # type: ignore[arg-type]
                     stop_price=102), 2)],
        [], ["old-bid", "old-stop"], [])
    _, book, _ = restore(msgspec.msgpack.encode(old), 500)
    assert isinstance(book.orders["old-bid"], RestingOrder)
    book.apply(PlaceOrder("new-stop", "alice", "buy", 0, 1, "IOC", "stop_market",  # type: ignore[arg-type]
                          stop_price=102), 1)
    book.apply(place("new-bid", "buy", 98, 5, account="alice"), 2)
    book.apply(place("ask", "sell", 102, 1, account="bob"), 3)
    book.apply(place("ask-2", "sell", 103, 5, account="bob"), 4)
    fired = book.apply(place("lift", "buy", 102, 1, account="carol"), 5)
    assert [e.order_id for e in fired if type(e).__name__ == "OrderTriggered"] == \
        ["old-stop", "new-stop"]
    cancelled = book.apply(CancelAll("alice"), 6)
    assert [e.order_id for e in cancelled] == ["old-bid", "new-bid"]
