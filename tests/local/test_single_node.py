"""The same exchange runs on a single Redis node (cluster mode off), as `make up
REDIS_URL=redis://host:port` promises for users who start small."""

from __future__ import annotations

import secrets

from services.common.client import ExchangeClient
from services.local.redis_cluster import free_ports
from services.local.up import LocalExchange, UpOptions
from tests.support.servers import single_node
from tests.support.waiting import eventually
from tests.support.watcher import BookWatcher


async def test_an_order_trades_and_reaches_a_watcher_on_a_single_node(tmp_path) -> None:
    api_port, gateway_port = free_ports(2)
    with single_node(tmp_path) as redis_url:
        options = UpOptions(data_dir=tmp_path / "exchange", redis_url=redis_url,
                            api_port=api_port, gateway_ports=(gateway_port,), simulate_rate=0,
                            admin_token=secrets.token_urlsafe(16), log_dir=tmp_path / "logs")
        with LocalExchange(options) as exchange:
            admin = ExchangeClient(exchange.api_url, admin_token=options.admin_token)
            try:
                seller, buyer = await admin.create_account(), await admin.create_account()
                await admin.deposit(seller.account_id, "ETH", "5")
                await admin.deposit(buyer.account_id, "BTC", "1")
                async with BookWatcher(exchange.ws_urls[0], "ETH-BTC") as watcher:
                    await admin.as_account(seller).place_order("ETH-BTC", "sell", "0.05000",
                                                               "2.000")
                    await admin.as_account(buyer).place_order("ETH-BTC", "buy", "0.05000",
                                                              "0.500", tif="IOC")
                    await watcher.wait_for(lambda w: w.asks == {"0.05000": "1.500"},
                                           what="the ask after the trade")
                    await watcher.wait_for(lambda w: len(w.trades) == 1, what="the trade")
                    assert watcher.trades[0]["qty"] == "0.500"
                    assert watcher.violations == []

                async def settled() -> bool:
                    balances = await admin.as_account(buyer).balances()
                    return (balances["ETH"]["available"], balances["BTC"]["available"]) == (
                        "0.50000000", "0.97495000")  # 0.025 BTC + 0.2 % taker fee

                await eventually(settled, "the buyer's fill to settle")
            finally:
                await admin.aclose()
