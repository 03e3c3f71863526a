"""The simulated traders' eyes: one public WebSocket connection watching every simulated
pair's book (depth 10) and trades, as any market-data client would (API.md)."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from services.simulator.view import PairView

log = logging.getLogger("exchange.simulator")

DEPTH = 10  # the top is all a simulated trader looks at
RECONNECT_MAX_S = 5.0


class MarketWatch:
    """Keeps each `PairView` fed from the WebSocket until cancelled; reconnects with
    backoff (the views are stale meanwhile, and the traders fall back on their own mid)."""

    def __init__(self, url: str, views: dict[str, PairView]) -> None:
        self.url = url
        self.views = views
        self.connected = asyncio.Event()
        self._ids = 0
        self._decode = msgspec.json.Decoder().decode

    async def run(self) -> None:
        delay = 0.2
        while True:
            try:
                async with connect(self.url, compression=None, open_timeout=5) as ws:
                    await self._subscribe(ws, [
                        arg for symbol in self.views
                        for arg in ({"ch": "book", "symbol": symbol, "depth": DEPTH},
                                    {"ch": "trades", "symbol": symbol})])
                    self.connected.set()
                    delay = 0.2
                    await self._read(ws)
            except (OSError, TimeoutError, WebSocketException) as exc:
                # Said once per outage, not at every retry of a long one.
                level = logging.WARNING if delay == 0.2 else logging.DEBUG
                log.log(level, "market watch on %s: %s; reconnecting", self.url, exc)
            self.connected.clear()
            for view in self.views.values():
                view.needs_resync = True  # updates were missed while disconnected
            await asyncio.sleep(delay)
            delay = min(2 * delay, RECONNECT_MAX_S)

    async def _subscribe(self, ws: ClientConnection, args: list[dict[str, object]],
                         op: str = "subscribe") -> None:
        self._ids += 1
        await ws.send(msgspec.json.encode({"op": op, "id": self._ids, "args": args}).decode())

    async def _read(self, ws: ClientConnection) -> None:
        resyncing: set[str] = set()
        async for raw in ws:
            frame = self._decode(raw)
            if "op" in frame:
                if not frame.get("ok"):
                    log.warning("market watch: %s refused: %s", frame.get("op"),
                                frame.get("error"))
                continue
            view = self.views.get(frame.get("symbol", ""))
            if view is None:
                continue
            view.apply(frame)
            if view.needs_resync and view.symbol not in resyncing:
                # A seq gap: a fresh subscription starts with a snapshot.
                resyncing.add(view.symbol)
                book = [{"ch": "book", "symbol": view.symbol, "depth": DEPTH}]
                await self._subscribe(ws, book, "unsubscribe")
                await self._subscribe(ws, book)
            elif not view.needs_resync:
                resyncing.discard(view.symbol)
