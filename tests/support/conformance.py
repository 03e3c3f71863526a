"""A market-data conformance client: proves that every frame of a WebSocket stream keeps
the public contract (docs/api.md).

The checkers are pure (frames in, violations out; no socket, no clock):
- `BookChecker` keeps a local book of one depth from `book` snapshots and deltas, checks
  every message's `epoch` and `seq`/`prev_seq` chain, caps the book at its depth as a real
  client does, and compares the CRC-32 of its OWN book with the message's `checksum`.
  The checksum is computed here from the documented definition, not with the server's code,
  so a fault shared by the server's book and its checksum cannot pass unnoticed.
- `TradesChecker`: trade ids consecutive, frames in seq order.
- `CandlesChecker`: per interval, bar time never goes back, a bar's states in order, a bar
  closed (sent once more with `closed: true`) before a newer one starts.
- `MarketDataChecker` routes one connection's frames to them and checks replies and
  heartbeats.

`StreamClient` is the socket side: it only moves frames from a connection into a handler.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
from sortedcontainers import SortedDict
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from services.common.intervals import INTERVALS_MS

Frame = dict[str, Any]
WireLevel = list[str]  # [px, qty], the exact wire strings

CHECKSUM_DEPTH = 25  # the checksum covers the top min(25, depth) levels


def api_checksum(bids: Sequence[WireLevel], asks: Sequence[WireLevel], depth: int) -> int:
    """The documented `checksum` of a book whose levels are `bids`/`asks`, best first:
    tokens bid[i].px, bid[i].qty, ask[i].px, ask[i].qty for i < min(25, depth), a side
    without level i giving none, joined with ':'; unsigned CRC-32 of the ASCII."""
    tokens: list[str] = []
    for i in range(min(CHECKSUM_DEPTH, depth)):
        for side in (bids, asks):
            if i < len(side):
                tokens.extend(side[i])
    return zlib.crc32(":".join(tokens).encode("ascii"))


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


@dataclass(frozen=True)
class WireFormat:
    """A pair's wire strings: decimal strings with the pair's fixed decimals (docs/api.md)."""

    price_decimals: int
    qty_decimals: int

    @classmethod
    def of_market(cls, market: dict[str, Any]) -> WireFormat:
        """From one entry of REST GET /markets."""
        return cls(int(market["price_decimals"]), int(market["qty_decimals"]))

    def price_error(self, px: object) -> str | None:
        if not isinstance(px, str) or _decimals(px) != self.price_decimals or Decimal(px) <= 0:
            return f"price {px!r} is not a positive decimal string with {self.price_decimals}" \
                   " decimals"
        return None

    def qty_error(self, qty: object, zero_allowed: bool) -> str | None:
        if qty == "0" and zero_allowed:
            return None
        if not isinstance(qty, str) or _decimals(qty) != self.qty_decimals or Decimal(qty) <= 0:
            return f"quantity {qty!r} is not a positive decimal string with " \
                   f"{self.qty_decimals} decimals"
        return None


class _Side:
    """One side of a local book: wire levels kept sorted best first."""

    __slots__ = ("bids", "levels")

    def __init__(self, bids: bool) -> None:
        self.bids = bids
        self.levels: SortedDict = SortedDict()  # sort key -> [px, qty]

    def _key(self, px: str) -> Decimal:
        price = Decimal(px)
        return -price if self.bids else price  # best first either way

    def replace(self, levels: Iterable[WireLevel]) -> None:
        self.levels = SortedDict({self._key(px): [px, qty] for px, qty in levels})

    def set(self, px: str, qty: str) -> None:
        """docs/api.md: quantities are absolute, "0" removes the level."""
        if Decimal(qty) == 0:
            self.levels.pop(self._key(px), None)
        else:
            self.levels[self._key(px)] = [px, qty]

    def trim(self, depth: int) -> int:
        """Keep the best `depth` levels, as a client capping its book does; how many went."""
        extra = len(self.levels) - depth
        for _ in range(max(0, extra)):
            self.levels.popitem(-1)
        return max(0, extra)

    def top(self, n: int | None = None) -> list[WireLevel]:
        return [list(level) for level in islice(self.levels.values(), n)]

    def best(self) -> Decimal | None:
        return Decimal(self.levels.peekitem(0)[1][0]) if self.levels else None


class BookChecker:
    """A client's local book of one pair at one depth, checked at every message.

    `violations` lists every broken rule; a chain break or an epoch change without a
    snapshot also sets `needs_resync` (a real client then resubscribes), and deltas are
    ignored until the next snapshot.
    """

    def __init__(self, symbol: str, depth: int, wire: WireFormat | None = None) -> None:
        self.symbol = symbol
        self.depth = depth
        self.wire = wire
        self.epoch: str | None = None
        self.seq: int | None = None
        self.needs_resync = False
        self.bids = _Side(bids=True)
        self.asks = _Side(bids=False)
        self.snapshots = 0
        self.deltas = 0
        self.seqs: list[int] = []  # the seq of every applied message, in order
        self.violations: list[str] = []

    @property
    def synced(self) -> bool:
        return self.seq is not None and not self.needs_resync

    def book(self) -> tuple[list[WireLevel], list[WireLevel]]:
        """The local book, best first: what REST's book at this depth must equal."""
        return self.bids.top(), self.asks.top()

    def checksum(self) -> int:
        k = min(CHECKSUM_DEPTH, self.depth)
        return api_checksum(self.bids.top(k), self.asks.top(k), self.depth)

    def apply(self, frame: Frame) -> None:
        """Apply one `book` frame of this pair and depth, checking it."""
        where = f"book {self.symbol}@{self.depth} seq {frame.get('seq')}"
        if frame.get("symbol") != self.symbol or frame.get("depth", self.depth) != self.depth:
            self._violate(f"{where}: frame of another book ({frame.get('symbol')}"
                          f"@{frame.get('depth')})")
            return
        kind = frame.get("type")
        if kind == "snapshot":
            self._snapshot(frame, where)
        elif kind == "delta":
            if self.needs_resync:
                return  # the stream was broken: only a snapshot can restart it
            if self.seq is None:
                self._violate(f"{where}: a delta before any snapshot")
                self.needs_resync = True
                return
            if not self._delta(frame, where):
                return
        else:
            self._violate(f"{where}: unknown book message type {kind!r}")
            return
        self.seqs.append(frame["seq"])
        self._check_book(frame, where)

    def _snapshot(self, frame: Frame, where: str) -> None:
        epoch, seq = frame["epoch"], frame["seq"]
        if self.seq is not None and epoch == self.epoch and seq < self.seq:
            self._violate(f"{where}: a snapshot goes back from seq {self.seq}")
        for name, side in (("bids", self.bids), ("asks", self.asks)):
            levels = frame[name]
            self._check_levels(levels, where, zero_allowed=False)
            if len(levels) > self.depth:
                self._violate(f"{where}: snapshot holds {len(levels)} {name} > depth")
            side.replace(levels)
            if len(side.levels) != len(levels) or side.top() != [list(lv) for lv in levels]:
                self._violate(f"{where}: snapshot {name} not strictly best first")
        self.epoch, self.seq = epoch, seq
        self.needs_resync = False
        self.snapshots += 1

    def _delta(self, frame: Frame, where: str) -> bool:
        """Apply a delta; False when it cannot apply (the stream must be resynced)."""
        if frame["epoch"] != self.epoch:
            self._violate(f"{where}: epoch {frame['epoch']} without a snapshot "
                          f"(have {self.epoch})")
            self.needs_resync = True
            return False
        if frame["prev_seq"] != self.seq:
            self._violate(f"{where}: prev_seq {frame['prev_seq']} does not follow seq {self.seq}")
            self.needs_resync = True
            return False
        if frame["seq"] <= frame["prev_seq"]:
            self._violate(f"{where}: seq does not rise from prev_seq {frame['prev_seq']}")
        for name, side in (("bids", self.bids), ("asks", self.asks)):
            self._check_levels(frame[name], where, zero_allowed=True)
            for px, qty in frame[name]:
                side.set(px, qty)
            # The stream sends the level that leaves the top N: nothing is left to trim.
            if dropped := side.trim(self.depth):
                self._violate(f"{where}: {dropped} {name} beyond depth were not removed")
        self.seq = frame["seq"]
        self.deltas += 1
        return True

    def _check_book(self, frame: Frame, where: str) -> None:
        bid, ask = self.bids.best(), self.asks.best()
        if bid is not None and ask is not None and bid >= ask:
            self._violate(f"{where}: crossed book, bid {bid} >= ask {ask}")
        mine = self.checksum()
        if mine != frame["checksum"]:
            self._violate(f"{where}: checksum {frame['checksum']} != {mine} of the local book")

    def _check_levels(self, levels: list[WireLevel], where: str, zero_allowed: bool) -> None:
        if self.wire is None:
            return
        for px, qty in levels:
            error = self.wire.price_error(px) or self.wire.qty_error(qty, zero_allowed)
            if error:
                self._violate(f"{where}: {error}")

    def _violate(self, what: str) -> None:
        self.violations.append(what)


class TradesChecker:
    """A pair's `trades` frames: ids consecutive (no trade missed), frames in seq order."""

    def __init__(self, symbol: str, wire: WireFormat | None = None) -> None:
        self.symbol = symbol
        self.wire = wire
        self.trades: list[Frame] = []  # every trade seen, oldest first
        self.last_seq: int | None = None
        self.violations: list[str] = []

    def apply(self, frame: Frame) -> None:
        where = f"trades {self.symbol} seq {frame.get('seq')}"
        if frame.get("symbol") != self.symbol:
            self.violations.append(f"{where}: a frame of {frame.get('symbol')}")
            return
        seq = frame["seq"]
        if self.last_seq is not None and seq <= self.last_seq:
            self.violations.append(f"{where}: seq does not rise from {self.last_seq}")
        self.last_seq = seq
        if not frame["data"]:
            self.violations.append(f"{where}: a frame without trades")
        for trade in frame["data"]:
            if self.trades and int(trade["id"]) != int(self.trades[-1]["id"]) + 1:
                self.violations.append(
                    f"{where}: trade id {trade['id']} after {self.trades[-1]['id']}")
            if trade["side"] not in ("buy", "sell"):
                self.violations.append(f"{where}: side {trade['side']!r}")
            if self.wire is not None and (error := self.wire.price_error(trade["px"])
                                          or self.wire.qty_error(trade["qty"], False)):
                self.violations.append(f"{where}: {error}")
            self.trades.append(trade)


class CandlesChecker:
    """A pair's `candles` frames, per interval: a bar's start `t` on the interval's grid
    and never going back; a bar's states in order (its trade count `n` never falls); a
    closed bar stays closed; a newer bar only after the previous one was sent closed."""

    def __init__(self, symbol: str, intervals: Iterable[str]) -> None:
        self.symbol = symbol
        self.latest: dict[str, Frame] = {interval: {} for interval in intervals}
        self.frames = dict.fromkeys(self.latest, 0)
        self.violations: list[str] = []

    def apply(self, frame: Frame) -> None:
        interval, bar = frame.get("interval"), frame["data"]
        where = f"candles {self.symbol} {interval} t {bar.get('t')}"
        if frame.get("symbol") != self.symbol or interval not in self.latest:
            self.violations.append(f"{where}: a frame nobody subscribed to")
            return
        last = self.latest[interval]
        t, n, closed = bar["t"], bar["n"], bar["closed"]
        if t % INTERVALS_MS[interval]:
            self.violations.append(f"{where}: bar start not on the interval's grid")
        if last:
            if t < last["t"]:
                self.violations.append(f"{where}: time goes back from {last['t']}")
            elif t == last["t"]:
                if n < last["n"]:
                    self.violations.append(f"{where}: n falls from {last['n']} to {n}")
                if last["closed"] and not closed:
                    self.violations.append(f"{where}: a closed bar reopened")
            elif not last["closed"]:
                self.violations.append(f"{where}: bar {last['t']} never sent closed")
        o, h, low, c = (Decimal(bar[k]) for k in ("o", "h", "l", "c"))
        if not low <= min(o, c) <= max(o, c) <= h:
            self.violations.append(f"{where}: inconsistent o/h/l/c {o}/{h}/{low}/{c}")
        self.frames[interval] += 1
        self.latest[interval] = bar


class MarketDataChecker:
    """Everything one connection receives for one pair: at most one book depth, trades,
    candle intervals. Replies must be ok; a heartbeat's `pos` must be the local book's seq
    (it is sent only once everything before it was written)."""

    def __init__(self, symbol: str, *, depth: int | None = None, trades: bool = False,
                 intervals: Sequence[str] = (), wire: WireFormat | None = None) -> None:
        self.symbol = symbol
        self.book = BookChecker(symbol, depth, wire) if depth else None
        self.trades = TradesChecker(symbol, wire) if trades else None
        self.candles = CandlesChecker(symbol, intervals) if intervals else None
        self.heartbeats = 0
        self.system: list[Frame] = []  # notices such as "reconnect"
        self.own_violations: list[str] = []

    def subscriptions(self) -> list[dict[str, Any]]:
        """The `subscribe` args for what this checker checks."""
        args: list[dict[str, Any]] = []
        if self.book is not None:
            args.append({"ch": "book", "symbol": self.symbol, "depth": self.book.depth})
        if self.trades is not None:
            args.append({"ch": "trades", "symbol": self.symbol})
        if self.candles is not None:
            args += [{"ch": "candles", "symbol": self.symbol, "interval": interval}
                     for interval in self.candles.latest]
        return args

    @property
    def violations(self) -> list[str]:
        found = list(self.own_violations)
        for part in (self.book, self.trades, self.candles):
            if part is not None:
                found += part.violations
        return found

    def handle(self, frame: Frame) -> None:
        """Check and apply one decoded server frame."""
        channel = frame.get("ch")
        if "op" in frame:
            if not frame.get("ok"):
                self.own_violations.append(f"request {frame.get('id')} refused: {frame}")
        elif channel == "book" and self.book is not None:
            self.book.apply(frame)
        elif channel == "trades" and self.trades is not None:
            self.trades.apply(frame)
        elif channel == "candles" and self.candles is not None:
            self.candles.apply(frame)
        elif channel == "heartbeat":
            self._heartbeat(frame)
        elif channel == "system":
            self.system.append(frame)
        else:
            self.own_violations.append(f"a frame nobody subscribed to: {frame}")

    def _heartbeat(self, frame: Frame) -> None:
        self.heartbeats += 1
        book = self.book
        if book is None or not book.synced:
            return
        pos = frame.get("pos", {}).get(f"book:{self.symbol}")
        if pos != book.seq:
            self.own_violations.append(f"heartbeat pos {pos} != local book seq {book.seq}")


# ---- the socket side ------------------------------------------------------------------

_decode = msgspec.json.decode
SLOW_LINK_RCVBUF = 4096  # bytes; the kernel doubles it
SLOW_LINK_MSS = 1460  # Ethernet


def now_ms() -> float:
    """Wall-clock ms, the clock of the frames' `ts` (times of Redis stream entries)."""
    return time.time() * 1000


class StreamClient:
    """One WebSocket connection whose frames go to `on_frame(frame, received_ms)` in a
    background task, from `__aenter__` (after subscribing to `subscriptions`) to close.

    `pause()` stops reading (the library then stops draining the socket once `max_queue`
    frames wait); `resume()` reads again. `slow_link=True` makes the connection look like a
    slow client's on a real network path, so a paused client's backlog piles up in the
    server process rather than in kernel buffers: a small receive buffer (SO_RCVBUF, so
    its TCP window stays small) and an Ethernet MSS (on loopback the 64 KiB MSS lets the
    server's kernel grow its send buffer to megabytes; with an Ethernet MSS it stays near
    200 KiB, as it would towards a real client).
    """

    def __init__(self, url: str, subscriptions: list[dict[str, Any]],
                 on_frame: Callable[[Frame, float], None], *, slow_link: bool = False,
                 max_queue: int = 16) -> None:
        self.url = url
        self.subscriptions = subscriptions
        self.on_frame = on_frame
        self.slow_link = slow_link
        self.max_queue = max_queue
        self.ws: ClientConnection | None = None
        self.bytes = 0  # received, frame payloads (ASCII JSON) only
        self.error: Exception | None = None
        self.closed = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._task: asyncio.Task[None] | None = None
        self._requests = 1  # the subscription of __aenter__ is request 1
        self._sending: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> StreamClient:
        sock = None
        if self.slow_link:
            parts = urlsplit(self.url)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # Before connect(): both are agreed in the TCP handshake.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_LINK_RCVBUF)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, SLOW_LINK_MSS)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
            except OSError:
                sock.close()
                raise
        self.ws = await connect(self.url, sock=sock, compression=None,
                                max_queue=self.max_queue, max_size=None)
        await self.ws.send(json.dumps({"op": "subscribe", "id": 1, "args": self.subscriptions}))
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._reading.set()
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.error is not None and exc[1] is None:
            raise AssertionError(f"a frame from {self.url} broke its handler") from self.error

    def request(self, op: str, args: list[dict[str, Any]]) -> None:
        """Send a client op in the background (from a frame handler, which cannot await)."""
        assert self.ws is not None
        self._requests += 1
        frame = json.dumps({"op": op, "id": self._requests, "args": args})
        task = asyncio.get_running_loop().create_task(self.ws.send(frame))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code if self.ws is not None and self.closed.is_set() else None

    def pause(self) -> None:
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            while True:
                await self._reading.wait()
                raw = await self.ws.recv()
                self.bytes += len(raw)
                self.on_frame(_decode(raw), now_ms())
        except ConnectionClosed:
            pass
        except Exception as exc:  # a frame the handler could not take: fail the block
            self.error = exc
        finally:
            self.closed.set()


def checked_client(url: str, checker: MarketDataChecker, **options: Any) -> StreamClient:
    """A connection subscribed to what `checker` checks, every frame checked. When the
    book's chain breaks it subscribes to the book again, as docs/api.md tells clients to (a
    book subscription replaces the previous one and starts with a snapshot)."""
    resubscribing = False

    def on_frame(frame: Frame, _received_ms: float) -> None:
        nonlocal resubscribing
        checker.handle(frame)
        book = checker.book
        if book is None or not book.needs_resync:
            resubscribing = False
        elif not resubscribing:
            resubscribing = True
            client.request("subscribe", [checker.subscriptions()[0]])

    client = StreamClient(url, checker.subscriptions(), on_frame, **options)
    return client


# ---- a busy market ----------------------------------------------------------------------

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SimulatedMarket:
    """The project's market simulator (`exchange simulate`) as a child process trading one
    pair through the public REST API, as it does under `make up`, until the block ends."""

    def __init__(self, api_url: str, admin_token: str, symbol: str, rate: float, *,
                 accounts: int = 8, seed: int = 7) -> None:
        self.argv = [sys.executable, "-m", "services.cli", "simulate", "--api-url", api_url,
                     "--rate", str(rate), "--accounts", str(accounts), "--pairs", symbol,
                     "--seed", str(seed)]
        # The token goes by environment, not argv: `ps` shows argv to everyone.
        self.env = {**os.environ, "EXCHANGE_ADMIN_TOKEN": admin_token}
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> SimulatedMarket:
        # Its log goes to a file: a pipe nobody reads until the end could fill and block it.
        # The file lives as long as the simulator: closed in __aexit__.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, cwd=PROJECT_ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=self.log, stderr=asyncio.subprocess.STDOUT)
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None,
                        traceback: object) -> None:
        """Stop it (SIGTERM: it finishes its current order); a simulator that had failed
        fails the block, its log attached."""
        process = self.process
        assert process is not None
        failed = process.returncode is not None  # it was never to end on its own
        if not failed:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        failed = failed or process.returncode != 0
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        self.log.close()
        if failed:
            if exc is not None:
                exc.add_note(f"the simulator failed:\n{text}")
            else:
                raise AssertionError(f"the simulator failed:\n{text}")
