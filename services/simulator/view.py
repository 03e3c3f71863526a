"""What the simulated traders know of a pair: the top of its book and its recent trades,
as the public WebSocket shows them. Pure: frames in, state out; no socket, no clock."""

from __future__ import annotations

from collections import deque
from decimal import Decimal
from typing import Any

Frame = dict[str, Any]


class PairView:
    """One pair's book (the levels of a depth-limited `book` stream, by wire price) and
    the maker side of each trade seen since the simulator last looked.

    Follows API.md like any client: a snapshot replaces the book; a delta applies only
    where its `prev_seq` is our `seq` (and its `epoch` ours), else the view is stale
    until the next snapshot and `needs_resync` asks for one."""

    def __init__(self, symbol: str, tick: Decimal) -> None:
        self.symbol = symbol
        self.tick = tick
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.seq: int | None = None
        self.epoch: str | None = None
        self.needs_resync = False
        # (maker side, price in ticks) of trades seen: liquidity a maker may put back.
        # Bounded: a busy market overwrites what nobody got round to requoting.
        self.taken: deque[tuple[str, int]] = deque(maxlen=64)
        self.book_updates = 0
        self.trades_seen = 0

    @property
    def synced(self) -> bool:
        return self.seq is not None and not self.needs_resync

    def ticks(self, px: str) -> int:
        return int(Decimal(px) / self.tick)

    def best_bid(self) -> int | None:
        """Best bid in ticks, or None when the view has none (or is stale)."""
        if not self.synced or not self.bids:
            return None
        return max(self.ticks(px) for px in self.bids)

    def best_ask(self) -> int | None:
        if not self.synced or not self.asks:
            return None
        return min(self.ticks(px) for px in self.asks)

    def apply(self, frame: Frame) -> None:
        """Apply one server frame of this pair (`book` or `trades`); others are ignored."""
        channel = frame.get("ch")
        if channel == "trades":
            for trade in frame.get("data", ()):
                self.trades_seen += 1
                maker_side = "sell" if trade["side"] == "buy" else "buy"
                self.taken.append((maker_side, self.ticks(trade["px"])))
        elif channel == "book":
            self._apply_book(frame)

    def _apply_book(self, frame: Frame) -> None:
        if frame.get("type") == "snapshot":
            self.bids = dict(frame["bids"])
            self.asks = dict(frame["asks"])
            self.needs_resync = False
        elif (self.needs_resync or frame.get("prev_seq") != self.seq
              or frame.get("epoch") != self.epoch):
            self.needs_resync = True  # a gap: only a snapshot can repair the book
            return
        else:
            for levels, changes in ((self.bids, frame["bids"]), (self.asks, frame["asks"])):
                for px, qty in changes:
                    if Decimal(qty) == 0:
                        levels.pop(px, None)
                    else:
                        levels[px] = qty
        self.seq, self.epoch = frame["seq"], frame["epoch"]
        self.book_updates += 1
