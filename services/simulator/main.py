"""`exchange simulate`: run the simulated market against an API."""

from __future__ import annotations

import argparse
import asyncio
import os

from services.common.client import ExchangeClient
from services.common.process import run_service
from services.simulator.market import MarketSimulator, SimulatorOptions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exchange simulate")
    parser.add_argument("--api-url", default=os.environ.get("EXCHANGE_API_URL",
                                                            "http://127.0.0.1:8000"))
    parser.add_argument("--admin-token", default=os.environ.get("EXCHANGE_ADMIN_TOKEN"))
    parser.add_argument("--rate", type=float, default=20.0, help="orders per second")
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--pairs", default="", help="comma-separated; default all")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--duration", type=float, help="seconds; default until stopped")
    args = parser.parse_args(argv)
    if not args.admin_token:
        parser.error("--admin-token or EXCHANGE_ADMIN_TOKEN is required to create accounts")
    options = SimulatorOptions(rate=args.rate, accounts=args.accounts,
                               pairs=tuple(p for p in args.pairs.split(",") if p),
                               seed=args.seed, duration_s=args.duration)

    async def body(stop: asyncio.Event) -> None:
        client = ExchangeClient(args.api_url, admin_token=args.admin_token)
        try:
            await MarketSimulator(client, options).run(stop)
        finally:
            await client.aclose()

    return run_service("simulator", body)
