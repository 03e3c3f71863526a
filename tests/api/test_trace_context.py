"""Every command entry carries the W3C traceparent of the request that made it."""

from __future__ import annotations

import re

from services.common import keys
from services.common.client import ExchangeClient
from services.common.redis_conn import connect
from services.local.up import LocalExchange

TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[0-3]$")


async def test_order_command_carries_the_callers_trace(stack: LocalExchange,
                                                       admin: ExchangeClient) -> None:
    credentials = await admin.create_account()
    await admin.deposit(credentials.account_id, "ETH", "1")
    trader = admin.as_account(credentials)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    trader.http.headers["traceparent"] = f"00-{trace_id}-00f067aa0ba902b7-01"
    try:
        order = await trader.place_order("ETH-USD", "sell", "3500.00", "0.010")
    finally:
        del trader.http.headers["traceparent"]
    redis = await connect(stack.redis_url)
    try:
        entries = await redis.xrevrange(keys.PairKeys("ETH-USD").inbox, count=50)
    finally:
        await redis.aclose()
    tagged = [fields[b"tp"].decode() for _, fields in entries
              if order["order_id"].encode() in fields[b"c"]]
    assert len(tagged) == 1
    match = TRACEPARENT.match(tagged[0])
    assert match, tagged[0]
    assert match.group(1) == trace_id  # the same trace, continued by the API's span
    assert match.group(2) != "00f067aa0ba902b7"  # whose own span is the new parent
    await trader.cancel_order(order["order_id"])
