"""The `candles` and `ticker` channels of one watched pair: state, timers, fan-out.

Both are fed by the pair's market-data updates (`CandleTick`s for every bar a batch
changed, trades, and the book via the feed's synced view) and seeded from Redis by the
feed when their first watcher arrives or after updates may have been lost. Each frame is
encoded once and the same bytes queued to every watcher.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from services.common.messages import CandleTick, MarketDataUpdate
from services.gateway import frames
from services.gateway.bars import CandleStream, RollingDay, window_start
from services.gateway.client import Client

if TYPE_CHECKING:
    from services.gateway.feed import PairFeed

CLOSE_GRACE_MS = 1000  # see bars.CandleStream
TICKER_PERIOD_S = 1.0  # at most one ticker frame per pair per second (API.md)


def now_ms() -> int:
    """Wall-clock ms: bar times come from stream entry ids, i.e. the Redis clock."""
    return int(time.time() * 1000)


class CandleChannel:
    """One interval's bars of a pair: its watchers, the current bar and its close timer."""

    def __init__(self, wire: frames.PairWire, interval: str) -> None:
        self.wire = wire
        self.interval = interval
        self.stream = CandleStream(interval, CLOSE_GRACE_MS)
        self.watchers: set[Client] = set()
        self.frame: bytes | None = None  # the last one sent: a new watcher's first frame
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, client: Client) -> None:
        self.watchers.add(client)
        if self.frame is not None:
            client.send(self.frame)

    def offer(self, ticks: list[CandleTick]) -> None:
        """Bar states of this interval, oldest first (several when a batch crossed a bar
        boundary): send what changed, closing a bar when a newer one starts."""
        stream = self.stream
        start = stream.bar.t if stream.bar else None
        now = now_ms()
        sent: list[tuple[CandleTick, bool]] = []
        for tick in ticks:
            sent += stream.apply(tick, now)
        for i, (bar, closed) in enumerate(sent):
            # An open state followed by the same bar's close says nothing more.
            if not closed and i + 1 < len(sent) and sent[i + 1][0].t == bar.t:
                continue
            self._send(bar, closed)
        if stream.bar is not None and stream.bar.t != start:
            self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        """Close the current bar when its time is up, if no newer bar starts first."""
        self.stop()
        closes_at = self.stream.closes_at
        if closes_at is not None and not self.stream.closed:
            delay = max(0.0, (closes_at - now_ms()) / 1000)
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        bar = self.stream.expire(now_ms())
        if bar is not None:
            self._send(bar, True)
        else:
            self._arm()  # the loop's clock ran ahead of the wall clock: not yet

    def _send(self, bar: CandleTick, closed: bool) -> None:
        frame = self.frame = frames.candle(self.wire, self.interval, bar, closed)
        for client in self.watchers:
            client.send(frame)


class TickerChannel:
    """A pair's ticker: last price, top of book and 24 h figures, sent at most once a
    second and only when it changed. Computed here, from the feed's synced book and the
    1-minute bars, exactly as the REST ticker computes it from Redis."""

    def __init__(self, feed: PairFeed) -> None:
        self.feed = feed
        self.watchers: set[Client] = set()
        self.day = RollingDay()
        self.loaded = False  # seeded from Redis at least once
        self.frame: bytes | None = None  # the last one sent
        self._last = 0  # last trade price in ticks (0: none yet)
        self._last_at = ("", 0)  # (epoch, md seq) that set it
        self._top: tuple[int, int, int, int] | None = None  # bid, bid lots, ask, ask lots
        self._dirty = False
        self._timer: asyncio.TimerHandle | None = None
        self._sent_at = float("-inf")  # loop time of the last frame

    def watch(self, client: Client) -> None:
        self.watchers.add(client)
        if self.frame is not None:
            client.send(self.frame)

    def load(self, at: tuple[str, int], last: int, bars: list[CandleTick]) -> None:
        """Seed from Redis: `last_price` at (epoch, md_seq) and the window's 1m bars,
        read in one MULTI. What updates brought meanwhile is kept where it is newer."""
        if self._newer(at, or_same=True):
            self._last, self._last_at = last, at
        self.day.merge(bars)
        self.loaded = True
        self.touch()

    def on_update(self, update: MarketDataUpdate) -> None:
        """Trades and 1-minute bars of an update (book changes come via `on_book`)."""
        changed = False
        for tick in update.candles:
            if tick.interval == "1m":
                changed = self.day.apply(tick) or changed
        at = (update.epoch, update.seq)
        if update.trades and self._newer(at):
            self._last, self._last_at = update.trades[-1].price, at
            changed = True
        if changed:
            self.touch()

    def on_book(self) -> None:
        """The synced book changed: only the top of it matters here."""
        top = self._top_of_book()
        if top != self._top:
            self._top = top
            self.touch()

    def touch(self) -> None:
        """Something changed: send a frame now, or at the end of the 1 s period."""
        self._dirty = True
        if self._timer is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._sent_at + TICKER_PERIOD_S - loop.time())
            self._timer = loop.call_later(delay, self._send)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data(self, now: int) -> dict[str, str | None]:
        """The REST ticker's fields as of wall-clock `now` (ms)."""
        wire, pair = self.feed.wire, self.feed.pair
        bid, bid_lots, ask, ask_lots = self._top_of_book()
        day = self.day.figures(window_start(now))
        open_, high, low, vol, quote_vol = day or (0, 0, 0, 0, 0)
        return {
            "symbol": pair.symbol,
            "last": wire.px(self._last) if self._last else None,
            "bid": wire.px(bid) if bid else None,
            "bid_qty": wire.qty(bid_lots) if bid else None,
            "ask": wire.px(ask) if ask else None,
            "ask_qty": wire.qty(ask_lots) if ask else None,
            "open_24h": wire.px(open_) if day else None,
            "high_24h": wire.px(high) if day else None,
            "low_24h": wire.px(low) if day else None,
            "vol_24h": wire.qty(vol),
            "quote_vol_24h": pair.quote.format(quote_vol),
        }

    def _newer(self, at: tuple[str, int], or_same: bool = False) -> bool:
        """Whether `at` (epoch, md seq) is after what set the last price; another epoch
        (the pair's state started over) always wins."""
        epoch, seq = self._last_at
        return at[0] != epoch or at[1] > seq or (or_same and at[1] == seq)

    def _top_of_book(self) -> tuple[int, int, int, int]:
        view = self.feed.view
        bid, bid_lots = view.bids.peekitem(-1) if view.bids else (0, 0)
        ask, ask_lots = view.asks.peekitem(0) if view.asks else (0, 0)
        return bid, bid_lots, ask, ask_lots

    def _send(self) -> None:
        self._timer = None
        if not (self._dirty and self.loaded and self.feed.live):
            return  # loading or resyncing: touched again once ready
        self._dirty = False
        frame = frames.ticker(self.feed.wire, self.data(now_ms()))
        if frame == self.frame:
            return  # e.g. the top of book came back to where it was
        self.frame = frame
        self._sent_at = asyncio.get_running_loop().time()
        for client in self.watchers:
            client.send(frame)
