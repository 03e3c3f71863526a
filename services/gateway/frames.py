"""Server -> client frames of the WebSocket API (API.md), encoded once as UTF-8 JSON.

Every function returns a complete WebSocket text frame (header and JSON payload), the
bytes written as they are to every watcher: a frame is built once per (pair, channel,
depth) and shared, never re-encoded nor re-framed per connection. Server frames are not
masked (RFC 6455 §5.1), so the same bytes are valid on every connection; the gateway
never negotiates an extension (permessage-deflate would compress per connection).
"""

from __future__ import annotations

import struct

import msgspec

from services.common.book_cache import CHECKSUM_LEVELS, book_checksum
from services.common.errors import ExchangeError
from services.common.messages import CandleTick, TradeTick
from services.common.pairs import Pair
from services.gateway.book_view import DepthDelta, Level

_json = msgspec.json.Encoder().encode
_CACHE_LIMIT = 1 << 16
_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text): every message is one unfragmented frame
_header16 = struct.Struct("!BBH").pack
_header64 = struct.Struct("!BBQ").pack


def text_frame(payload: bytes) -> bytes:
    """`payload` (UTF-8 text) as one unmasked WebSocket text frame."""
    size = len(payload)
    if size < 126:
        return bytes((_FIN_TEXT, size)) + payload
    if size < 1 << 16:
        return _header16(_FIN_TEXT, 126, size) + payload
    return _header64(_FIN_TEXT, 127, size) + payload


def _encode(doc: object) -> bytes:
    return text_frame(_json(doc))


SHUTDOWN = _encode({"ch": "system", "type": "reconnect", "reason": "server_shutdown"})
UPSTREAM_LOST = _encode({"ch": "system", "type": "reconnect", "reason": "upstream_unavailable"})


class PairWire:
    """A pair's wire strings, memoised: the same prices and sizes recur in every frame
    and Pair's exact Decimal formatting is the costly part of building one."""

    __slots__ = ("pair", "symbol", "_px", "_qty")

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.symbol = pair.symbol
        self._px: dict[int, str] = {}
        self._qty: dict[int, str] = {0: "0"}  # API.md: "0" removes a level

    def px(self, ticks: int) -> str:
        text = self._px.get(ticks)
        if text is None:
            if len(self._px) >= _CACHE_LIMIT:
                self._px.clear()  # bounded memory; a wandering market just re-warms it
            text = self._px[ticks] = self.pair.format_price(ticks)
        return text

    def qty(self, lots: int) -> str:
        text = self._qty.get(lots)
        if text is None:
            if len(self._qty) >= _CACHE_LIMIT:
                self._qty.clear()
                self._qty[0] = "0"
            text = self._qty[lots] = self.pair.format_qty(lots)
        return text

    def levels(self, levels: list[Level]) -> list[list[str]]:
        px, qty = self.px, self.qty
        return [[px(price), qty(lots)] for price, lots in levels]

    def checksum(self, bids: list[Level], asks: list[Level], depth: int) -> int:
        """API.md's checksum of a depth-`depth` book whose top levels are bids/asks."""
        k = min(CHECKSUM_LEVELS, depth)
        return book_checksum(self.levels(bids[:k]), self.levels(asks[:k]), depth)


def book_snapshot(wire: PairWire, depth: int, epoch: str, seq: int, ts: int,
                  bids: list[Level], asks: list[Level]) -> bytes:
    """The book of a depth-`depth` subscriber at `seq` (bids/asks: its top levels)."""
    wire_bids, wire_asks = wire.levels(bids), wire.levels(asks)
    return _encode({
        "ch": "book", "symbol": wire.symbol, "depth": depth, "type": "snapshot",
        "epoch": epoch, "seq": seq, "ts": ts, "bids": wire_bids, "asks": wire_asks,
        "checksum": book_checksum(wire_bids, wire_asks, depth),
    })


def book_delta(wire: PairWire, depth: int, epoch: str, ts: int, delta: DepthDelta) -> bytes:
    """A depth stream's delta; its checksum is of the client's book after applying it."""
    return _encode({
        "ch": "book", "symbol": wire.symbol, "depth": depth, "type": "delta",
        "epoch": epoch, "seq": delta.seq, "prev_seq": delta.prev_seq, "ts": ts,
        "bids": wire.levels(delta.bids), "asks": wire.levels(delta.asks),
        "checksum": wire.checksum(delta.check_bids, delta.check_asks, depth),
    })


def trades(wire: PairWire, seq: int, ticks: list[TradeTick]) -> bytes:
    """The trades of one market-data update, oldest first; `seq` is that update's seq
    (trade ids are consecutive per pair, so a client can see a missed trade)."""
    px, qty = wire.px, wire.qty
    return _encode({
        "ch": "trades", "symbol": wire.symbol, "seq": seq,
        "data": [{"id": str(t.id), "px": px(t.price), "qty": qty(t.qty), "side": t.side,
                  "ts": t.ts} for t in ticks],
    })


def candle(wire: PairWire, interval: str, bar: CandleTick, closed: bool) -> bytes:
    """One interval's bar as it stands; sent once more with `closed` true when it ends."""
    px = wire.px
    return _encode({
        "ch": "candles", "symbol": wire.symbol, "interval": interval,
        "data": {"t": bar.t, "o": px(bar.o), "h": px(bar.h), "l": px(bar.l), "c": px(bar.c),
                 "v": wire.qty(bar.v), "qv": wire.pair.quote.format(bar.qv), "n": bar.n,
                 "closed": closed},
    })


def ticker(wire: PairWire, data: dict[str, str | None]) -> bytes:
    """The pair's ticker; `data` has the REST ticker's fields."""
    return _encode({"ch": "ticker", "symbol": wire.symbol, "data": data})


def private(ch: str, seq: int, data: object) -> bytes:
    """A frame of the logged-in account's `orders`, `fills` or `balances` channel: `seq`
    is the account update it belongs to (every frame of one update carries the same)."""
    return _encode({"ch": ch, "seq": seq, "data": data})


def private_resync(channels: list[str]) -> bytes:
    """Account updates may have been lost: refetch these channels' state over REST."""
    return _encode({"ch": "system", "type": "resync", "channels": channels})


def heartbeat(ts: int, pos: dict[str, int]) -> bytes:
    """`pos` maps "book:SYMBOL" to the seq the client's book of that pair is at."""
    return _encode({"ch": "heartbeat", "ts": ts, "pos": pos})


def reply(op: str | None, request_id: int | str | None,
          error: ExchangeError | None = None) -> bytes:
    """The answer to one client op: ok, or the error's stable code and message."""
    if error is None:
        return _encode({"op": op, "id": request_id, "ok": True})
    return _encode({"op": op, "id": request_id, "ok": False,
                    "error": {"code": error.code, "message": error.message}})
