"""One WebSocket connection's outgoing side, and the writer that serves them all.

Fan-out calls `Client.send(frame)`, which never awaits: the frame (a complete WebSocket
frame, framed once and shared by every watcher, see frames.py) is appended to the
connection's queue. Once per event-loop pass the gateway's `Outbox` hands each connection
everything queued for it in ONE transport write: the per-connection write, not the
per-message work, is what fan-out costs, so many messages share one write when the market
is busy, and no connection has a task or a wakeup of its own (DESIGN §6).

A slow reader costs the others nothing. Its transport is written only while what it
could not hand to the kernel stays under `WRITE_HIGH` (then again once below `WRITE_LOW`,
checked by the outbox's tick); meanwhile frames stay queued here:
- past `conflate_at` queued bytes the connection is `congested`: its book watches stop
  queueing deltas and are `held` (feed.BookWatch); once the queue is written, each held
  watch queues ONE delta for everything it skipped (conflation). The gap between the two
  transport marks is the hysteresis: a reader that stopped reading stays held even while
  the kernel trickles a few bytes out;
- past `max_pending` bytes queued and in the transport (trades, candles and the rest are
  never conflated) the connection is closed with 4008 "slow consumer".
The outbox also sends the heartbeat after `heartbeat_s` without any other frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from services.gateway import frames
from services.gateway.protocol import TopicKey

if TYPE_CHECKING:
    from services.gateway.account_feed import AccountFeed
    from services.gateway.feed import PairFeed

log = logging.getLogger("exchange.gateway.client")

SLOW_CONSUMER = (4008, "slow consumer")
SHUTDOWN_CLOSE = (1001, "server shutdown")
# A queue this big is written at once rather than at the end of the loop pass: a burst of
# updates must not look like a congested connection, nor pile up unbounded.
WRITE_NOW_BYTES = 64 * 1024
# Transport flow control (as asyncio's write buffer limits): stop writing above HIGH
# unsent bytes, resume once below LOW.
WRITE_HIGH = 32 * 1024
WRITE_LOW = 8 * 1024
# Heartbeats and paused transports are checked this many times per heartbeat period.
TICKS_PER_HEARTBEAT = 10


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
                 "_outbox", "_transport", "_out", "_queued", "_buffered", "_paused",
                 "_last_sent", "_closing", "_close_after", "_close_task")

    def __init__(self, ws: ServerConnection, outbox: Outbox, *, max_pending: int = 1 << 20,
                 conflate_at: int = 256 * 1024) -> None:
        self.ws = ws
        self.account_id: str | None = None  # set once by a successful login, never changed
        self.subs: dict[TopicKey, Watch] = {}
        self.held: set[Held] = set()
        self.max_pending = max_pending
        self.conflate_at = conflate_at
        self._outbox = outbox
        # Frames go straight to the transport, framed already: the library's per-message
        # send (a coroutine, a lock and a drain per frame) is what made fan-out slow.
        self._transport = ws.transport
        self._out: list[bytes] = []  # frames queued since the last write
        self._queued = 0  # their bytes
        self._buffered = 0  # bytes the transport held after the last write (sampled)
        self._paused = False  # the transport is over WRITE_HIGH: frames wait in the queue
        self._last_sent = outbox.now()
        self._closing = False
        self._close_after: tuple[int, str] | None = None
        self._close_task: asyncio.Task[None] | None = None

    @property
    def pending_bytes(self) -> int:
        return self._queued + self._buffered

    @property
    def congested(self) -> bool:
        """Too far behind for more book deltas: conflate them instead."""
        return self._queued > self.conflate_at

    @property
    def closing(self) -> bool:
        return self._closing or self._close_after is not None

    def send(self, frame: bytes) -> None:
        """Queue `frame` (a WebSocket frame from frames.py) for this client; never blocks.
        Over the limit, the connection is closed with 4008 instead. Ignored once closing."""
        if self._closing or self._close_after is not None:
            return
        out = self._out
        if not out:
            self._outbox.schedule(self)
        out.append(frame)
        self._queued += len(frame)
        if self._queued + self._buffered > self.max_pending:
            self._slow()
        elif self._queued >= WRITE_NOW_BYTES and not self._paused:
            self.write(self._outbox.now())

    def close(self, code: int, reason: str) -> None:
        """Close now, dropping whatever is still queued."""
        if self._closing:
            return
        self._closing = True
        self._out.clear()
        self._queued = 0
        self._close_task = asyncio.create_task(self.ws.close(code, reason))

    def close_after(self, frame: bytes, code: int, reason: str) -> None:
        """Send what is queued, then `frame`, then close (used at shutdown)."""
        if self._closing or self._close_after is not None:
            return
        self.send(frame)  # the last frame: later ones are dropped
        self._close_after = (code, reason)
        if not self._out:  # send() wrote it already (or closed the connection)
            self._finish()

    def position(self) -> dict[str, int]:
        """The heartbeat's `pos`: "book:SYMBOL" -> the seq the client's book is at."""
        pos: dict[str, int] = {}
        for (ch, symbol, _), watch in self.subs.items():
            if ch == "book" and (seq := watch.position()) is not None:
                pos["book:" + symbol] = seq
        return pos

    def detach(self) -> None:
        """The connection is gone: drop what is queued, send nothing more."""
        self._closing = True
        self._out.clear()
        self._queued = 0

    def write(self, now: float) -> None:
        """Hand everything queued to the transport in one write (the outbox calls this)."""
        out = self._out
        if self._closing or self._paused or not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        count = len(out)
        out.clear()
        self._queued = 0
        if self.ws.protocol.state is not State.OPEN:
            # The peer started the closing handshake: no data frame may follow a close.
            self._closing = True
            return
        transport = self._transport
        transport.write(data)
        outbox = self._outbox
        outbox.frames_out += count
        outbox.bytes_out += len(data)
        self._last_sent = now
        self._buffered = buffered = transport.get_write_buffer_size()
        if buffered > self.max_pending:
            self._slow()
            return
        self._paused = buffered > WRITE_HIGH
        if self._close_after is not None:
            self._finish()
        elif self.held:
            self._flush_held()

    def tick(self, now: float, idle_since: float) -> None:
        """Periodic (the outbox calls it when the transport was left with unsent bytes or
        nothing was sent since `idle_since`): resume a paused transport once it drained
        below WRITE_LOW; a heartbeat after `heartbeat_s` of silence."""
        if self._closing:
            return
        if self._buffered:
            self._buffered = buffered = self._transport.get_write_buffer_size()
            if self._paused and buffered <= WRITE_LOW:
                self._paused = False
                self.write(now)
        if self._last_sent <= idle_since and not self._out and self._close_after is None:
            self.send(frames.heartbeat(int(time.time() * 1000), self.position()))

    def _finish(self) -> None:
        """Close once everything queued is in the transport: the close frame follows it."""
        if self._closing or self._close_after is None:
            return
        self._closing = True
        self._close_task = asyncio.create_task(self.ws.close(*self._close_after))

    def _slow(self) -> None:
        self._outbox.slow_closes += 1
        log.info("closing slow consumer %s (%d bytes pending)",
                 self.ws.remote_address, self._queued + self._buffered)
        self.close(*SLOW_CONSUMER)

    def _flush_held(self) -> None:
        held, self.held = self.held, set()
        for watch in held:
            if not watch.flush():
                self.held.add(watch)


class Outbox:
    """The gateway's writer: each loop pass, one write per connection that has frames
    queued; every `heartbeat_s / TICKS_PER_HEARTBEAT`, heartbeats and drain checks."""

    def __init__(self, clients: set[Client], heartbeat_s: float = 1.0) -> None:
        self.slow_closes = 0  # connections closed 4008 since the gateway started
        self.frames_out = 0  # frames handed to the transports since it started
        self.bytes_out = 0
        self.clients = clients  # every open connection (the server adds and removes them)
        self.heartbeat_s = heartbeat_s
        self._loop = asyncio.get_running_loop()
        self.now = self._loop.time
        self._dirty: list[Client] = []
        self._ticker: asyncio.TimerHandle | None = None

    def schedule(self, client: Client) -> None:
        """`client` has frames queued: write them at the end of this loop pass."""
        if not self._dirty:
            self._loop.call_soon(self._write)
        self._dirty.append(client)

    def start(self) -> None:
        self._ticker = self._loop.call_later(self.heartbeat_s / TICKS_PER_HEARTBEAT, self._tick)

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _write(self) -> None:
        dirty, self._dirty = self._dirty, []
        now = self.now()
        for client in dirty:
            client.write(now)

    def _tick(self) -> None:
        self._ticker = self._loop.call_later(self.heartbeat_s / TICKS_PER_HEARTBEAT, self._tick)
        now = self.now()
        idle_since = now - self.heartbeat_s
        for client in list(self.clients):
            if client._buffered or client._last_sent <= idle_since:
                client.tick(now, idle_since)
