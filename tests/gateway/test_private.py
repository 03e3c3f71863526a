"""Private channels (login, orders, fills, balances) against a real Valkey server, the real
account store and deposit script, and real WebSocket connections. Every wait has a
deadline.

Updates are published the way the API and settlement scripts do (services/common/
publish_update.lua): in one script, change the balances, INCR `{acct:ID}:useq`, SPUBLISH
the JSON on `{acct:ID}:updates` (through cjson, so an empty list arrives as `{}`). Deposits
go through the real AccountStore.deposit, whose script publishes its own update.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio

from services.api.accounts import AccountStore, NewAccount
from services.common.keys import AccountKeys
from services.common.order_record import order_to_wire
from services.common.pairs import load_markets
from services.common.redis_conn import AnyRedis
from services.common.secrets_box import SECRETS_KEY_ENV, SecretBox, new_key
from services.common.signing import sign
from services.gateway.server import Gateway, GatewaySettings
from tests.gateway.harness import PAIR, TIMEOUT, WsClient, ws_client
from tests.support.waiting import eventually

fixture = pytest_asyncio.fixture
MARKETS = load_markets()
SECRETS_KEY = new_key()
ALL = [{"ch": "orders"}, {"ch": "fills"}, {"ch": "balances"}]
RESYNC = {"ch": "system", "type": "resync", "channels": ["orders", "fills"]}

# As the scripts do it, with the update's JSON (sans seq) given. ARGV[2] 'lose': count the
# update but publish nothing, as if pub/sub had dropped it.
PUBLISH_LUA = """
local update = cjson.decode(ARGV[1])
if update.balances then
  for asset, v in pairs(update.balances) do
    redis.call('HSET', KEYS[1], 'avail:' .. asset, v[1], 'held:' .. asset, v[2])
  end
end
update.seq = redis.call('INCR', KEYS[2])
if ARGV[2] == 'publish' then redis.call('SPUBLISH', KEYS[3], cjson.encode(update)) end
return update.seq
"""


# ---- fixtures and helpers -----------------------------------------------------------------


@fixture(scope="module", loop_scope="session")
async def gateway(redis_url: str) -> AsyncIterator[Gateway]:
    gw = Gateway(GatewaySettings(port=0, redis_url=redis_url, secrets_key=SECRETS_KEY))
    await gw.start()
    yield gw
    await gw.aclose()


@fixture(scope="module", loop_scope="session")
async def accounts(redis: AnyRedis) -> AccountStore:
    return AccountStore(redis, MARKETS, SecretBox(SECRETS_KEY))


def now_ms() -> int:
    return int(time.time() * 1000)


def credentials(account: NewAccount, ts: int | None = None, secret: str | None = None,
                path: str = "/ws") -> dict[str, Any]:
    ts = now_ms() if ts is None else ts
    return {"api_key": account.api_key, "timestamp": ts,
            "signature": sign(secret or account.api_secret, ts, "GET", path)}


@asynccontextmanager
async def session(gateway: Gateway, account: NewAccount | None = None,
                  args: list[dict[str, str]] | None = None) -> AsyncIterator[WsClient]:
    """A connection, logged in as `account` and subscribed to `args` if given."""
    async with await ws_client(gateway) as ws:
        client = WsClient(ws)
        if account is not None:
            reply = await client.request("login", **credentials(account))
            assert reply == {"op": "login", "id": client._ids, "ok": True}, reply
        if args:
            assert (await client.request("subscribe", args=args))["ok"] is True
        yield client


class Publisher:
    """Publishes an account's updates as the API and settlement scripts do."""

    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis
        self.script = redis.register_script(PUBLISH_LUA)

    async def __call__(self, account_id: str, *, orders: list[dict[str, str]] | None = None,
                       fills: list[dict[str, Any]] | None = None,
                       balances: dict[str, tuple[int, int]] | None = None,
                       lose: bool = False) -> int:
        """The update's seq. `balances`: asset -> (available, held) units, set and sent."""
        update: dict[str, Any] = {"orders": orders or []}  # [] becomes {} through cjson
        if fills:
            update["fills"] = fills
        if balances:
            update["balances"] = {a: [str(v[0]), str(v[1])] for a, v in balances.items()}
        k = AccountKeys(account_id)
        return int(await self.script(keys=[k.balances, k.updates_seq, k.updates],
                                     args=[json.dumps(update), "lose" if lose else "publish"]))


def order_record(account_id: str, order_id: str, *, status: str = "new", filled: str = "0",
                 quote_filled: str = "0") -> dict[str, str]:
    """An order's Redis hash, as the API writes it (every field a string)."""
    ts = str(now_ms())
    return {
        "order_id": order_id, "client_order_id": "", "account_id": account_id,
        "symbol": PAIR.symbol, "base": "BTC", "quote": "USD", "side": "buy", "type": "limit",
        "tif": "GTC", "price": str(PAIR.price_to_ticks("67000.00")),
        "qty": str(PAIR.qty_to_lots("0.0100")), "quote_qty": "", "quote_cap": "0",
        "stop_price": "0", "post_only": "0", "stp": "", "filled": filled,
        "quote_filled": quote_filled, "status": status, "reason": "", "created_ts": ts,
        "updated_ts": ts, "hold_asset": "USD", "hold_left": "0",
    }


def fill(order_id: str, trade_id: str) -> dict[str, Any]:
    return {"trade_id": trade_id, "order_id": order_id, "symbol": PAIR.symbol, "side": "buy",
            "px": "67000.00", "qty": "0.0050", "fee": "0.67", "fee_asset": "USD",
            "liquidity": "taker", "ts": now_ms()}


def usd(units: int) -> str:
    return MARKETS.asset("USD").format(units)


def is_private(frame: dict[str, Any]) -> bool:
    return frame.get("ch") in ("orders", "fills", "balances") or frame.get("type") == "resync"


async def private_until(client: WsClient, seq: int) -> list[dict[str, Any]]:
    """The private frames in arrival order, through the balances frame of update `seq`."""
    got = []
    while True:
        frame = await client.next(is_private)
        got.append(frame)
        if frame["ch"] == "balances" and frame["seq"] == seq:
            return got


async def shard_subscribers(redis: AnyRedis, account_id: str) -> int:
    [(_, count)] = await redis.pubsub_shardnumsub(AccountKeys(account_id).updates)
    return count


async def useq(redis: AnyRedis, account_id: str) -> int:
    return int(await redis.get(AccountKeys(account_id).updates_seq) or 0)


# ---- tests --------------------------------------------------------------------------------


async def test_login_is_verified_and_binds_one_account(gateway: Gateway, accounts: AccountStore,
                                                      redis: AnyRedis) -> None:
    alice, bob = await accounts.create(), await accounts.create()
    async with session(gateway) as client:
        reply = await client.request("subscribe", args=[{"ch": "orders"}, {"ch": "balances"}])
        assert reply["error"]["code"] == "LOGIN_REQUIRED"
        assert gateway.status().subscriptions == 0  # nothing of it was subscribed

        stale = now_ms() - 6_000
        refused = [
            (credentials(alice, secret=bob.api_secret), "INVALID_SIGNATURE"),
            (credentials(alice, path="/api/v1/orders"), "INVALID_SIGNATURE"),
            ({**credentials(alice), "signature": "00" * 32}, "INVALID_SIGNATURE"),
            (credentials(alice, ts=stale), "TIMESTAMP_OUT_OF_WINDOW"),
            (credentials(alice, ts=now_ms() + 6_000), "TIMESTAMP_OUT_OF_WINDOW"),
            ({**credentials(alice), "api_key": "f" * 32}, "INVALID_API_KEY"),
            ({**credentials(alice), "timestamp": str(now_ms())}, "INVALID_REQUEST"),
            ({"api_key": alice.api_key, "timestamp": now_ms()}, "INVALID_REQUEST"),
            ({}, "INVALID_REQUEST"),
        ]
        for fields, code in refused:
            reply = await client.request("login", **fields)
            assert (reply["op"], reply["ok"], reply["error"]["code"]) == ("login", False, code)
        # Still anonymous.
        reply = await client.request("subscribe", args=[{"ch": "fills"}])
        assert reply["error"]["code"] == "LOGIN_REQUIRED"

        good = credentials(alice)
        assert (await client.request("login", **good))["ok"] is True
        for replayer in (client, None):  # on this connection, then on another one
            if replayer is None:
                async with session(gateway) as other:
                    reply = await other.request("login", **good)
            else:
                reply = await replayer.request("login", **good)
            assert reply["error"]["code"] == "REPLAYED_SIGNATURE"
        # Again as alice with a fresh signature: fine. As bob: one session, one account.
        assert (await client.request("login", **credentials(alice, ts=now_ms() + 1)))["ok"]
        as_bob = credentials(bob)
        reply = await client.request("login", **as_bob)
        assert reply["error"]["code"] == "ALREADY_LOGGED_IN"

        assert (await client.request("subscribe", args=[{"ch": "balances"}]))["ok"] is True
        snapshot = await client.next(is_private)
        assert snapshot == {"ch": "balances", "seq": 0,
                            "data": await accounts.balances(alice.account_id)}
        assert await shard_subscribers(redis, alice.account_id) == 1
        assert await shard_subscribers(redis, bob.account_id) == 0
        # The refused login did not use up bob's signature.
        async with session(gateway) as other:
            assert (await other.request("login", **as_bob))["ok"] is True


async def test_orders_fills_and_balances_carry_the_account_seq(
        gateway: Gateway, accounts: AccountStore, redis: AnyRedis) -> None:
    publish = Publisher(redis)
    alice = await accounts.create()
    aid = alice.account_id
    await accounts.deposit(aid, "USD", "1000")  # the real deposit script: update 1
    async with session(gateway, alice, ALL) as client:
        snapshot = await client.next(is_private)
        assert snapshot == {"ch": "balances", "seq": 1, "data": await accounts.balances(aid)}
        assert {"asset": "USD", "available": "1000.000000", "held": "0.000000"} in snapshot["data"]
        usd_units = MARKETS.asset("USD").to_units("1000")

        placed = order_record(aid, "o-1")
        hold = MARKETS.asset("USD").to_units("670")
        seq = await publish(aid, orders=[placed], balances={"USD": (usd_units - hold, hold)})
        assert seq == 2
        assert await private_until(client, 2) == [
            {"ch": "orders", "seq": 2, "data": order_to_wire(PAIR, placed)},
            {"ch": "balances", "seq": 2,
             "data": [{"asset": "USD", "available": usd(usd_units - hold), "held": usd(hold)}]},
        ]

        filled = order_record(aid, "o-1", status="partially_filled", filled="50",
                              quote_filled=str(MARKETS.asset("USD").to_units("335")))
        fills = [fill("o-1", "7"), fill("o-1", "8")]
        btc = MARKETS.asset("BTC").to_units("0.005")
        seq = await publish(aid, orders=[filled], fills=fills,
                            balances={"USD": (usd_units - hold, hold - 33567), "BTC": (btc, 0)})
        frames = await private_until(client, seq)
        assert [(f["ch"], f["seq"]) for f in frames] == \
            [("orders", 3), ("fills", 3), ("fills", 3), ("balances", 3)]
        assert frames[0]["data"] == order_to_wire(PAIR, filled)
        assert frames[0]["data"]["status"] == "partially_filled"
        assert [f["data"] for f in frames[1:3]] == fills
        assert frames[3]["data"] == [
            {"asset": "BTC", "available": "0.00500000", "held": "0.00000000"},
            {"asset": "USD", "available": usd(usd_units - hold), "held": usd(hold - 33567)},
        ]

        await accounts.deposit(aid, "USD", "5")  # update 4, from the real script
        [frame] = await private_until(client, 4)
        five = MARKETS.asset("USD").to_units("5")
        assert frame["data"] == [{"asset": "USD", "available": usd(usd_units - hold + five),
                                  "held": usd(hold - 33567)}]

        # A second session of the same account: a snapshot at the current seq, then both get
        # the same updates.
        async with session(gateway, alice, [{"ch": "balances"}]) as second:
            again = await second.next(is_private)
            assert again == {"ch": "balances", "seq": 4, "data": await accounts.balances(aid)}
            seq = await publish(aid, balances={"BTC": (0, btc)})
            assert seq == 5
            for each in (client, second):
                [frame] = await private_until(each, 5)  # nothing for the empty orders list
                assert frame["data"] == [{"asset": "BTC", "available": "0.00000000",
                                          "held": "0.00500000"}]
            assert await shard_subscribers(redis, aid) == 1  # one per gateway, not per session


async def test_each_session_sees_only_its_own_account(gateway: Gateway, accounts: AccountStore,
                                                     redis: AnyRedis) -> None:
    publish = Publisher(redis)
    alice, bob = await accounts.create(), await accounts.create()
    async with session(gateway, alice, ALL) as a, session(gateway, bob, ALL) as b:
        for client in (a, b):
            assert (await client.next(is_private))["seq"] == 0  # balances snapshots
        await publish(alice.account_id, orders=[order_record(alice.account_id, "alice-1")],
                      fills=[fill("alice-1", "1")], balances={"USD": (1, 2)})
        await publish(bob.account_id, orders=[order_record(bob.account_id, "bob-1")],
                      fills=[fill("bob-1", "2")], balances={"USD": (3, 4)})
        await publish(alice.account_id, balances={"USD": (5, 6)})
        alice_frames = await private_until(a, 2)
        bob_frames = await private_until(b, 1)
        assert {f["data"]["order_id"] for f in alice_frames if f["ch"] != "balances"} == \
            {"alice-1"}
        assert {f["data"]["order_id"] for f in bob_frames if f["ch"] != "balances"} == {"bob-1"}
        assert [f["data"][0]["available"] for f in bob_frames if f["ch"] == "balances"] == \
            [usd(3)]
        # Nothing more is on its way to bob: his next frame is his own next update's.
        # Bob's next private frame is his own next update's: alice's update 2, published
        # before it, never reached him.
        await publish(bob.account_id, balances={"USD": (7, 8)})
        assert [f["seq"] for f in await private_until(b, 2)] == [2]


async def test_a_lost_update_or_broken_subscription_brings_a_resync(
        gateway: Gateway, accounts: AccountStore, redis: AnyRedis) -> None:
    publish = Publisher(redis)
    alice = await accounts.create()
    aid = alice.account_id
    async with session(gateway, alice, ALL) as client, \
            session(gateway, alice, [{"ch": "fills"}]) as fills_only:
        assert (await client.next(is_private))["seq"] == 0
        await eventually(lambda: shard_subscribers(redis, aid), "the SSUBSCRIBE", TIMEOUT)
        assert await publish(aid, balances={"USD": (10, 0)}) == 1
        await private_until(client, 1)

        # Update 2 never reaches the gateway; update 3 shows the gap.
        await publish(aid, orders=[order_record(aid, "lost")], balances={"BTC": (7, 0)},
                      lose=True)
        await publish(aid, orders=[order_record(aid, "o-3")], balances={"USD": (11, 1)})
        assert await client.next(is_private) == RESYNC
        snapshot = await client.next(is_private)
        assert snapshot == {"ch": "balances", "seq": 3, "data": await accounts.balances(aid)}
        assert await fills_only.next(is_private) == {**RESYNC, "channels": ["fills"]}
        # Then it goes on live.
        await publish(aid, orders=[order_record(aid, "o-4")], balances={"USD": (12, 0)})
        assert [(f["ch"], f["seq"]) for f in await private_until(client, 4)] == \
            [("orders", 4), ("balances", 4)]

        # The gateway's pub/sub connection is killed: whatever was published meanwhile may
        # be lost, so once resubscribed, the same resync.
        await redis.execute_command("CLIENT KILL", "TYPE", "pubsub")
        assert await client.next(is_private) == RESYNC
        assert await client.next(is_private) == {"ch": "balances", "seq": 4,
                                                  "data": await accounts.balances(aid)}
        assert await fills_only.next(is_private) == {**RESYNC, "channels": ["fills"]}
        await publish(aid, fills=[fill("o-4", "9")], balances={"USD": (13, 0)})
        assert [(f["ch"], f["seq"]) for f in await private_until(client, 5)] == \
            [("fills", 5), ("balances", 5)]
        assert (await fills_only.next(is_private))["seq"] == 5


async def test_the_account_subscription_is_reference_counted(
        gateway: Gateway, accounts: AccountStore, redis: AnyRedis) -> None:
    publish = Publisher(redis)
    alice = await accounts.create()
    aid = alice.account_id

    async def subscribers(n: int) -> None:
        async def check() -> bool:
            return await shard_subscribers(redis, aid) == n

        await eventually(check, f"{n} sharded subscriber(s) of {aid}", TIMEOUT)

    async with session(gateway, alice, [{"ch": "orders"}]) as first:
        await subscribers(1)
        async with session(gateway, alice, [{"ch": "balances"}]) as second:
            await second.next(is_private)
            assert gateway.status().accounts == 1
            assert (await first.request("unsubscribe", args=[{"ch": "orders"}]))["ok"]
            await subscribers(1)  # the second session still watches balances
            seq = await publish(aid, orders=[order_record(aid, "o-1")], balances={"USD": (1, 0)})
            assert [f["ch"] for f in await private_until(second, seq)] == ["balances"]
        # The last private watcher left (its connection closed): the channel is dropped.
        await subscribers(0)
        await eventually(lambda: gateway.status().accounts == 0, "the feed to stop", TIMEOUT)

        # Taken up again by a new subscription, with a snapshot at the current seq (first's
        # next private frame: nothing of the orders it left came to it).
        assert (await first.request("subscribe", args=[{"ch": "balances"}]))["ok"]
        assert await first.next(is_private) == {"ch": "balances", "seq": await useq(redis, aid),
                                                 "data": await accounts.balances(aid)}
        await subscribers(1)
        assert (await first.request("unsubscribe", args=ALL))["ok"]
        await subscribers(0)


async def test_without_a_secrets_key_logins_are_unavailable(
        redis_url: str, accounts: AccountStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRETS_KEY_ENV, raising=False)
    alice = await accounts.create()
    gw = Gateway(GatewaySettings(port=0, redis_url=redis_url))
    await gw.start()
    try:
        async with session(gw) as client:
            reply = await client.request("login", **credentials(alice))
            assert reply["error"]["code"] == "LOGIN_UNAVAILABLE"
            assert (await client.request("ping"))["ok"] is True  # public service goes on
    finally:
        await gw.aclose()
