"""`exchange simulate`: run the simulated market against an API and its WebSocket."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os

import httpx

from services.common.client import ApiError, ExchangeClient
from services.common.process import run_service
from services.simulator.market import MarketSimulator, SimulatorOptions

log = logging.getLogger("exchange.simulator")


async def discover_ws_url(client: ExchangeClient) -> str | None:
    """The public WebSocket URL the API gives its own web page (`/config.json`), or None
    if it gives none."""
    try:
        config = await client.call("GET", "/config.json")
    except (ApiError, httpx.HTTPError, ValueError) as exc:
        log.warning("no WebSocket URL from the API (%s): trading without watching", exc)
        return None
    return config.get("ws_url") or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exchange simulate", description=(
        "A simulated market (makers, takers, cancels) trading over the signed REST API and "
        "watching the public WebSocket. Prints what it did as one JSON line when it ends."))
    parser.add_argument("--api-url", default=os.environ.get("EXCHANGE_API_URL",
                                                            "http://127.0.0.1:8000"))
    parser.add_argument("--ws-url", default=os.environ.get("EXCHANGE_WS_URL"),
                        help="the public WebSocket to watch (default: $EXCHANGE_WS_URL, "
                             "else the one the API's /config.json names)")
    parser.add_argument("--no-watch", action="store_true",
                        help="trade without watching the WebSocket (a blind random walk)")
    parser.add_argument("--admin-token", default=os.environ.get("EXCHANGE_ADMIN_TOKEN"))
    parser.add_argument("--rate", type=float, default=20.0, help="orders per second")
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--pairs", default="", help="comma-separated; default all")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--duration", type=float, help="seconds; default until stopped")
    args = parser.parse_args(argv)
    if not args.admin_token:
        parser.error("--admin-token or EXCHANGE_ADMIN_TOKEN is required to create accounts")

    async def body(stop: asyncio.Event) -> None:
        client = ExchangeClient(args.api_url, admin_token=args.admin_token)
        try:
            ws_url = None if args.no_watch else (args.ws_url or await discover_ws_url(client))
            options = SimulatorOptions(rate=args.rate, accounts=args.accounts,
                                       pairs=tuple(p for p in args.pairs.split(",") if p),
                                       seed=args.seed, duration_s=args.duration,
                                       ws_url=ws_url)
            simulator = MarketSimulator(client, options)
            try:
                await simulator.run(stop)
            finally:
                print(json.dumps(simulator.stats()), flush=True)
        finally:
            await client.aclose()

    return run_service("simulator", body)
