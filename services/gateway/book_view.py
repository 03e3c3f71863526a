"""The gateway's copy of one pair's book and the depth-limited streams cut from it.

Pure: no I/O, no clock, no wire format. Prices are integer ticks, sizes integer lots.

`BookView` holds the whole book as published by the engine: `load()` a snapshot read
from Redis, then `apply()` every `MarketDataUpdate` in seq order. `DepthStream` turns the
view into what a client subscribed at depth N sees: after each applied update it reports
the levels of the top N that changed since the last message it emitted, including the
level that left the top N (with 0 lots) and the one that entered it, so a client applying
the messages always holds exactly the top N (API.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Literal

from sortedcontainers import SortedDict

from services.common.book_cache import CHECKSUM_LEVELS, BookSnapshot
from services.common.messages import MarketDataUpdate

Side = Literal["bids", "asks"]
Level = tuple[int, int]  # (price ticks, lots)
TopN = tuple[dict[int, int], dict[int, int]]  # a subscriber's top N: bids, asks (ticks -> lots)


class BookView:
    """One pair's full book at market-data `seq` of history `epoch`."""

    __slots__ = ("seq", "epoch", "ts", "bids", "asks")

    def __init__(self) -> None:
        self.seq = 0
        self.epoch = ""
        self.ts = 0  # time of the last applied update (or of the load): the frames' `ts`
        self.bids: SortedDict = SortedDict()  # ticks -> lots; best = highest
        self.asks: SortedDict = SortedDict()  # ticks -> lots; best = lowest

    def load(self, snapshot: BookSnapshot, ts: int = 0) -> None:
        """Replace the whole book with `snapshot` (levels with 0 lots are not expected)."""
        self.seq = snapshot.seq
        self.epoch = snapshot.epoch
        self.ts = ts
        self.bids = SortedDict(snapshot.bids)
        self.asks = SortedDict(snapshot.asks)

    def apply(self, update: MarketDataUpdate) -> bool:
        """Apply the next update; False means it cannot be applied and the caller must
        reload a snapshot (a missed update: prev_seq != seq, or another epoch).

        An update of this epoch with seq <= self.seq is already contained in the view
        (e.g. buffered while the snapshot was read) and is ignored: True, nothing changes.
        """
        if update.epoch != self.epoch:
            return False
        if update.seq <= self.seq:
            return True
        if update.prev_seq != self.seq:
            return False
        _set_levels(self.bids, update.bids)
        _set_levels(self.asks, update.asks)
        self.seq = update.seq
        self.ts = update.ts
        return True

    def top(self, side: Side, n: int) -> list[Level]:
        """The best `n` levels of `side`, best first."""
        book = self.bids if side == "bids" else self.asks
        prices = islice(book.irange(reverse=side == "bids"), n)
        return [(price, book[price]) for price in prices]


def _set_levels(book: SortedDict, levels: list[tuple[int, int]]) -> None:
    for price, lots in levels:
        if lots:
            book[price] = lots
        else:
            book.pop(price, None)


@dataclass(frozen=True, slots=True)
class DepthDelta:
    """What a depth-N subscriber must apply to go from `prev_seq` to `seq`.

    `bids`/`asks` are the changed levels (lots absolute, 0 = the level left the top N);
    `check_bids`/`check_asks` are the best min(25, N) levels after it, for the checksum.
    """

    seq: int
    prev_seq: int
    bids: list[Level]
    asks: list[Level]
    check_bids: list[Level]
    check_asks: list[Level]


class DepthStream:
    """The top-`depth` levels of a BookView as last sent to that depth's subscribers.

    Invariant (after `reset` and one `advance` per applied update): what was sent equals
    the view's current top `depth` levels, and `last_seq` is the seq of the last message
    emitted (a reset counts as one). So a NEW subscriber's snapshot is `top(view)` at
    `last_seq`, and the next delta's `prev_seq` equals that snapshot's seq.

    `advance` costs O(levels the update touched + levels crossing the depth boundary),
    not O(depth): depth 200 is no dearer than depth 10.
    """

    __slots__ = ("depth", "last_seq", "_sent", "_worst")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.last_seq = 0
        # Per side: price -> lots of the levels the subscribers hold, and the worst of
        # those prices when they are `depth` levels (None: the whole side is held).
        self._sent: dict[Side, dict[int, int]] = {"bids": {}, "asks": {}}
        self._worst: dict[Side, int | None] = {"bids": None, "asks": None}

    def reset(self, view: BookView) -> None:
        """Start over from the view's current state (after a load/resync)."""
        for side in ("bids", "asks"):
            top = view.top(side, self.depth)
            self._sent[side] = dict(top)
            self._worst[side] = top[-1][0] if len(top) == self.depth else None
        self.last_seq = view.seq

    def top(self, view: BookView) -> tuple[list[Level], list[Level]]:
        """The levels a new subscriber's snapshot holds (valid while the invariant holds)."""
        return view.top("bids", self.depth), view.top("asks", self.depth)

    def sent(self) -> TopN:
        """A copy of the levels held by an up-to-date subscriber (at `last_seq`)."""
        return dict(self._sent["bids"]), dict(self._sent["asks"])

    def changes_since(self, held: TopN) -> tuple[list[Level], list[Level]]:
        """The levels that take a subscriber holding `held` (an earlier `sent()`) to the
        current top `depth`: one delta standing for all those emitted since (conflation).
        Levels that left come first with 0 lots; a level never held is never removed."""
        result: list[list[Level]] = []
        for side, old in zip(("bids", "asks"), held, strict=True):
            now = self._sent[side]
            result.append([(price, 0) for price in old if price not in now]
                          + [(price, lots) for price, lots in now.items()
                             if old.get(price) != lots])
        return result[0], result[1]

    def advance(self, view: BookView, update: MarketDataUpdate) -> DepthDelta | None:
        """Call after `view.apply(update)` changed the view. None when the top `depth`
        levels did not change (nothing to send; `last_seq` stays), else the delta."""
        bids = self._changes(view.bids, "bids", update.bids)
        asks = self._changes(view.asks, "asks", update.asks)
        if not bids and not asks:
            return None
        k = min(CHECKSUM_LEVELS, self.depth)
        delta = DepthDelta(view.seq, self.last_seq, bids, asks,
                           view.top("bids", k), view.top("asks", k))
        self.last_seq = view.seq
        return delta

    def _changes(self, book: SortedDict, side: Side,
                 touched: list[tuple[int, int]]) -> list[Level]:
        """Bring what was sent of `side` to the book's top; return the changed levels."""
        if not touched:
            return []
        bids = side == "bids"
        old_worst = self._worst[side]
        if old_worst is not None and all(
                (price < old_worst) if bids else (price > old_worst) for price, _ in touched):
            return []  # all strictly behind a full top N: deep-book churn costs nothing
        n = self.depth
        new_worst: int | None = book.peekitem(-n if bids else n - 1)[0] if len(book) >= n else None

        def in_new_top(price: int) -> bool:
            return new_worst is None or (price >= new_worst if bids else price <= new_worst)

        sent = self._sent[side]
        changes: dict[int, int] = {}
        for price, _ in touched:
            now = book.get(price) if in_new_top(price) else None
            if sent.get(price) != now:
                changes[price] = now or 0
        # Untouched levels that crossed the boundary: pushed out behind better new levels,
        # or pulled in to replace removed ones.
        if old_worst != new_worst:
            touched_prices = {price for price, _ in touched}
            if new_worst is not None and (old_worst is None or not in_new_top(old_worst)):
                for price in _between(book, bids, better=new_worst, worse=old_worst):
                    if price not in touched_prices:
                        changes[price] = 0
            else:
                assert old_worst is not None  # they differ, and new_worst is worse or None
                for price in _between(book, bids, better=old_worst, worse=new_worst):
                    if price not in touched_prices:
                        changes[price] = book[price]
        self._worst[side] = new_worst
        for price, lots in changes.items():
            if lots:
                sent[price] = lots
            else:
                del sent[price]
        # Leaving levels first, so a client that caps its book at N never overflows.
        return sorted(changes.items(), key=lambda level: level[1] != 0)


def _between(book: SortedDict, bids: bool, better: int, worse: int | None) -> Iterator[int]:
    """Prices strictly worse than `better` and at or better than `worse` (None: no end)."""
    if bids:
        return book.irange(worse, better, inclusive=(True, False))
    return book.irange(better, worse, inclusive=(False, True))
