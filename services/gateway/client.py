"""One WebSocket connection's outgoing side: a bounded send queue and its writer task.

Fan-out calls `send(frame)`, which never awaits: the frame (shared bytes, encoded once)
is queued and this connection's own writer task writes it. A slow reader costs the others
nothing (DESIGN §6):
- past `conflate_at` pending bytes the connection is `congested`: its book watches stop
  queueing deltas and are `held` (feed.BookWatch); once the queue drains below the mark,
  the writer has each held watch queue ONE delta for everything it skipped (conflation);
- past `max_pending` bytes (trades, candles and the rest are never conflated) the
  connection is closed with 4008 "slow consumer".
The writer also sends the heartbeat after `heartbeat_s` without any other frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from services.gateway import frames
from services.gateway.protocol import TopicKey

if TYPE_CHECKING:
    from services.gateway.account_feed import AccountFeed
    from services.gateway.feed import PairFeed

log = logging.getLogger("exchange.gateway.client")

SLOW_CONSUMER = (4008, "slow consumer")
SHUTDOWN_CLOSE = (1001, "server shutdown")


class Watch(Protocol):
    """A connection's subscription to one channel of one pair (or of its account)."""

    feed: PairFeed | AccountFeed

    def position(self) -> int | None:
        """The seq the client's copy is at, for the heartbeat (None: not applicable yet)."""
        ...


class Held(Protocol):
    """A watch whose deltas are being conflated while its connection is congested."""

    def flush(self) -> bool:
        """Queue the one delta that stands for the skipped ones; False: not now (the
        pair is resyncing), keep it held."""
        ...


class Client:
    """A connected client: its subscriptions and its outgoing queue."""

    __slots__ = ("ws", "account_id", "subs", "held", "max_pending", "conflate_at",
                 "heartbeat_s", "_queue", "_pending", "_wakeup", "_writer", "_last_sent",
                 "_closing", "_close_after", "_close_task")

    def __init__(self, ws: ServerConnection, *, max_pending: int = 1 << 20,
                 conflate_at: int = 256 * 1024, heartbeat_s: float = 1.0) -> None:
        self.ws = ws
        self.account_id: str | None = None  # set once by a successful login, never changed
        self.subs: dict[TopicKey, Watch] = {}
        self.held: set[Held] = set()
        self.max_pending = max_pending
        self.conflate_at = conflate_at
        self.heartbeat_s = heartbeat_s
        self._queue: deque[bytes] = deque()
        self._pending = 0  # bytes queued and not yet handed to the socket
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._last_sent = time.monotonic()
        self._closing = False
        self._close_after: tuple[int, str] | None = None
        self._close_task: asyncio.Task[None] | None = None

    @property
    def pending_bytes(self) -> int:
        return self._pending

    @property
    def congested(self) -> bool:
        """Too far behind for more book deltas: conflate them instead."""
        return self._pending > self.conflate_at

    @property
    def closing(self) -> bool:
        return self._closing or self._close_after is not None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"ws-writer-{id(self.ws):x}")

    def send(self, frame: bytes) -> None:
        """Queue `frame` (UTF-8 JSON) for this client; never blocks. Over the limit, the
        connection is closed with 4008 instead. Ignored once closing."""
        if self._closing or self._close_after is not None:
            return
        self._queue.append(frame)
        self._pending += len(frame)
        if self._pending > self.max_pending:
            log.info("closing slow consumer %s (%d bytes pending)",
                     self.ws.remote_address, self._pending)
            self.close(*SLOW_CONSUMER)
            return
        self._wakeup.set()

    def close(self, code: int, reason: str) -> None:
        """Close now, dropping whatever is still queued."""
        if self._closing:
            return
        self._closing = True
        self._queue.clear()
        self._pending = 0
        self._wakeup.set()
        self._close_task = asyncio.create_task(self.ws.close(code, reason))

    def close_after(self, frame: bytes, code: int, reason: str) -> None:
        """Send what is queued, then `frame`, then close (used at shutdown)."""
        if self._closing or self._close_after is not None:
            return
        self.send(frame)  # the last frame: later ones are dropped
        self._close_after = (code, reason)
        self._wakeup.set()

    def position(self) -> dict[str, int]:
        """The heartbeat's `pos`: "book:SYMBOL" -> the seq the client's book is at."""
        pos: dict[str, int] = {}
        for (ch, symbol, _), watch in self.subs.items():
            if ch == "book" and (seq := watch.position()) is not None:
                pos["book:" + symbol] = seq
        return pos

    async def aclose(self) -> None:
        """Stop the writer (the connection is closed or closing)."""
        self._closing = True
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    def _flush_held(self) -> None:
        held, self.held = self.held, set()
        for watch in held:
            if not watch.flush():
                self.held.add(watch)

    async def _write(self) -> None:
        ws, queue = self.ws, self._queue
        try:
            while not self._closing:
                if not queue:
                    if self._close_after is not None:
                        self._closing = True
                        await ws.close(*self._close_after)
                        return
                    idle = time.monotonic() - self._last_sent
                    if idle >= self.heartbeat_s:
                        self.send(frames.heartbeat(int(time.time() * 1000), self.position()))
                        continue
                    self._wakeup.clear()
                    try:
                        async with asyncio.timeout(self.heartbeat_s - idle):
                            await self._wakeup.wait()
                    except TimeoutError:
                        pass
                    continue
                frame = queue.popleft()
                await ws.send(frame, text=True)
                self._last_sent = time.monotonic()
                if self._closing:  # close() already zeroed the count
                    continue
                self._pending -= len(frame)
                if self.held and self._pending <= self.conflate_at:
                    self._flush_held()
        except ConnectionClosed:
            self._closing = True
