"""`exchange simulate` against the real stack: its trades reach WebSocket watchers."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from services.common.client import ExchangeClient
from services.local.up import LocalExchange
from tests.support.watcher import BookWatcher

SYMBOL = "ETH-BTC"


async def test_simulate_trades_through_the_api_and_watchers_see_its_trades_live(
        stack: LocalExchange, admin: ExchangeClient) -> None:
    # The simulator watches one gateway replica, our watcher the other: its trades
    # reach every watcher of the pair, not only its own connection.
    async with BookWatcher(stack.ws_urls[1], SYMBOL, depth=10) as watcher:
        simulator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "simulate", "--api-url", stack.api_url,
            "--ws-url", stack.ws_urls[0], "--pairs", SYMBOL, "--rate", "40",
            "--accounts", "3", "--seed", "5", "--duration", "6",
            env={**os.environ, "EXCHANGE_ADMIN_TOKEN": stack.options.admin_token},
            stdout=asyncio.subprocess.PIPE)
        try:
            await watcher.wait_for(lambda w: len(w.trades) >= 3, timeout=30,
                                   what="three simulated trades")
            out, _ = await asyncio.wait_for(simulator.communicate(), 30)
        finally:
            if simulator.returncode is None:
                simulator.kill()
                await simulator.wait()
        assert simulator.returncode == 0
        assert watcher.violations == []  # every book message followed and checksummed

    # What it reports on ending: it traded over REST and saw the market on its own
    # WebSocket connection (book updates and trades), as any client would.
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert stats["placed"] > 0
    assert stats["book_updates"] > 0
    assert stats["trades_seen"] > 0
    # The trades the watcher saw are the exchange's own: REST lists every one of them.
    listed = {trade["id"] for trade in await admin.trades(SYMBOL, limit=1000)}
    assert {trade["id"] for trade in watcher.trades} <= listed
