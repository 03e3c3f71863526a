"""Candles and ticker channels, client limits and slow-consumer conflation, against a real
Valkey server, the real engine, the real REST API (in-process ASGI) and real WebSocket
connections. Every wait has a deadline.

Candle tests control time: the engine takes event time from the input entry id, so
batches are placed at chosen milliseconds (increasing) to cross bar boundaries. They use
minutes in the future, so the gateway's close timer stays out of the way until a test
moves the gateway's clock on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import random
import socket
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.common.redis_conn import AnyRedis
from services.gateway import bar_channels
from services.gateway.server import Gateway, GatewaySettings
from services.gateway.settings import MAX_CONNECTIONS_ENV
from tests.gateway.harness import KEYS, TIMEOUT, EngineDriver, WsClient, redis_top, ws_client
from tests.support.waiting import eventually

MINUTE = 60_000
CANDLES_1M = {"ch": "candles", "symbol": "BTC-USD", "interval": "1m"}
TICKER = {"ch": "ticker", "symbol": "BTC-USD"}


def is_candle(frame: dict[str, Any]) -> bool:
    return frame.get("ch") == "candles"


class CandleReader:
    """A client's candle frames in order, checking that `t` never goes back."""

    def __init__(self, client: WsClient) -> None:
        self.client = client
        self.t = 0

    async def next(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        frame = await self.client.next(is_candle, timeout)
        assert (frame["symbol"], frame["interval"]) == ("BTC-USD", "1m")
        assert frame["data"]["t"] >= self.t, "candle t must never go back"
        self.t = frame["data"]["t"]
        return frame["data"]

    async def until(self, t: int) -> dict[str, Any]:
        """The first frame of bar `t` (earlier bars' frames are skipped)."""
        while (data := await self.next())["t"] < t:
            pass
        return data


async def stored_bar(redis: AnyRedis, t: int, closed: bool) -> dict[str, Any]:
    """The bar as the engine stored it (what REST /candles returns), plus `closed`."""
    [member] = await redis.zrangebyscore(KEYS.candles("1m"), t, t)
    return {**json.loads(member), "closed": closed}


async def test_candles_stream_and_close_on_rollover_and_by_timer(
        gateway: Gateway, engine: EngineDriver, redis: AnyRedis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = int(time.time() * 1000)
    m = now - now % MINUTE + 3 * MINUTE  # a bar start well in the future
    async with await ws_client(gateway) as ws1, await ws_client(gateway) as ws2:
        c1 = WsClient(ws1)
        assert (await c1.request("subscribe", args=[CANDLES_1M]))["ok"]
        bars1 = CandleReader(c1)

        await engine.batch(("buy", "67010.00", "0.1000"), at_ms=m + 10_000)
        assert await bars1.until(m) == await stored_bar(redis, m, closed=False)
        await engine.batch(("sell", "67000.00", "0.0500"), at_ms=m + 20_000)
        second = await bars1.next()
        assert second == await stored_bar(redis, m, closed=False)
        assert (second["n"], second["l"], second["c"]) == (2, "67000.00", "67000.00")

        # A client subscribing mid-bar gets the current bar first.
        c2 = WsClient(ws2)
        assert (await c2.request("subscribe", args=[CANDLES_1M]))["ok"]
        bars2 = CandleReader(c2)
        assert await bars2.next() == second

        # A trade in the next minute: the bar is sent once more, closed, then the new one.
        await engine.batch(("buy", "67010.00", "0.0100"), at_ms=m + MINUTE + 5_000)
        for reader in (bars1, bars2):
            assert await reader.next() == {**second, "closed": True}
            assert await reader.next() == await stored_bar(redis, m + MINUTE, closed=False)

        # No trade after a bar: the gateway's timer closes it at its end time (+ grace).
        # The gateway's clock is moved to 2.5 s before the end of a bar further on.
        m2 = m + 10 * MINUTE
        shift = m2 + MINUTE - 2_500 - int(time.time() * 1000)
        monkeypatch.setattr(bar_channels, "now_ms", lambda: int(time.time() * 1000) + shift)
        await engine.batch(("sell", "67000.00", "0.0100"), at_ms=m2 + 30_000)
        rolled = await bars1.next()
        assert (rolled["t"], rolled["closed"]) == (m + MINUTE, True)
        opened = await bars1.next()
        assert opened == await stored_bar(redis, m2, closed=False)
        started = time.monotonic()
        closed = await bars1.next(timeout=10)
        waited = time.monotonic() - started
        assert closed == {**opened, "closed": True}
        assert 2.0 < waited < 6.0, waited  # at the bar's end + 1 s grace, not before
        assert (await bars2.until(m2)) == opened


@asynccontextmanager
async def rest_api(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real REST application, in-process."""
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    app = create_app(ApiSettings(redis_url=redis_url, secrets_key=key))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
        yield http


async def test_ticker_agrees_with_the_rest_ticker(gateway: Gateway, engine: EngineDriver,
                                                  redis_url: str) -> None:
    async with rest_api(redis_url) as http, await ws_client(gateway) as ws:
        async def rest_ticker() -> dict[str, Any]:
            response = await http.get("/api/v1/markets/BTC-USD/ticker")
            assert response.status_code == 200
            return response.json()

        client = WsClient(ws)
        assert (await client.request("subscribe", args=[TICKER]))["ok"]
        first = await client.next(lambda m: m.get("ch") == "ticker")
        frames = [(time.monotonic(), first["data"])]
        assert first["symbol"] == "BTC-USD"
        assert first["data"] == await rest_ticker()

        # Trades, and a change of the top of book without a trade, in quick succession.
        await engine.batch(("buy", "67010.00", "0.0300"))
        await engine.batch(("sell", "67000.00", "0.0200"), ("sell", "66999.00", "0.0100"))
        await engine.batch(("buy", "67001.00", "0.0700"))  # a new best bid
        expected = await rest_ticker()
        assert expected != first["data"]
        while frames[-1][1] != expected:
            frame = await client.next(lambda m: m.get("ch") == "ticker", timeout=3)
            frames.append((time.monotonic(), frame["data"]))
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(frames)]
        assert all(gap > 0.9 for gap in gaps), gaps  # at most one a second
        assert (expected["bid"], expected["last"]) == ("67001.00", "67000.00")

        # Nothing changes: nothing is sent.
        with pytest.raises(TimeoutError):
            await client.next(lambda m: m.get("ch") == "ticker", timeout=1.5)


async def test_a_flooding_client_is_refused_then_closed_with_4029(gateway: Gateway) -> None:
    async with await ws_client(gateway) as ws, await ws_client(gateway) as bystander_ws:
        client, bystander = WsClient(ws), WsClient(bystander_ws)

        async def pings(ids: range) -> None:
            for i in ids:
                await ws.send(json.dumps({"op": "ping", "id": i}))

        await pings(range(20))  # the burst
        for i in range(20):
            assert await client.next(lambda m: "ok" in m) == {"op": "ping", "id": i, "ok": True}
        await pings(range(20, 25))  # within milliseconds: over 10 per second
        refused = [await client.next(lambda m: "ok" in m) for _ in range(5)]
        limited = [r for r in refused if not r["ok"]]
        assert len(limited) >= 3  # maybe a token came back meanwhile
        assert all(r["error"]["code"] == "RATE_LIMITED" and r["id"] is None for r in limited)

        with pytest.raises(ConnectionClosed) as closed:
            await pings(range(25, 200))  # goes on flooding
            async with asyncio.timeout(TIMEOUT):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4029, "too many requests")
        assert (await bystander.request("ping"))["ok"]  # everyone else is served


async def test_connections_over_the_limit_get_503(gateway: Gateway) -> None:
    assert GatewaySettings.from_env({MAX_CONNECTIONS_ENV: "7"}).max_connections == 7
    assert GatewaySettings.from_env({}).max_connections == 10_000
    await eventually(lambda: gateway.status().connections == 0, "earlier clients to leave", TIMEOUT)
    gateway.settings, original = replace(gateway.settings, max_connections=2), gateway.settings
    try:
        first, second = await ws_client(gateway), await ws_client(gateway)
        with pytest.raises(InvalidStatus) as refused:
            await ws_client(gateway)
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "1"
        await first.close()
        await eventually(lambda: gateway.status().connections == 1, "a slot to free", TIMEOUT)
        third = await ws_client(gateway)
        assert (await WsClient(third).request("ping"))["ok"]
        await asyncio.gather(second.close(), third.close())
    finally:
        gateway.settings = original


async def test_a_slow_reader_gets_conflated_deltas_and_a_fast_one_every_delta(
        redis_url: str, redis: AnyRedis, engine: EngineDriver) -> None:
    gw = Gateway(GatewaySettings(port=0, redis_url=redis_url, conflate_bytes=8 * 1024))
    await gw.start()
    book200 = {"ch": "book", "symbol": "BTC-USD", "depth": 200}
    # The slow reader's socket buffers are made small (and its client library reads at
    # most a frame ahead), so what it does not read piles up in the gateway's queue.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
    try:
        async with await ws_client(gw) as fast_ws, await ws_client(
                gw, sock=sock, max_queue=1) as slow_ws:
            fast, slow = WsClient(fast_ws), WsClient(slow_ws)
            for client in (fast, slow):
                assert (await client.request("subscribe", args=[book200]))["ok"]
                assert (await client.next_book())["type"] == "snapshot"
            [server_side] = [c for c in gw._clients
                             if c.ws.remote_address == sock.getsockname()]
            server_side.ws.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

            committed: dict[int, float] = {}  # md seq -> when its batch was committed
            deltas = 0

            async def read_fast() -> None:
                nonlocal deltas
                while True:
                    frame = await fast.next_book()
                    assert frame["seq"] == frame["prev_seq"] + 1, "the fast reader misses none"
                    deltas += 1

            # A busy market: every batch changes levels of the top 200 (never crossing).
            rng = random.Random(5)
            resting: list[str] = []
            reader = asyncio.create_task(read_fast())
            # Until the slow reader is held (conflating), then 300 updates more.
            held_at: int | None = None
            deadline = time.monotonic() + 30
            while held_at is None or len(committed) < held_at + 300:
                assert time.monotonic() < deadline, "the slow reader was never conflated"
                if held_at is None and server_side.held:
                    held_at = len(committed)
                orders = [*(("buy", f"{rng.randint(66800, 67004)}.00", "0.0100")
                            for _ in range(3)),
                          *(("sell", f"{rng.randint(67006, 67200)}.00", "0.0200")
                            for _ in range(3))]
                cancel = tuple(resting.pop(rng.randrange(len(resting)))
                               for _ in range(min(3, len(resting) // 4)))
                resting += await engine.batch(*orders, cancel=cancel)
                committed[engine.engine.md_seq] = time.perf_counter()
            final_seq, bids, asks = await redis_top(redis, 200)
            await eventually(lambda: fast.seq == final_seq, "the fast reader to catch up",
                             TIMEOUT)
            reader.cancel()
            assert deltas == len(committed)
            latencies = sorted(max(0.0, fast.arrivals[seq] - at) for seq, at in committed.items())
            p99 = latencies[int(len(latencies) * 0.99)]
            assert p99 < 0.1, f"fast reader p99 {p99 * 1000:.1f} ms"

            slow_deltas = []
            while slow.seq != final_seq:  # now it reads
                slow_deltas.append(await slow.next_book())
            assert slow.top() == fast.top() == (bids, asks)
            assert len(slow_deltas) < len(committed) - 250
            # One delta stands for (at least) the 300 updates skipped while held.
            assert max(d["seq"] - d["prev_seq"] for d in slow_deltas) >= 300
            assert not server_side.closing and not server_side.held
            print(f"{len(committed)} updates, fast p50 {statistics.median(latencies) * 1000:.2f}"
                  f" ms p99 {p99 * 1000:.2f} ms; slow reader got {len(slow_deltas)} deltas")
    finally:
        await gw.aclose()
