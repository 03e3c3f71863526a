"""`exchange settlement`: settles every configured pair's events.

SIGTERM or SIGINT stops it cleanly: each pair's worker settles and acknowledges the
batch in hand and reads no other (a blocked read returns within 1 s), then it exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from services.common.metrics import METRICS_PORT_ENV, serve_metrics
from services.common.pairs import load_markets
from services.common.process import run_service
from services.common.redis_conn import DEFAULT_REDIS_URL, REDIS_URL_ENV, connect
from services.settlement.worker import run_settlement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exchange settlement")
    parser.add_argument("--redis-url", default=os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL))
    parser.add_argument("--metrics-port", type=int,
                        default=int(os.environ.get(METRICS_PORT_ENV, 0)),
                        help="serve Prometheus /metrics on this port (0 = not at all)")
    args = parser.parse_args(argv)
    markets = load_markets()

    async def body(stop: asyncio.Event) -> None:
        stop_metrics = serve_metrics(args.metrics_port)
        redis = await connect(args.redis_url)
        try:
            await run_settlement(redis, list(markets.pairs.values()), stop)
        finally:
            await redis.aclose()
            if stop_metrics:
                stop_metrics()

    return run_service("settlement", body)
