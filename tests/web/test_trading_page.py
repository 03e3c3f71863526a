"""The trading page in a real browser (headless Chromium), on the real exchange.

What a trader checks in the first seconds: the market is on screen and live (book, tape,
chart, ticker), another pair and another interval are one click away; an order placed in
the page rests in the book and in open orders until cancelled there; a crossing order
shows its fill and the new balances; when its gateway dies, or a book update fails its
checksum, the page says so and comes back with a book equal to the exchange's.
Screenshots land in test-artifacts/web/.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

from playwright.async_api import Page, WebSocketRoute

from services.common.client import Credentials, ExchangeClient
from services.common.redis_conn import AnyRedis
from services.simulator.market import MarketSimulator, SimulatorOptions
from tests.support.ledger import wait_until_settled
from tests.support.waiting import eventually
from tests.web.conftest import Process, WebExchange

SYMBOL = "BTC-USD"
OTHER = "ETH-USD"
SIMULATED = (SYMBOL, OTHER)
ORDER_QTY = "0.0100"
TICK = Decimal("0.01")

# What the page shows, read from its DOM as a person reads the screen.
_SCREEN = """() => {
  const rows = (sel) => [...document.querySelectorAll(sel)].map(
      (r) => [r.children[1].textContent, r.children[2].textContent]);
  const book = document.getElementById("book"), chart = document.getElementById("candles");
  return {
    symbol: book.dataset.symbol, state: book.dataset.state, seq: book.dataset.seq,
    bids: rows("#book-bids .lvl"), asks: rows("#book-asks .lvl").reverse(),
    mine: [...document.querySelectorAll("#book .lvl[data-mine]")].map((r) => r.dataset.px),
    trades: [...document.querySelectorAll("#trades .trade")].map((r) => r.dataset.id),
    bars: Number(chart.dataset.bars || 0), chartSymbol: chart.dataset.symbol,
    interval: chart.dataset.interval, lastBar: Number(chart.dataset.lastT || 0),
    canvases: [...chart.querySelectorAll("canvas")].filter((c) => c.width > 0).length,
    depthPoints: Number(document.getElementById("depth").dataset.points || 0),
    last: document.getElementById("tk-last").textContent,
    conn: document.getElementById("conn-state").dataset.state,
    account: document.getElementById("account-id").dataset.account || "",
    openOrders: [...document.querySelectorAll("#open-orders tr[data-order-id]")].map(
        (r) => r.dataset.orderId),
    fills: [...document.querySelectorAll("#fills tr[data-order-id]")].map(
        (r) => ({order: r.dataset.orderId, px: r.children[3].textContent,
                 qty: r.children[4].textContent})),
    balances: Object.fromEntries([...document.querySelectorAll("#balances tr[data-asset]")].map(
        (r) => [r.dataset.asset, [r.querySelector(".avail").textContent,
                                  r.querySelector(".held").textContent]])),
  };
}"""


async def screen(page: Page) -> dict[str, Any]:
    return await page.evaluate(_SCREEN)


async def shows_market(page: Page, symbol: str) -> bool:
    s = await screen(page)
    return (s["symbol"] == symbol and s["state"] == "live" and bool(s["bids"])
            and bool(s["asks"]) and bool(s["trades"]) and s["bars"] > 0
            and s["chartSymbol"] == symbol and s["depthPoints"] > 0 and s["last"] != "—")


async def watch_states(page: Page) -> None:
    """Record every state the connection badge and the book go through (window.seen),
    as a person watching the page would see them."""
    await page.evaluate("""() => {
      window.seen = [];
      const note = () => window.seen.push([document.getElementById("conn-state").dataset.state,
                                          document.getElementById("book").dataset.state]);
      const watch = new MutationObserver(note);
      for (const id of ["conn-state", "book"])
        watch.observe(document.getElementById(id),
                      {attributes: true, attributeFilter: ["data-state"]});
    }""")


async def book_equals_rest(page: Page, admin: ExchangeClient) -> bool:
    """The page is live and shows exactly the exchange's book (top 50) at its seq."""
    s = await screen(page)
    if s["conn"] != "live" or s["state"] != "live":
        return False
    rest = await admin.book(SYMBOL, depth=50)
    return s["seq"] == str(rest["seq"]) and (s["bids"], s["asks"]) == (
        [list(level) for level in rest["bids"]], [list(level) for level in rest["asks"]])


async def seq_shown(page: Page, seq: int) -> bool:
    s = await screen(page)
    return s["state"] == "live" and s["seq"] == str(seq)


async def trades_on_tape(page: Page, count: int) -> bool:
    return len((await screen(page))["trades"]) >= count


async def page_account(page: Page, api_url: str) -> ExchangeClient:
    """A REST client of the account the page trades for (its demo account)."""
    stored = await page.evaluate("JSON.parse(localStorage.getItem('exchange.credentials'))")
    return ExchangeClient(api_url, credentials=Credentials(
        stored["account_id"], stored["api_key"], stored["api_secret"]))


async def ready_to_trade(page: Page) -> dict[str, Any]:
    """Wait until the page's demo account is funded on screen and its book is live."""
    async def ready() -> bool:
        s = await screen(page)
        return s["account"] != "" and "USD" in s["balances"] and s["state"] == "live" \
            and s["conn"] == "live"

    await eventually(ready, "the demo account's balances and a live book", 15)
    return await screen(page)


def price_between(book: dict[str, Any], tick: Decimal, fallback: Decimal) -> Decimal:
    """A price one tick above the best bid (so below any ask when the spread allows),
    else one tick below the best ask, else the fallback."""
    if book["bids"]:
        return Decimal(book["bids"][0][0]) + tick
    if book["asks"]:
        return Decimal(book["asks"][0][0]) - tick
    return fallback


async def place_in_page(page: Page, side: str, price: str, qty: str) -> None:
    await page.click(f'#order-form button[data-side="{side}"]')
    await page.click('#order-form button[data-type="limit"]')
    await page.fill("#order-price", price)
    await page.fill("#order-qty", qty)
    await page.click("#order-submit")


async def test_the_page_shows_the_simulated_market_and_switches_pair_and_interval(
        web: WebExchange, open_page, admin: ExchangeClient, redis: AnyRedis,
        screenshots) -> None:
    simulator = MarketSimulator(admin, SimulatorOptions(rate=40, accounts=4, pairs=SIMULATED,
                                                        seed=11))
    stop = asyncio.Event()
    running = asyncio.create_task(simulator.run(stop))
    try:
        opened = await open_page(f"{web.api_url}/#{SYMBOL}")
        page = opened.page
        await eventually(lambda: shows_market(page, SYMBOL),
                         "the book, tape, charts and ticker of the simulated market", 20)
        shown = await screen(page)
        # The tape is the exchange's: every trade on it is one REST lists.
        rest_trades = {t["id"] for t in await admin.trades(SYMBOL, limit=1000)}
        assert set(shown["trades"]) <= rest_trades
        assert shown["canvases"] > 0  # the chart library drew
        await eventually(lambda: trades_on_tape(page, 12), "a busier tape for the screenshot", 10)

        async def pair_list_priced() -> bool:  # each traded pair with its last price
            lasts = [await page.inner_text(f'#pairs .pair[data-symbol="{symbol}"] .last')
                     for symbol in SIMULATED]
            return all(last.replace(".", "", 1).isdigit() for last in lasts)

        await eventually(pair_list_priced, "the last price of every traded pair", 10)
        await page.screenshot(path=screenshots / "trading-page.png")

        await page.click(f'#pairs .pair[data-symbol="{OTHER}"]')
        await eventually(lambda: shows_market(page, OTHER), f"{OTHER} on screen", 15)
        other = await screen(page)
        # ETH-USD sizes have 3 decimals, BTC-USD's 4: nothing of the old pair is left.
        assert all(len(qty.partition(".")[2]) == 3 for _, qty in other["bids"] + other["asks"])

        await page.click('#intervals button[data-interval="5m"]')

        async def five_minute_bars() -> bool:
            s = await screen(page)
            return s["interval"] == "5m" and s["bars"] > 0 and s["chartSymbol"] == OTHER

        await eventually(five_minute_bars, "the 5m candles of ETH-USD", 10)
        rest_bars = await admin.call("GET", f"/api/v1/markets/{OTHER}/candles?interval=5m")
        assert (await screen(page))["lastBar"] >= rest_bars[-1]["t"]
        assert await page.get_attribute('#intervals button[data-interval="5m"]', "class") == "on"

        # Once the market is quiet: grouped by 1.00 (100 ticks) every level is a whole
        # price, and each side holds as much as the levels it groups.
        stop.set()
        await running

        async def quiet_book_on_screen() -> bool:
            return await seq_shown(page, (await admin.book(OTHER, depth=1))["seq"])

        await eventually(quiet_book_on_screen, "the quiet book on screen", 10)
        raw = await screen(page)
        await page.select_option("#grouping", "1.00")
        grouped = await screen(page)
        for side in ("bids", "asks"):
            assert all(px.endswith(".00") for px, _ in grouped[side])
            assert len(grouped[side]) <= len(raw[side])
            assert sum(Decimal(q) for _, q in grouped[side]) == sum(
                Decimal(q) for _, q in raw[side])
        assert opened.errors == []
    finally:
        stop.set()
        await running
        # Other tests expect the pairs' books as they were: the simulator's orders go.
        for account in simulator.accounts:
            for symbol in SIMULATED:
                await account.call("DELETE", f"/api/v1/orders?symbol={symbol}", signed=True)
        await wait_until_settled(redis, list(SIMULATED))


async def test_a_limit_order_from_the_page_rests_in_the_book_and_open_orders_until_cancelled(
        web: WebExchange, open_page, admin: ExchangeClient, screenshots) -> None:
    opened = await open_page(f"{web.api_url}/#{SYMBOL}")
    page = opened.page
    await ready_to_trade(page)
    account = await page_account(page, web.api_url)
    try:
        # Just under the best bid: near the top of the book, where the page shows it.
        top = await admin.book(SYMBOL, depth=1)
        price = Decimal(top["bids"][0][0]) - TICK if top["bids"] else (
            (Decimal(top["asks"][0][0]) * Decimal("0.99")).quantize(TICK) if top["asks"]
            else Decimal("60000.00"))

        # Mistakes are explained in the page, before anything is sent: a price off the
        # tick, a size off the lot, more than the account has.
        await place_in_page(page, "buy", f"{price}5", ORDER_QTY)
        assert "tick size" in await page.inner_text("#order-error")
        await page.fill("#order-price", str(price))
        await page.fill("#order-qty", "0.00015")
        assert "lot size" in await page.inner_text("#order-error")
        await page.fill("#order-qty", "100")
        assert "Not enough USD" in await page.inner_text("#order-error")
        await page.click("#order-submit")
        await page.fill("#order-qty", ORDER_QTY)
        assert await account.call("GET", "/api/v1/orders?status=open", signed=True) == []

        await page.click("#order-submit")

        async def resting() -> bool:
            s = await screen(page)
            return len(s["openOrders"]) == 1 and str(price) in s["mine"]

        await eventually(resting, "the order in open orders and marked in the book", 10)
        order_id = (await screen(page))["openOrders"][0]
        order = await account.call("GET", f"/api/v1/orders/{order_id}", signed=True)
        assert (order["price"], order["qty"], order["status"]) == (str(price), ORDER_QTY, "new")
        rest_book = dict(map(tuple, (await admin.book(SYMBOL, depth=200))["bids"]))
        assert Decimal(rest_book[str(price)]) >= Decimal(ORDER_QTY)
        shown_qty = dict(map(tuple, (await screen(page))["bids"]))[str(price)]
        assert shown_qty == rest_book[str(price)]
        await page.screenshot(path=screenshots / "trading-page-open-order.png")

        await page.click(f'#open-orders button[data-cancel="{order_id}"]')

        async def gone() -> bool:
            s = await screen(page)
            return s["openOrders"] == [] and str(price) not in s["mine"]

        await eventually(gone, "the cancelled order gone from open orders and the book", 10)
        order = await account.call("GET", f"/api/v1/orders/{order_id}", signed=True)
        assert order["status"] == "cancelled"
        assert opened.errors == []
    finally:
        await account.call("DELETE", f"/api/v1/orders?symbol={SYMBOL}", signed=True)
        await account.aclose()


async def test_a_crossing_order_from_the_page_shows_its_fill_and_the_new_balances(
        web: WebExchange, open_page, admin: ExchangeClient, screenshots) -> None:
    opened = await open_page(f"{web.api_url}/#{SYMBOL}")
    page = opened.page
    before = await ready_to_trade(page)
    account = await page_account(page, web.api_url)
    seller_credentials = await admin.create_account()
    await admin.deposit(seller_credentials.account_id, "BTC", "1")
    seller = admin.as_account(seller_credentials)
    try:
        # A resting sell the page's buy crosses; below any other ask, so the fill is at it.
        price = price_between(await admin.book(SYMBOL, depth=1), TICK,
                              Decimal("60000.00"))
        await seller.place_order(SYMBOL, "sell", str(price), ORDER_QTY, post_only=True)

        await place_in_page(page, "buy", str(price), ORDER_QTY)

        async def filled() -> bool:
            s = await screen(page)
            return bool(s["fills"]) and s["balances"].get("BTC", ["", ""])[0] != \
                before["balances"]["BTC"][0]

        await eventually(filled, "the fill and the new BTC balance on the page", 10)
        shown = await screen(page)
        assert sum(Decimal(f["qty"]) for f in shown["fills"]) == Decimal(ORDER_QTY)
        assert all(Decimal(f["px"]) <= price for f in shown["fills"])
        assert shown["openOrders"] == []  # filled whole: nothing left open
        bought = Decimal(shown["balances"]["BTC"][0]) - Decimal(before["balances"]["BTC"][0])
        assert bought == Decimal(ORDER_QTY)

        async def balances_match_rest() -> bool:
            rest = await account.balances()
            s = await screen(page)
            return all(s["balances"].get(asset) == [row["available"], row["held"]]
                       for asset, row in rest.items())

        await eventually(balances_match_rest, "the page's balances to equal the API's", 10)
        assert Decimal((await screen(page))["balances"]["USD"][0]) < \
            Decimal(before["balances"]["USD"][0])
        await page.screenshot(path=screenshots / "trading-page-fill.png")
        assert opened.errors == []
    finally:
        await seller.call("DELETE", f"/api/v1/orders?symbol={SYMBOL}", signed=True)
        await account.call("DELETE", f"/api/v1/orders?symbol={SYMBOL}", signed=True)
        await account.aclose()


async def test_a_book_update_failing_its_checksum_makes_the_page_rebuild_from_a_snapshot(
        web: WebExchange, open_page, admin: ExchangeClient) -> None:
    armed: list[bool] = []
    tampered: list[int] = []

    def corrupt_one_delta(ws: WebSocketRoute) -> None:
        """Between page and gateway: the first book delta once armed gets a wrong checksum."""
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if armed and not tampered and frame.get("ch") == "book" \
                    and frame.get("type") == "delta":
                tampered.append(frame["seq"])
                frame["checksum"] = (frame["checksum"] + 1) % 2**32
                message = json.dumps(frame)
            ws.send(message)

        server.on_message(from_server)

    opened = await open_page(f"{web.api_url}/#{SYMBOL}", websocket=corrupt_one_delta)
    page = opened.page
    await ready_to_trade(page)
    await watch_states(page)
    maker_credentials = await admin.create_account()
    await admin.deposit(maker_credentials.account_id, "USD", "10000")
    maker = admin.as_account(maker_credentials)
    try:
        armed.append(True)
        price = price_between(await admin.book(SYMBOL, depth=1), TICK, Decimal("60000.00")) - TICK
        await maker.place_order(SYMBOL, "buy", str(price), ORDER_QTY, post_only=True)
        await eventually(lambda: bool(tampered), "a delta to corrupt", 10)
        await eventually(lambda: book_equals_rest(page, admin), "a book equal to REST again", 10)
        seen = await page.evaluate("window.seen")
        assert ["live", "resyncing"] in seen, seen  # never shown as live while wrong
        assert str(price) in [px for px, _ in (await screen(page))["bids"]]
        assert opened.errors == []
    finally:
        await maker.call("DELETE", f"/api/v1/orders?symbol={SYMBOL}", signed=True)


async def test_when_its_gateway_dies_the_page_says_reconnecting_then_shows_the_exchanges_book(
        web: WebExchange, open_page, admin: ExchangeClient) -> None:
    opened = await open_page(f"{web.api_url}/#{SYMBOL}")
    page = opened.page
    await ready_to_trade(page)
    await watch_states(page)
    maker_credentials = await admin.create_account()
    await admin.deposit(maker_credentials.account_id, "USD", "10000")
    maker = admin.as_account(maker_credentials)
    victim: Process = web.gateway_serving_the_page()
    try:
        victim.popen.kill()
        # The book changes while the page has no connection: only a fresh snapshot has it.
        top = await admin.book(SYMBOL, depth=1)
        price = price_between(top, TICK, Decimal("60000.00")) - TICK
        await maker.place_order(SYMBOL, "buy", str(price), ORDER_QTY, post_only=True)

        await eventually(lambda: book_equals_rest(page, admin),
                         "a live book equal to REST after reconnecting", 15)
        seen = await page.evaluate("window.seen")
        assert ["reconnecting", "stale"] in seen, seen  # it said so while it was cut off
        # ... and that book has the order placed while the page was cut off.
        assert str(price) in [px for px, _ in (await screen(page))["bids"]]
        assert opened.errors == []
    finally:
        await maker.call("DELETE", f"/api/v1/orders?symbol={SYMBOL}", signed=True)
        # As `make up`'s supervisor would: the killed replica starts again.
        victim.popen.wait()
        victim.start()
