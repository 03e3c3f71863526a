"""What the gateway tests share: the engine driver and a WebSocket client that checks
every frame it is sent against API.md (seq chain, checksums, depth)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from services.common.book_cache import book_checksum, read_book, wire_levels
from services.common.keys import PairKeys
from services.common.messages import CancelOrder, PlaceOrder, encode
from services.common.pairs import Pair, load_markets
from services.common.redis_conn import AnyRedis
from services.engine.runner import Engine
from services.gateway.server import Gateway

PAIR: Pair = load_markets().pair("BTC-USD")
KEYS = PairKeys("BTC-USD")
TIMEOUT = 5.0

Order = tuple[str, str, str]  # (side, price, qty) in wire decimals


class EngineDriver:
    """Feeds the real engine real commands, one committed batch per call.

    The engine takes event time from the input entry id, so `at_ms` (increasing from
    call to call) places the batch's trades at that time; None lets Redis pick (now, or
    just after the last explicit id)."""

    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis
        self.engine = Engine(redis, PAIR)
        self._ids = 0
        self._last_id = (0, 0)

    async def batch(self, *orders: Order, cancel: tuple[str, ...] = (),
                    at_ms: int | None = None) -> list[str]:
        """Place orders and cancel order ids as one batch; returns the new order ids."""
        placed = []
        commands: list[PlaceOrder | CancelOrder] = []
        for side, price, qty in orders:
            self._ids += 1
            placed.append(f"o{self._ids}")
            commands.append(PlaceOrder(order_id=placed[-1], account_id="a1", side=side,
                                       price=PAIR.price_to_ticks(price),
                                       qty=PAIR.qty_to_lots(qty)))
        commands += [CancelOrder(order_id=order_id, account_id="a1") for order_id in cancel]
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            entry_id = "*"
            if at_ms is not None:
                ms, seq = self._last_id
                assert at_ms >= ms, "entry times must not go back"
                self._last_id = (at_ms, seq + 1 if at_ms == ms else 0)
                entry_id = f"{at_ms}-{self._last_id[1]}"
            pipe.xadd(KEYS.inbox, {"c": encode(command)}, id=entry_id)
        await pipe.execute()
        await self.engine.process_batch(await self.engine.read_batch())
        return placed


class WsClient:
    """Sends ops, keeps frames in arrival order, and mirrors the book per API.md rules."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.backlog: deque[dict[str, Any]] = deque()
        self._ids = 0
        self.seq: int | None = None
        self.epoch: str | None = None
        self.depth = 0
        self.bids: dict[Decimal, list[str]] = {}
        self.asks: dict[Decimal, list[str]] = {}
        self.arrivals: dict[int, float] = {}  # book seq -> perf_counter() when it came

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self._ids += 1
        await self.ws.send(json.dumps({"op": op, "id": self._ids, **fields}))
        return await self.next(lambda m: m.get("id") == self._ids and "ok" in m)

    async def next(self, match: Callable[[dict[str, Any]], bool],
                   timeout: float = TIMEOUT) -> dict[str, Any]:
        """The first frame (backlog first) that `match`es; others stay in the backlog."""
        for frame in self.backlog:
            if match(frame):
                self.backlog.remove(frame)
                return frame
        async with asyncio.timeout(timeout):
            while True:
                frame = json.loads(await self.ws.recv())
                if match(frame):
                    return frame
                self.backlog.append(frame)

    async def next_book(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next book frame, applied to the local book with every API.md check."""
        frame = await self.next(lambda m: m.get("ch") == "book", timeout)
        self.arrivals[frame["seq"]] = time.perf_counter()
        if frame["type"] == "snapshot":
            self.bids = {Decimal(px): [px, q] for px, q in frame["bids"]}
            self.asks = {Decimal(px): [px, q] for px, q in frame["asks"]}
            self.depth = frame["depth"]
        else:
            assert frame["type"] == "delta"
            assert frame["epoch"] == self.epoch
            assert frame["prev_seq"] == self.seq, "a delta must continue the client's seq"
            assert frame["seq"] > frame["prev_seq"]
            for book, levels in ((self.bids, frame["bids"]), (self.asks, frame["asks"])):
                for px, qty in levels:
                    if qty == "0":
                        del book[Decimal(px)]  # strict: never told to remove what it lacks
                    else:
                        book[Decimal(px)] = [px, qty]
        self.seq, self.epoch = frame["seq"], frame["epoch"]
        bids, asks = self.top()
        assert len(bids) <= self.depth and len(asks) <= self.depth
        assert frame["checksum"] == book_checksum(bids, asks, self.depth)
        return frame

    def top(self) -> tuple[list[list[str]], list[list[str]]]:
        return ([self.bids[p] for p in sorted(self.bids, reverse=True)],
                [self.asks[p] for p in sorted(self.asks)])


async def ws_client(gw: Gateway, path: str = "/ws", **kwargs: Any) -> ClientConnection:
    return await connect(f"ws://127.0.0.1:{gw.port}{path}", **kwargs)


async def redis_top(redis: AnyRedis, depth: int) -> tuple[int, list[list[str]], list[list[str]]]:
    snap = await read_book(redis, KEYS)
    return (snap.seq, wire_levels(PAIR, snap.bids[:depth]), wire_levels(PAIR, snap.asks[:depth]))
