"""A settlement process told to stop (SIGTERM) settles the batch in hand, acknowledges
it, reads no other and exits 0; started again, it settles the rest exactly once.

The process is the real `exchange settlement`, on the session's cluster, for a pair of
its own (no other settlement reads it). Its backlog is made first: alternate maker sells
and taker buys of one lot at one price, each committed by an engine as its own batch, so
every second output entry is a trade and the balances after any number of settled
entries are known exactly (the pair has no fees).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import psutil

from services.api.accounts import AccountStore
from services.api.orders import OrderService
from services.api.schemas import OrderRequest
from services.common import keys
from services.common.pairs import load_markets
from services.common.redis_conn import AnyRedis
from services.common.secrets_box import SecretBox, new_key
from services.engine.runner import Engine
from services.local.redis_cluster import LocalRedisCluster
from tests.support.ledger import wait_until_settled
from tests.support.waiting import eventually

SYMBOL = "SDN-USD"
PAIRS_TOML = f"""
[assets]
SDN = {{ decimals = 8 }}
USD = {{ decimals = 6 }}

[[pairs]]
symbol = "{SYMBOL}"
tick_size = "0.01"
lot_size = "0.001"
min_qty = "0.001"
max_qty = "1000"
min_notional = "0.001"
price_decimals = 2
qty_decimals = 3
"""
TRADES = 300  # 600 output entries: several of the worker's reads (200 entries each)
PRICE, QTY = "1.00", "0.001"  # a trade moves 0.001 SDN against 0.001 USD
DEPOSIT = "1"  # of SDN to the maker, of USD to the taker


def start_settlement(redis_url: str, pairs_file: Path, log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.cli", "settlement"],
            env={**os.environ, "REDIS_URL": redis_url, "EXCHANGE_PAIRS_FILE": str(pairs_file)},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


async def settlement_group(redis: AnyRedis) -> dict:
    groups = await redis.xinfo_groups(keys.PairKeys(SYMBOL).events)
    return next((g for g in groups if g["name"].decode() == keys.SETTLEMENT_GROUP), {})


def expected(trades: int) -> dict[str, list[dict[str, str]]]:
    """Both accounts' balances once `trades` trades are settled."""
    left = TRADES - trades
    lot = Decimal(QTY)  # 1 lot of SDN, and what it costs in USD
    rest = Decimal(DEPOSIT) - lot * TRADES  # everything was held when the orders came in
    return {
        "maker": [{"asset": "SDN", "available": f"{rest:.8f}", "held": f"{lot * left:.8f}"},
                  {"asset": "USD", "available": f"{lot * trades:.6f}", "held": "0.000000"}],
        "taker": [{"asset": "SDN", "available": f"{lot * trades:.8f}", "held": "0.00000000"},
                  {"asset": "USD", "available": f"{rest:.6f}", "held": f"{lot * left:.6f}"}],
    }


async def test_sigterm_settles_the_batch_in_hand_then_exits_and_a_restart_settles_the_rest(
        redis, redis_cluster: LocalRedisCluster, tmp_path: Path) -> None:
    pairs_file = tmp_path / "pairs.toml"
    pairs_file.write_text(PAIRS_TOML)
    markets = load_markets(pairs_file)
    pair = markets.pair(SYMBOL)
    accounts = AccountStore(redis, markets, SecretBox(new_key()))
    orders = OrderService(redis, markets)
    maker, taker = await accounts.create(), await accounts.create()
    await accounts.deposit(maker.account_id, "SDN", DEPOSIT)
    await accounts.deposit(taker.account_id, "USD", DEPOSIT)
    for _ in range(TRADES):
        for account, side in ((maker, "sell"), (taker, "buy")):
            await orders.place(account.account_id, OrderRequest(
                symbol=SYMBOL, side=side, price=PRICE, qty=QTY))
    engine = Engine(redis, pair, batch_size=2 * TRADES)
    await engine.recover()
    pair_keys = keys.PairKeys(SYMBOL)
    inputs = await engine.read_batch()
    assert len(inputs) == 2 * TRADES
    for entry in inputs:  # one batch, so one output entry, per order
        await engine.process_batch([entry])
    assert await redis.xlen(pair_keys.events) == 2 * TRADES

    async def balances() -> dict[str, list[dict[str, str]]]:
        return {"maker": await accounts.balances(maker.account_id),
                "taker": await accounts.balances(taker.account_id)}

    log = tmp_path / "settlement.log"
    worker = start_settlement(redis_cluster.url, pairs_file, log)
    try:
        async def batch_in_hand() -> bool:
            return int((await settlement_group(redis)).get("pending", 0)) > 0

        # Catch the worker with a batch read but not all settled: freeze it there, see
        # what it holds, and ask it to stop as it resumes.
        process = psutil.Process(worker.pid)
        while True:
            await eventually(batch_in_hand, "the worker to read a batch", timeout=30)
            worker.send_signal(signal.SIGSTOP)
            while process.status() != psutil.STATUS_STOPPED:
                pass  # a matter of microseconds
            group = await settlement_group(redis)
            if group["pending"] > 0:
                break
            worker.send_signal(signal.SIGCONT)  # it was between two reads: try again
        read_when_stopped = group["entries-read"]
        worker.send_signal(signal.SIGTERM)
        worker.send_signal(signal.SIGCONT)
        assert await asyncio.to_thread(worker.wait, 15) == 0, log.read_text()

        group = await settlement_group(redis)
        # Everything it had read was settled and acknowledged; it read nothing more.
        assert (group["pending"], group["entries-read"]) == (0, read_when_stopped)
        assert read_when_stopped < 2 * TRADES
        # Both sides of every trade settled so far, none of the rest: nothing half done.
        assert await balances() == expected(read_when_stopped // 2)

        worker = start_settlement(redis_cluster.url, pairs_file, log)
        await wait_until_settled(redis, [SYMBOL], timeout=30)
        assert await balances() == expected(TRADES)
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 15) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
