"""Money under concurrency: many accounts trading every pair at once never create, lose or
overdraw a unit (DESIGN §4, issue 4 "Must show").

Eight concurrent clients send a few thousand random signed orders (limit GTC/IOC/FOK,
market by quantity and, for buys, by quote amount) and cancels for twelve accounts on all
three pairs, so holds (account slot), matching (pair slot) and settlement (each account's
slot) interleave for real. A sampler reads the whole ledger throughout and must never
see a negative balance; after every account cancels everything, each asset's deposits
equal the sum of available + held over all accounts (the fee account included) and
nothing is left held.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

from services.common.client import ExchangeClient
from tests.support.ledger import ledger_totals, wait_until_settled

SEED = 20240604
ACCOUNTS = 12
WORKERS = 8
ACTIONS_PER_WORKER = 500  # 4000 signed requests in all
DEPOSIT = {"USD": "15000", "BTC": "0.25", "ETH": "5"}


@dataclass(frozen=True)
class Spec:
    default_mid: Decimal
    tick: Decimal
    lot: Decimal
    lots: tuple[int, int]  # order size range, in lots (kept clear of min_notional)
    quote_amount: tuple[Decimal, Decimal]  # market buy by quote_qty range
    quote_step: Decimal


SPECS = {
    "BTC-USD": Spec(Decimal("60000"), Decimal("0.01"), Decimal("0.0001"), (10, 400),
                    (Decimal("20"), Decimal("2000")), Decimal("0.01")),
    "ETH-USD": Spec(Decimal("3000"), Decimal("0.01"), Decimal("0.001"), (5, 1000),
                    (Decimal("20"), Decimal("2000")), Decimal("0.01")),
    "ETH-BTC": Spec(Decimal("0.05"), Decimal("0.00001"), Decimal("0.001"), (5, 1000),
                    (Decimal("0.0005"), Decimal("0.03")), Decimal("0.00001")),
}
SYMBOLS = list(SPECS)

# Refusals a correct exchange gives to random but well-formed orders and cancels.
EXPECTED_REFUSALS = {"INSUFFICIENT_FUNDS", "NO_LIQUIDITY", "ORDER_NOT_OPEN",
                     "PRICE_OUT_OF_BAND"}


@dataclass
class Tally:
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    throttled: int = 0
    order_ids: list[tuple[int, str]] = field(default_factory=list)  # (account index, id)


async def send(client: ExchangeClient, tally: Tally, method: str, path: str,
               body: dict | None = None) -> Any:
    """One signed request as a bot would send it: a 429 is waited out and retried; an
    expected refusal is counted; anything else is recorded as a failure."""
    while True:
        response = await client.request(method, path, body, signed=True)
        if response.status_code != 429:
            break
        tally.throttled += 1
        await asyncio.sleep(float(response.headers.get("retry-after", "0.1")))
    if response.status_code < 400:
        tally.accepted += 1
        return response.json()
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "?"
    if response.status_code == 400 and code in EXPECTED_REFUSALS:
        tally.refused[code] = tally.refused.get(code, 0) + 1
    else:
        tally.unexpected.append(f"{method} {path} {body} -> {response.status_code} "
                                f"{response.text[:300]}")
    return None


async def reference_prices(admin: ExchangeClient) -> dict[str, Decimal]:
    """Each pair's price to trade around: its last trade (what the price band is measured
    from), else the middle of its book, else a default."""
    refs = {}
    for symbol, spec in SPECS.items():
        last = (await admin.call("GET", f"/api/v1/markets/{symbol}/ticker"))["last"]
        book = await admin.book(symbol, depth=1)
        if last is not None:
            ref = Decimal(last)
        elif book["bids"] and book["asks"]:
            ref = (Decimal(book["bids"][0][0]) + Decimal(book["asks"][0][0])) / 2
        else:
            ref = spec.default_mid
        refs[symbol] = ref.quantize(spec.tick)
    return refs


async def last_trade_id(admin: ExchangeClient, symbol: str) -> int:
    trades = await admin.trades(symbol, limit=1)
    return int(trades[0]["id"]) if trades else 0


def random_order(rnd: random.Random, symbol: str, ref: Decimal, coid: str) -> dict:
    spec = SPECS[symbol]
    side = rnd.choice(["buy", "sell"])
    qty = str(spec.lot * rnd.randint(*spec.lots))
    body: dict[str, Any] = {"symbol": symbol, "side": side, "client_order_id": coid}
    kind = rnd.random()
    if kind < 0.72:
        # Within ±2% of the reference: far inside the 50% band, and crossing often.
        ticks = int(ref * Decimal(rnd.uniform(-0.02, 0.02)) / spec.tick)
        tif = "GTC" if kind < 0.45 else "IOC" if kind < 0.6 else "FOK"
        body |= {"type": "limit", "price": str(ref + spec.tick * ticks), "qty": qty,
                 "tif": tif}
    elif side == "buy" and kind < 0.86:
        low, high = spec.quote_amount
        steps = int((high - low) / spec.quote_step)
        amount = low + spec.quote_step * rnd.randint(0, steps)
        body |= {"type": "market", "quote_qty": str(amount)}
    else:
        body |= {"type": "market", "qty": qty}
    return body


async def test_concurrent_random_trading_conserves_every_asset_and_never_overdraws(
        admin: ExchangeClient, redis) -> None:
    started = time.monotonic()
    accounts: list[ExchangeClient] = []
    for _ in range(ACCOUNTS):
        credentials = await admin.create_account()
        for asset, amount in DEPOSIT.items():
            await admin.deposit(credentials.account_id, asset, amount)
        accounts.append(admin.as_account(credentials))
    refs = await reference_prices(admin)
    trades_before = {s: await last_trade_id(admin, s) for s in SYMBOLS}
    tally = Tally()
    stop = asyncio.Event()
    negatives_seen: list[str] = []
    samples = 0

    async def worker(index: int) -> None:
        rnd = random.Random(SEED * 100 + index)
        mine: list[tuple[int, str]] = []  # resting candidates this worker may cancel
        for n in range(ACTIONS_PER_WORKER):
            if stop.is_set():
                return
            roll = rnd.random()
            if mine and roll < 0.25:
                who, order_id = mine.pop(rnd.randrange(len(mine)))
                await send(accounts[who], tally, "DELETE", f"/api/v1/orders/{order_id}")
            elif roll < 0.27:
                # Cancel-all only for the accounts this worker owns: two identical requests
                # in the same millisecond would share a signature (a replay).
                who = rnd.choice(range(index, ACCOUNTS, WORKERS))
                symbol = rnd.choice(SYMBOLS)
                await send(accounts[who], tally, "DELETE", f"/api/v1/orders?symbol={symbol}")
            else:
                who = rnd.randrange(ACCOUNTS)
                symbol = rnd.choice(SYMBOLS)
                body = random_order(rnd, symbol, refs[symbol], f"w{index}-{n}-{SEED}")
                order = await send(accounts[who], tally, "POST", "/api/v1/orders", body)
                if order is not None:
                    tally.order_ids.append((who, order["order_id"]))
                    if body.get("tif") == "GTC":
                        mine.append((who, order["order_id"]))
            if tally.unexpected:
                stop.set()

    async def sampler() -> None:
        nonlocal samples
        while not stop.is_set():
            _, _, negatives = await ledger_totals(redis)
            samples += 1
            if negatives:
                negatives_seen.extend(negatives)
                stop.set()
            await asyncio.sleep(0.05)

    sampling = asyncio.create_task(sampler())
    try:
        await asyncio.gather(*(worker(i) for i in range(WORKERS)))
    finally:
        stop.set()
        await sampling
    traded_s = time.monotonic() - started

    assert tally.unexpected == [], tally.unexpected[:5]
    assert negatives_seen == [], negatives_seen[:10]
    assert samples >= 5, f"the ledger was sampled only {samples} times during the run"

    # Every account cancels everything, on every pair.
    for account in accounts:
        for symbol in SYMBOLS:
            await account.call("DELETE", f"/api/v1/orders?symbol={symbol}", signed=True)
    await wait_until_settled(redis, SYMBOLS, timeout=60)

    deposited, holdings, negatives = await ledger_totals(redis)
    assert negatives == []
    assert holdings == deposited, (
        f"per asset, available + held over all accounts {dict(holdings)} must equal "
        f"deposits - withdrawals {dict(deposited)}")
    for account in accounts:
        for asset, row in (await account.balances()).items():
            assert Decimal(row["held"]) == 0, (account.credentials, asset, row)
            assert Decimal(row["available"]) >= 0, (account.credentials, asset, row)
    # Every acknowledged order ended in exactly one terminal state (a sample, through the API).
    rnd = random.Random(SEED)
    for who, order_id in rnd.sample(tally.order_ids, min(200, len(tally.order_ids))):
        order = await accounts[who].order(order_id)
        assert order["status"] in ("filled", "cancelled", "rejected"), order
        filled = Decimal(order["filled_qty"])
        if order["status"] == "filled" and order["qty"] is not None:
            assert filled == Decimal(order["qty"]), order

    # The run really was a busy market: most requests went through and every pair traded.
    trades = {s: await last_trade_id(admin, s) - trades_before[s] for s in SYMBOLS}
    total = WORKERS * ACTIONS_PER_WORKER
    assert tally.accepted > total // 2, (tally.accepted, tally.refused)
    assert all(count >= 50 for count in trades.values()), trades
    print(f"\n{total} requests ({tally.accepted} accepted, refused {tally.refused}, "
          f"throttled {tally.throttled}), trades {trades}, {samples} ledger samples; "
          f"trading {traded_s:.1f} s, total {time.monotonic() - started:.1f} s")


def test_random_orders_are_well_formed() -> None:
    """The generator itself: every order is on the pair's tick and lot grid and within ±2%
    of its reference, so a refusal can only come from the exchange's state."""
    rnd = random.Random(SEED)
    for n in range(2000):
        symbol = rnd.choice(SYMBOLS)
        spec = SPECS[symbol]
        body = random_order(rnd, symbol, spec.default_mid, f"t{n}")
        if "price" in body:
            price = Decimal(body["price"])
            assert price == price.quantize(spec.tick, rounding=ROUND_DOWN)
            assert abs(price - spec.default_mid) <= spec.default_mid * Decimal("0.02")
        if "qty" in body:
            qty = Decimal(body["qty"])
            assert qty == qty.quantize(spec.lot) and qty > 0
        if "quote_qty" in body:
            assert body["side"] == "buy" and Decimal(body["quote_qty"]) > 0
