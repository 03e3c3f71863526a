"""`exchange engine --pair P`: the engine process of one trading pair."""

from __future__ import annotations

import argparse
import asyncio
import os

from services.common.keys import PairKeys
from services.common.metrics import METRICS_PORT_ENV, serve_metrics
from services.common.pairs import load_markets
from services.common.process import run_service
from services.common.redis_conn import DEFAULT_REDIS_URL, REDIS_URL_ENV, connect
from services.engine.lease import Lease
from services.engine.runner import Engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exchange engine")
    parser.add_argument("--pair", required=True, help="the trading pair, e.g. BTC-USD")
    parser.add_argument("--redis-url", default=os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL))
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--snapshot-every", type=int,
                        default=int(os.environ.get("EXCHANGE_SNAPSHOT_EVERY", 50_000)),
                        help="committed inputs between state snapshots (0 = never)")
    parser.add_argument("--metrics-port", type=int,
                        default=int(os.environ.get(METRICS_PORT_ENV, 0)),
                        help="serve Prometheus /metrics on this port (0 = not at all)")
    args = parser.parse_args(argv)
    pair = load_markets().pair(args.pair)

    async def body(stop: asyncio.Event) -> None:
        stop_metrics = serve_metrics(args.metrics_port)
        redis = await connect(args.redis_url)
        try:
            lease = Lease(redis, PairKeys(pair.symbol))
            await Engine(redis, pair, batch_size=args.batch_size, block_ms=200,
                         lease=lease, snapshot_every=args.snapshot_every).run(stop)
        finally:
            await redis.aclose()
            if stop_metrics:
                stop_metrics()

    return run_service(f"engine[{pair.symbol}]", body)
