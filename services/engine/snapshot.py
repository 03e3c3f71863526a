"""Engine state snapshots: everything replay would rebuild, as of one committed input.

Restart = the latest snapshot + replay of the inputs committed after it (DESIGN §5).
The snapshot is taken in a forked child, which has a copy-on-write image of the book
at a batch boundary, so matching never waits for it; the parent only ships the bytes.
"""

from __future__ import annotations

import msgspec

from services.common.messages import PlaceOrder
from services.engine.book import OrderBook, RestingOrder
from services.engine.candles import Bar, Candles


class EngineSnapshot(msgspec.Struct, frozen=True, array_like=True):
    last_input_id: str  # the input the state includes, and nothing after
    md_seq: int
    epoch: str
    last_seq: int
    last_trade_id: int
    last_price: int  # 0: no trade yet
    # The book's arrival counter in older snapshots; arrivals are now event seqs, so this
    # is the last seq again, kept so that snapshots of either kind decode. Restoring never
    # needs it: orders keep their recorded arrivals, and every later arrival is a later
    # seq, hence larger (the old counter never ran ahead of the seq).
    arrivals: int
    # (order_id, account_id, side, price, qty, remaining, post_only, arrival), by arrival
    orders: list[tuple[str, str, str, int, int, int, bool, int]]
    stops: list[tuple[PlaceOrder, int]]
    seen_older: list[str]  # the book's two generations of remembered order ids
    seen_recent: list[str]
    bars: list[tuple[str, int, int, int, int, int, int, int, int]]


def capture(book: OrderBook, candles: Candles, *, last_input_id: str, md_seq: int,
            epoch: str) -> bytes:
    orders = sorted(book.orders.values(), key=lambda o: o.arrival)
    return msgspec.msgpack.encode(EngineSnapshot(
        last_input_id, md_seq, epoch, book.last_seq, book.last_trade_id,
        book.last_price or 0, book.last_seq,
        [(o.order_id, o.account_id, o.side, o.price, o.qty, o.remaining, o.post_only,
          o.arrival) for o in orders],
        list(book.stops.values()), list(book.seen_older), list(book.seen_recent),
        [(b.interval, b.t, b.o, b.h, b.l, b.c, b.v, b.qv, b.n) for b in candles.current.values()],
    ))


_decoder = msgspec.msgpack.Decoder(EngineSnapshot)


def restore(blob: bytes, band_bps: int) -> tuple[EngineSnapshot, OrderBook, Candles]:
    """The book and candles a snapshot describes (its counters in the snapshot)."""
    snap = _decoder.decode(blob)
    book = OrderBook(band_bps=band_bps)
    book.last_seq, book.last_trade_id = snap.last_seq, snap.last_trade_id
    book.last_price = snap.last_price or None
    for order_id, account_id, side, price, qty, remaining, post_only, arrival in snap.orders:
        order = RestingOrder(order_id, account_id, side, price, qty, remaining, post_only)
        order.arrival = arrival
        book.restore_order(order)
    for cmd, arrival in snap.stops:
        book.restore_stop(cmd, arrival)
    book.take_level_changes()  # a restored book has changed nothing yet
    book.seen_older, book.seen_recent = set(snap.seen_older), set(snap.seen_recent)
    candles = Candles()
    for interval, t, o, h, l, c, v, qv, n in snap.bars:  # noqa: E741
        bar = Bar(interval, t, o)
        bar.h, bar.l, bar.c, bar.v, bar.qv, bar.n = h, l, c, v, qv, n
        candles.current[interval] = bar
    return snap, book, candles
