"""A market-data client that keeps a local book exactly as API.md tells clients to."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from services.common.book_cache import book_checksum


class BookWatcher:
    """Subscribes to one pair's `book` and `trades`; checks every seq and checksum.

    Any broken rule (a delta whose prev_seq is not our seq, a checksum that does not
    match our book) is recorded in `violations`; tests assert it stays empty.
    """

    def __init__(self, url: str, symbol: str, depth: int = 50) -> None:
        self.url = url
        self.symbol = symbol
        self.depth = depth
        self.ws: ClientConnection | None = None
        self.seq: int | None = None
        self.epoch: str | None = None
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.trades: list[dict[str, Any]] = []
        self.book_messages: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self._next_id = 0

    async def __aenter__(self) -> BookWatcher:
        self.ws = await connect(self.url)
        await self.send("subscribe", args=[
            {"ch": "book", "symbol": self.symbol, "depth": self.depth},
            {"ch": "trades", "symbol": self.symbol},
        ])
        await self.wait_for(lambda w: w.seq is not None, what="a book snapshot")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws:
            await self.ws.close()

    async def send(self, op: str, **fields: Any) -> int:
        self._next_id += 1
        assert self.ws
        await self.ws.send(json.dumps({"op": op, "id": self._next_id, **fields}))
        return self._next_id

    def top(self, side: str) -> list[list[str]]:
        levels = self.bids if side == "bids" else self.asks
        ordered = sorted(levels.items(), key=lambda kv: Decimal(kv[0]),
                         reverse=(side == "bids"))
        return [[px, qty] for px, qty in ordered[: self.depth]]

    def handle(self, message: dict[str, Any]) -> None:
        channel = message.get("ch")
        if "op" in message:
            self.replies.append(message)
        elif channel == "trades":
            self.trades.extend(message["data"])
        elif channel == "book":
            self._apply_book(message)

    def _apply_book(self, message: dict[str, Any]) -> None:
        self.book_messages.append(message)
        if message["type"] == "snapshot":
            self.bids = dict(message["bids"])
            self.asks = dict(message["asks"])
        else:
            if message["prev_seq"] != self.seq or message["epoch"] != self.epoch:
                self.violations.append(
                    f"delta prev_seq {message['prev_seq']} does not follow seq {self.seq}")
            for side, levels in (("bids", self.bids), ("asks", self.asks)):
                for px, qty in message[side]:
                    if Decimal(qty) == 0:
                        levels.pop(px, None)
                    else:
                        levels[px] = qty
        self.seq, self.epoch = message["seq"], message["epoch"]
        if book_checksum(self.top("bids"), self.top("asks"), self.depth) != message["checksum"]:
            self.violations.append(f"checksum mismatch at seq {self.seq}")

    async def wait_for(self, predicate: Callable[[BookWatcher], bool], *, timeout: float = 10.0,
                       what: str = "condition") -> None:
        """Read and apply messages until `predicate(self)` holds; fail at the deadline."""
        assert self.ws
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.url}: no {what} within {timeout} s")
            try:
                raw = await asyncio.wait_for(self.ws.recv(), remaining)
            except TimeoutError:
                continue
            self.handle(json.loads(raw))
