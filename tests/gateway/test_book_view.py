"""The gateway's pure book copy and depth-limited streams (no I/O)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.book_cache import BookSnapshot, book_checksum
from services.common.messages import MarketDataUpdate
from services.common.pairs import load_markets
from services.gateway import frames
from services.gateway.book_view import BookView, DepthDelta, DepthStream

EPOCH = "e7f3"
WIRE = frames.PairWire(load_markets().pair("BTC-USD"))


def update(seq: int, bids: list[tuple[int, int]] = (), asks: list[tuple[int, int]] = (),
           epoch: str = EPOCH, prev_seq: int | None = None) -> MarketDataUpdate:
    return MarketDataUpdate(seq=seq, prev_seq=seq - 1 if prev_seq is None else prev_seq,
                            ts=1_000 + seq, epoch=epoch, bids=list(bids), asks=list(asks),
                            trades=[])


def loaded(seq: int = 5, bids=((100, 1), (99, 2), (98, 3)), asks=((101, 4), (102, 5))) -> BookView:
    view = BookView()
    view.load(BookSnapshot(seq, EPOCH, list(bids), list(asks)), ts=7)
    return view


class ClientBook:
    """What a WebSocket client does with the stream: snapshot, then deltas by prev_seq."""

    def __init__(self, stream: DepthStream, view: BookView) -> None:
        bids, asks = stream.top(view)  # the snapshot a new subscriber gets
        self.seq = stream.last_seq
        self.bids = dict(bids)
        self.asks = dict(asks)

    def apply(self, delta: DepthDelta) -> None:
        assert delta.prev_seq == self.seq, "a delta must continue the client's seq"
        assert delta.seq > delta.prev_seq
        for book, changes in ((self.bids, delta.bids), (self.asks, delta.asks)):
            for price, lots in changes:
                if lots:
                    book[price] = lots
                else:
                    assert price in book, "only a level the client holds can leave"
                    del book[price]
        self.seq = delta.seq

    def top(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return sorted(self.bids.items(), reverse=True), sorted(self.asks.items())


# ---- BookView ---------------------------------------------------------------------------


def test_load_and_top_are_best_first() -> None:
    view = loaded()
    assert (view.seq, view.epoch, view.ts) == (5, EPOCH, 7)
    assert view.top("bids", 2) == [(100, 1), (99, 2)]
    assert view.top("asks", 10) == [(101, 4), (102, 5)]


def test_apply_sets_and_removes_levels_absolutely() -> None:
    view = loaded()
    assert view.apply(update(6, bids=[(100, 0), (97, 9)], asks=[(101, 1)]))
    assert view.seq == 6 and view.ts == 1006
    assert view.top("bids", 5) == [(99, 2), (98, 3), (97, 9)]
    assert view.top("asks", 5) == [(101, 1), (102, 5)]


def test_gap_is_reported_and_changes_nothing() -> None:
    view = loaded()
    assert not view.apply(update(7, bids=[(100, 0)]))  # seq 6 was missed
    assert view.seq == 5 and view.top("bids", 1) == [(100, 1)]


def test_old_updates_are_ignored() -> None:
    view = loaded()
    assert view.apply(update(5, bids=[(100, 0)]))  # already contained in the snapshot
    assert view.apply(update(3, bids=[(100, 0)]))
    assert view.seq == 5 and view.top("bids", 1) == [(100, 1)]


def test_another_epoch_is_a_gap() -> None:
    view = loaded()
    assert not view.apply(update(6, epoch="beef"))
    assert not view.apply(update(1, epoch="beef", prev_seq=0))


# ---- DepthStream --------------------------------------------------------------------------


def test_depth_stream_sends_leaving_and_entering_levels() -> None:
    view = loaded()
    stream = DepthStream(2)
    stream.reset(view)
    assert (stream.last_seq, stream.top(view)[0]) == (5, [(100, 1), (99, 2)])

    u = update(6, bids=[(100, 0)])  # best bid leaves: 98 enters the top 2
    view.apply(u)
    delta = stream.advance(view, u)
    assert delta == DepthDelta(6, 5, [(100, 0), (98, 3)], [], [(99, 2), (98, 3)],
                               [(101, 4), (102, 5)])

    u = update(7, bids=[(101, 5)], asks=[(103, 1)])  # new best bid pushes 98 out
    view.apply(u)
    delta = stream.advance(view, u)
    assert delta is not None
    assert (delta.seq, delta.prev_seq) == (7, 6)
    assert delta.bids == [(98, 0), (101, 5)] and delta.asks == []


def test_depth_stream_is_silent_when_its_top_does_not_change() -> None:
    view = loaded()
    stream = DepthStream(2)
    stream.reset(view)
    for _, u in ((6, update(6, bids=[(98, 7)])), (7, update(7, asks=[(150, 1)]))):
        view.apply(u)
        assert stream.advance(view, u) is None
        assert stream.last_seq == 5  # a new subscriber's snapshot is still seq 5
    u = update(8, bids=[(99, 1)])
    view.apply(u)
    delta = stream.advance(view, u)
    assert delta is not None and (delta.prev_seq, delta.seq) == (5, 8)


levels = st.lists(st.tuples(st.integers(1, 40), st.integers(0, 4)), max_size=6)
book_side = st.dictionaries(st.integers(1, 40), st.integers(1, 4), max_size=25)


@settings(max_examples=300, deadline=None)
@given(initial_bids=book_side, initial_asks=book_side,
       updates=st.lists(st.tuples(levels, levels), min_size=1, max_size=40),
       depth=st.sampled_from([1, 3, 10]), join_at=st.integers(0, 40))
def test_a_client_of_the_stream_always_holds_the_true_top_n(
        initial_bids: dict[int, int], initial_asks: dict[int, int],
        updates: list[tuple[list[tuple[int, int]], list[tuple[int, int]]]],
        depth: int, join_at: int) -> None:
    # Asks live 100 ticks above bids so the book never crosses, as the engine's never does.
    asks_offset = 100
    view = BookView()
    view.load(BookSnapshot(10, EPOCH, sorted(initial_bids.items(), reverse=True),
                           sorted((p + asks_offset, q) for p, q in initial_asks.items())))
    stream = DepthStream(depth)
    stream.reset(view)
    clients = [ClientBook(stream, view)]
    for i, (bids, asks) in enumerate(updates):
        if i == join_at:  # a subscriber arriving mid-stream gets the stream's snapshot
            clients.append(ClientBook(stream, view))
        u = update(11 + i, bids=bids, asks=[(p + asks_offset, q) for p, q in asks])
        assert view.apply(u)
        delta = stream.advance(view, u)
        true_top = (view.top("bids", depth), view.top("asks", depth))
        for client in clients:
            if delta is not None:
                client.apply(delta)
            # Silence (None) is only right if the client's book is still the true top.
            assert client.top() == true_top
        if delta is not None:
            k = min(25, depth)
            assert (delta.check_bids, delta.check_asks) == (true_top[0][:k], true_top[1][:k])
            client_bids, client_asks = clients[0].top()
            assert WIRE.checksum(delta.check_bids, delta.check_asks, depth) == book_checksum(
                WIRE.levels(client_bids), WIRE.levels(client_asks), depth)
    for client in clients:
        assert client.seq == stream.last_seq


@settings(max_examples=300, deadline=None)
@given(initial_bids=book_side, initial_asks=book_side,
       updates=st.lists(st.tuples(levels, levels), min_size=1, max_size=40),
       depth=st.sampled_from([1, 3, 10]), held=st.sets(st.integers(0, 40)))
def test_a_conflated_client_holds_the_true_top_n_after_one_delta(
        initial_bids: dict[int, int], initial_asks: dict[int, int],
        updates: list[tuple[list[tuple[int, int]], list[tuple[int, int]]]],
        depth: int, held: set[int]) -> None:
    """A client that skips runs of deltas (the updates in `held`) and then gets one delta
    from `changes_since` holds exactly the top N, and is never told to remove a level
    it does not hold (ClientBook asserts it)."""
    view = BookView()
    view.load(BookSnapshot(10, EPOCH, sorted(initial_bids.items(), reverse=True),
                           sorted((p + 100, q) for p, q in initial_asks.items())))
    stream = DepthStream(depth)
    stream.reset(view)
    client = ClientBook(stream, view)
    base = None
    for i, (bids, asks) in enumerate(updates):
        u = update(11 + i, bids=bids, asks=[(p + 100, q) for p, q in asks])
        view.apply(u)
        delta = stream.advance(view, u)
        if i in held:
            if base is None:  # as BookWatch.deliver: this one is queued, the next skipped
                if delta is not None:
                    client.apply(delta)
                base = stream.sent()
            continue
        if base is not None:  # drained: one delta for all that was skipped
            if stream.last_seq != client.seq:
                b, a = stream.changes_since(base)
                client.apply(DepthDelta(stream.last_seq, client.seq, b, a, [], []))
            base = None
        elif delta is not None:
            client.apply(delta)
        assert client.top() == (view.top("bids", depth), view.top("asks", depth))
