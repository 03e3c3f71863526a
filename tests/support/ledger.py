"""Reading the whole ledger straight from Redis, the way an auditor would."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from services.common import keys
from services.common.redis_conn import AnyRedis


async def wait_until_settled(redis: AnyRedis, symbols: list[str], timeout: float = 20.0) -> None:
    """Until every engine has committed its inputs and settlement has applied every event."""
    deadline = time.monotonic() + timeout
    while True:
        busy = []
        for symbol in symbols:
            pair = keys.PairKeys(symbol)
            if not await engine_caught_up(redis, pair):
                busy.append(pair.inbox)
            groups = {g["name"].decode(): g for g in await redis.xinfo_groups(pair.events)}
            info = groups.get(keys.SETTLEMENT_GROUP)
            if info is None or info["pending"] or info["lag"]:
                busy.append(f"{pair.events}/{keys.SETTLEMENT_GROUP}")
        if not busy:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled within {timeout} s: {busy}")
        await asyncio.sleep(0.02)


async def engine_caught_up(redis: AnyRedis, pair: keys.PairKeys) -> bool:
    """Has the pair's engine committed every input of its stream?"""
    last = await redis.xrevrange(pair.inbox, count=1)
    return not last or await redis.hget(pair.state, "last_input_id") == last[0][0]


async def ledger_totals(redis: AnyRedis) -> tuple[Counter, Counter, list[str]]:
    """(deposited - withdrawn, available + held) per asset over every account (the fee
    account included), and any negative balance."""
    deposited: Counter = Counter()
    holdings: Counter = Counter()
    negatives: list[str] = []
    last_id = int(await redis.get(keys.ACCOUNT_ID_SEQ) or 0)
    for account_id in [*map(str, range(1, last_id + 1)), keys.FEE_ACCOUNT]:
        account = keys.AccountKeys(account_id)
        for field, value in (await redis.hgetall(account.profile)).items():
            name = field.decode()
            if name.startswith("deposited:"):
                deposited[name.split(":", 1)[1]] += int(value)
            elif name.startswith("withdrawn:"):
                deposited[name.split(":", 1)[1]] -= int(value)
        for field, value in (await redis.hgetall(account.balances)).items():
            kind, asset = field.decode().split(":", 1)
            holdings[asset] += int(value)
            if int(value) < 0:
                negatives.append(f"account {account_id} {kind}:{asset} = {int(value)}")
    return deposited, holdings, negatives
