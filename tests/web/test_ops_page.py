"""The ops page and its status endpoint, on the real exchange.

An operator sees at a glance, for every pair, which engine process leads it and that its
seq moves; for every Redis node, its role and the pairs its slots hold. The status is
for operators only. The parsing behind it is checked on its own (pure functions).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from decimal import Decimal
from pathlib import Path

import httpx
import psutil
from playwright.async_api import Page

from services.api.ops import (
    STANDBY_FIELD,
    RateMeter,
    cluster_nodes,
    gateway_rows,
    lease_view,
)
from services.common.client import ExchangeClient
from services.common.pairs import Markets
from services.common.redis_conn import AnyRedis
from services.common.secrets_box import SECRETS_KEY_ENV, new_key
from services.local.redis_cluster import free_ports
from services.local.up import LocalExchange, _exchange_command
from services.simulator.market import DEFAULT_MIDS
from tests.support.servers import single_node
from tests.support.waiting import eventually
from tests.web.conftest import Process, WebExchange

_ROWS = """() => Object.fromEntries(
  [...document.querySelectorAll("#ops-pairs tr[data-symbol]")].map((r) => [
    r.dataset.symbol,
    Object.fromEntries([...r.querySelectorAll("td")].map(
      (td) => [td.dataset.field, td.textContent])),
  ]))"""
_NODES = """() => [...document.querySelectorAll("#ops-redis tr[data-node]")].map(
  (r) => ({node: r.dataset.node, role: r.dataset.role,
           pairs: r.querySelector('[data-field="pairs"]').textContent}))"""


async def pair_rows(page: Page) -> dict[str, dict[str, str]]:
    return await page.evaluate(_ROWS)


async def resting_buy_price(admin: ExchangeClient, symbol: str, tick: Decimal) -> Decimal:
    """A buy price that rests without trading: the best bid, else just under the best
    ask, else the last trade's, else where the simulated market starts."""
    ticker = await admin.call("GET", f"/api/v1/markets/{symbol}/ticker")
    if ticker["bid"]:
        return Decimal(ticker["bid"])
    if ticker["ask"]:
        return Decimal(ticker["ask"]) - tick
    return Decimal(ticker["last"] or DEFAULT_MIDS[symbol]).quantize(tick)


def engine_processes(stack: LocalExchange, symbol: str) -> set[str]:
    """The pair's engine processes as a lease names its holder: host:pid."""
    host = socket.gethostname()
    return {f"{host}:{child.process.pid}" for child in stack.children
            if child.name.startswith(f"engine[{symbol}]") and child.process}


async def test_the_ops_page_lists_every_pair_with_its_leader_and_a_live_rising_seq(
        web: WebExchange, stack: LocalExchange, open_page, admin: ExchangeClient,
        markets: Markets, redis: AnyRedis, screenshots) -> None:
    opened = await open_page(f"{web.api_url}/ops")
    page = opened.page
    # As an operator does: the page asks for the token, which is kept for the tab only.
    await page.fill("#ops-token", web.admin_token)
    await page.click("#ops-token-form button")

    async def every_pair_listed() -> bool:
        return set(await pair_rows(page)) == set(markets.pairs)

    await eventually(every_pair_listed, "a row for every pair", 10)
    rows = await pair_rows(page)
    for symbol, row in rows.items():
        holder = row["leader"].partition(" ")[0]
        assert holder in engine_processes(stack, symbol), (symbol, row["leader"])
        serving = redis.get_node_from_key("{" + symbol + "}:state")
        assert row["redis_node"].startswith(f"{serving.host}:{serving.port} "), row
        assert row["engine_backlog"] == "0" and row["status"] == "trading"
    nodes = await page.evaluate(_NODES)
    assert sorted(n["role"] for n in nodes) == ["master"] * 3 + ["replica"] * 3
    for symbol in markets.pairs:  # each pair on exactly one master
        assert sum(symbol in n["pairs"].split(", ") for n in nodes) == 1

    # Something happens on every pair; the page shows each seq rise without a reload.
    trader_credentials = await admin.create_account()
    for asset in markets.assets:
        await admin.deposit(trader_credentials.account_id, asset, "1000")
    trader = admin.as_account(trader_credentials)
    try:
        for symbol, pair in markets.pairs.items():
            price = await resting_buy_price(admin, symbol, pair.tick_size)
            qty = max(pair.min_qty,
                      (pair.min_notional / price).quantize(pair.lot_size) + pair.lot_size)
            await trader.place_order(symbol, "buy", str(price), str(qty), post_only=True)

        async def every_seq_rose() -> bool:
            now = await pair_rows(page)
            return all(int(now[s]["seq"]) > int(rows[s]["seq"]) for s in markets.pairs)

        await eventually(every_seq_rose, "every pair's seq to rise on the page", 10)
        await page.screenshot(path=screenshots / "ops-page.png", full_page=True)
        assert opened.errors == []
    finally:
        for symbol in markets.pairs:
            await trader.call("DELETE", f"/api/v1/orders?symbol={symbol}", signed=True)


async def test_the_ops_status_answers_operators_only(web: WebExchange, stack: LocalExchange,
                                                     markets: Markets) -> None:
    anonymous = ExchangeClient(web.api_url)
    operator = ExchangeClient(web.api_url, admin_token=stack.options.admin_token)
    try:
        refused = await anonymous.request("GET", "/api/v1/ops/status")
        assert refused.status_code == 401
        status = await operator.call("GET", "/api/v1/ops/status", admin=True)
        assert [p["symbol"] for p in status["pairs"]] == list(markets.pairs)
        assert status["mode"] == "cluster" and len(status["redis_nodes"]) == 6
        assert all(p["leader"] is not None for p in status["pairs"])
        # Every running gateway (the stack's two and the pages' two) reports itself.
        assert len([g for g in status["gateways"] if not g["silent"]]) >= 4, status["gateways"]
        for pair in status["pairs"]:  # the other live engine processes wait as standbys
            alive = {name for name in engine_processes(stack, pair["symbol"])
                     if psutil.pid_exists(int(name.rsplit(":", 1)[1]))}
            assert set(pair["standbys"]) == alive - {pair["leader"]["holder"]}, pair
    finally:
        await anonymous.aclose()
        await operator.aclose()


async def test_on_a_single_redis_node_the_status_shows_that_node_holding_every_pair(
        tmp_path: Path, markets: Markets) -> None:
    api_port, = free_ports(1)
    token = secrets.token_urlsafe(16)
    with single_node(tmp_path) as redis_url:
        env = {**os.environ, "REDIS_URL": redis_url, "EXCHANGE_ADMIN_TOKEN": token,
               SECRETS_KEY_ENV: new_key()}
        api = Process("single-node-api", [*_exchange_command(), "api", "--port", str(api_port)],
                      env, tmp_path / "api.log")
        api.start()
        operator = ExchangeClient(f"http://127.0.0.1:{api_port}", admin_token=token)
        try:
            async def answers() -> bool:
                try:
                    return (await operator.request("GET", "/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(answers, "the API on the single node", 30)
            status = await operator.call("GET", "/api/v1/ops/status", admin=True)
        finally:
            await operator.aclose()
            api.stop()
    assert status["mode"] == "single"
    (node,) = status["redis_nodes"]
    assert node["node"] == redis_url.removeprefix("redis://") and node["role"] == "master"
    assert node["pairs"] == sorted(markets.pairs)
    # No engine runs here: every pair is listed without a leader, at seq 0.
    assert [(p["symbol"], p["leader"], p["seq"]) for p in status["pairs"]] == [
        (symbol, None, 0) for symbol in markets.pairs]


# ---- the parsing, on its own --------------------------------------------------------


def test_a_lapsed_lease_has_no_leader_and_only_standbys_still_reporting_are_listed() -> None:
    now = 1_000_000
    live = [b"holder", b"h:1", b"token", b"7", b"expires", str(now + 2500).encode(),
            f"{STANDBY_FIELD}h:2".encode(), str(now + 1000).encode(),
            f"{STANDBY_FIELD}h:3".encode(), str(now - 1).encode()]
    leader, standbys = lease_view(live, now)
    assert leader is not None and (leader.holder, leader.token, leader.lease_left_ms) == (
        "h:1", 7, 2500)
    assert standbys == ["h:2"]
    lapsed = [b"holder", b"h:1", b"token", b"7", b"expires", str(now).encode()]
    assert lease_view(lapsed, now) == (None, [])


def test_commands_per_second_is_averaged_over_the_readings_of_the_window() -> None:
    meter = RateMeter(window_ms=10_000)
    assert meter.rate("P", 0, 100) is None  # one reading says nothing
    assert meter.rate("P", 500, 105) is None  # nor half a second
    assert meter.rate("P", 2_000, 140) == 20.0
    assert meter.rate("P", 12_000, 340) == 20.0  # the window moved on
    assert meter.rate("P", 13_000, 5) is None  # the count started over: so does the rate


def test_each_pair_is_placed_on_the_master_whose_slots_hold_it() -> None:
    parsed = {
        "10.0.0.1:7000@17000": {"node_id": "a", "flags": "myself,master", "master_id": "-",
                                "slots": [["0", "5460"]], "connected": True},
        "10.0.0.2:7001@17001": {"node_id": "b", "flags": "master", "master_id": "-",
                                "slots": [["5461", "16383"]], "connected": True},
        "10.0.0.3:7002@17002": {"node_id": "c", "flags": "slave,fail", "master_id": "a",
                                "slots": [], "connected": False},
    }
    nodes = cluster_nodes(parsed, {"BTC-USD": 7386, "ETH-BTC": 1762})
    by_node = {n.node: n for n in nodes}
    assert by_node["10.0.0.1:7000"].pairs == ["ETH-BTC"]
    assert by_node["10.0.0.2:7001"].pairs == ["BTC-USD"]
    replica = by_node["10.0.0.3:7002"]
    assert (replica.role, replica.master, replica.healthy) == ("replica", "10.0.0.1:7000", False)


def test_a_gateway_that_stopped_reporting_is_shown_silent_then_forgotten() -> None:
    now = 10_000_000
    report = {"connections": 3, "subscriptions": 9, "pairs": 2, "accounts": 1,
              "slow_consumer_closes": 1}
    registry = {
        b"g:1@8001": json.dumps({**report, "ts": now - 900}).encode(),
        b"g:2@8001": json.dumps({**report, "ts": now - 60_000}).encode(),
        b"g:3@8001": json.dumps({**report, "ts": now - 7_200_000}).encode(),
        b"g:4@8001": b"not json",
    }
    rows = gateway_rows(registry, now)
    assert [(g.gateway, g.silent) for g in rows] == [("g:1@8001", False), ("g:2@8001", True)]
    assert (rows[0].connections, rows[0].slow_consumer_closes) == (3, 1)
