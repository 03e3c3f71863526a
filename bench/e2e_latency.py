"""REST order accepted -> trade visible on a WebSocket watcher, against the floor.

Runs the real processes (a 6-node local cluster, one engine per pair, settlement, the
API, one gateway) and, in the same run, the two Redis hops every order must cross at
least once: SPUBLISH -> SSUBSCRIBE and XADD -> XREADGROUP. Each latency is reported as
percentiles and as a multiple of the pub/sub floor. Prints a table and writes JSON to
bench/results/e2e_latency.json.

    .venv/bin/python bench/e2e_latency.py [--rates 50,100,200] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from collections import defaultdict, deque
from pathlib import Path

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from websockets.asyncio.client import connect as ws_connect

from services.common.client import ExchangeClient
from services.local.redis_cluster import ClusterSpec, LocalRedisCluster, free_ports
from services.local.up import LocalExchange, UpOptions

SYMBOL, PRICE = "ETH-USD", "3000.00"
RESULTS = Path(__file__).parent / "results"


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {"n": len(ordered), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": round(ordered[-1], 3), "mean_ms": round(statistics.fmean(ordered), 3)}


async def paced(rate: float, count: int, send) -> None:
    """Call `send(i)` `count` times at `rate`/s, never waiting for earlier calls."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)


async def pubsub_floor(url: str, rate: float, count: int) -> dict[str, float]:
    """SPUBLISH -> SSUBSCRIBE on the node owning the channel's slot."""
    cluster = RedisCluster.from_url(url)
    await cluster.initialize()
    channel = "{bench}:md"
    node = cluster.get_node_from_key(channel)
    sub = Redis(host=node.host, port=node.port)
    pubsub = sub.pubsub()
    await pubsub.ssubscribe(channel)
    samples: list[float] = []

    async def read() -> None:
        while len(samples) < count:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg and msg["type"] == "smessage":
                samples.append((time.perf_counter_ns() - int(msg["data"])) / 1e6)

    reader = asyncio.create_task(read())
    await paced(rate, count, lambda i: cluster.spublish(channel, time.perf_counter_ns()))
    await asyncio.wait_for(reader, 10)
    await pubsub.aclose()
    await sub.aclose()
    await cluster.aclose()
    return percentiles(samples)


async def stream_floor(url: str, rate: float, count: int) -> dict[str, float]:
    """XADD -> XREADGROUP (BLOCK), the hop from the API to an engine."""
    cluster = RedisCluster.from_url(url)
    await cluster.initialize()
    stream = "{bench}:in"
    await cluster.delete(stream)
    await cluster.xgroup_create(stream, "g", id="0", mkstream=True)
    samples: list[float] = []

    async def read() -> None:
        while len(samples) < count:
            got = await cluster.xreadgroup("g", "c", {stream: ">"}, count=500, block=1000)
            now = time.perf_counter_ns()
            for _, entries in got or []:
                for entry_id, fields in entries:
                    samples.append((now - int(fields[b"t"])) / 1e6)
                    await cluster.xack(stream, "g", entry_id)

    reader = asyncio.create_task(read())
    await paced(rate, count, lambda i: cluster.xadd(stream, {"t": time.perf_counter_ns()}))
    await asyncio.wait_for(reader, 10)
    await cluster.delete(stream)
    await cluster.aclose()
    return percentiles(samples)


async def order_to_watcher(exchange: LocalExchange, admin: ExchangeClient, rate: float,
                           count: int) -> dict[str, float]:
    """IOC buys against one big resting ask; each buy's qty is unique among those in
    flight, so its trade on the WebSocket is matched to its send time."""
    # The taker sends faster than a key's default rate limit allows.
    maker, taker = await admin.create_account(), await admin.create_account(10_000, 20_000)
    await admin.deposit(maker.account_id, "ETH", "10000")
    await admin.deposit(taker.account_id, "USD", "100000000")
    await admin.as_account(maker).place_order(SYMBOL, "sell", PRICE, "9999.000")
    buyer = admin.as_account(taker)
    # qty -> send times of the orders of that qty in flight, oldest first
    sent: dict[str, deque[int]] = defaultdict(deque)
    acks: list[float] = []
    seen: list[float] = []
    decoder = msgspec.json.Decoder()
    async with ws_connect(exchange.ws_urls[0], ping_interval=None) as ws:
        # The book snapshot proves the gateway's subscription is live before we start.
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "args": [
            {"ch": "trades", "symbol": SYMBOL}, {"ch": "book", "symbol": SYMBOL, "depth": 10}]}))
        while decoder.decode(await ws.recv()).get("type") != "snapshot":
            pass

        async def watch() -> None:
            while len(seen) < count:
                message = decoder.decode(await ws.recv())
                if message.get("ch") != "trades":
                    continue
                now = time.perf_counter_ns()
                for trade in message["data"]:
                    if sent[trade["qty"]]:
                        seen.append((now - sent[trade["qty"]].popleft()) / 1e6)

        async def send(i: int) -> None:
            qty = f"{(i % 999 + 1) / 1000:.3f}"
            started = time.perf_counter_ns()
            sent[qty].append(started)
            await buyer.place_order(SYMBOL, "buy", PRICE, qty, tif="IOC")
            acks.append((time.perf_counter_ns() - started) / 1e6)

        watcher = asyncio.create_task(watch())
        cpu, wall = time.process_time(), time.perf_counter()
        await paced(rate, count, send)
        try:
            await asyncio.wait_for(watcher, 30)
        except TimeoutError:
            raise RuntimeError(f"only {len(seen)} of {count} trades seen") from None
        # This process is the load generator; near 100 % it, not the exchange, is the limit.
        client_cpu = (time.process_time() - cpu) / (time.perf_counter() - wall)
    return {**percentiles(seen), "rest_ack_p50_ms": percentiles(acks)["p50_ms"],
            "client_cpu_percent": round(100 * client_cpu)}


async def run(rates: list[float], seconds: float) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    spec = ClusterSpec(root / "redis", tuple(free_ports(6)))
    api_port, gateway_port = free_ports(2)
    with LocalRedisCluster(spec) as cluster:
        options = UpOptions(data_dir=root / "exchange", redis_url=cluster.url,
                            api_port=api_port, gateway_ports=(gateway_port,), simulate_rate=0,
                            admin_token=secrets.token_urlsafe(16), log_dir=root / "logs")
        with LocalExchange(options) as exchange:
            admin = ExchangeClient(exchange.api_url, admin_token=options.admin_token)
            results = []
            for rate in rates:
                count = int(rate * seconds)
                floor = await pubsub_floor(cluster.url, rate, count)
                hop = await stream_floor(cluster.url, rate, count)
                e2e = await order_to_watcher(exchange, admin, rate, count)
                results.append({"rate": rate, **e2e,
                                "floor_p50_ms": floor["p50_ms"], "floor": floor,
                                "xadd_xreadgroup": hop,
                                "p50_multiple_of_floor": round(e2e["p50_ms"] / floor["p50_ms"], 1)})
            await admin.aclose()
    return {"benchmark": "e2e_latency", "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform()}, "seconds_per_rate": seconds, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="50,100,200", help="orders per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    report = asyncio.run(run([float(r) for r in args.rates.split(",")], args.seconds))
    print(f"{'rate/s':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'ack p50':>8} "
          f"{'floor p50':>9} {'xadd p50':>8} {'x floor':>7} {'client cpu':>10}  (ms)")
    for r in report["results"]:
        print(f"{r['rate']:>7.0f} {r['p50_ms']:>7.2f} {r['p90_ms']:>7.2f} {r['p99_ms']:>7.2f} "
              f"{r['max_ms']:>7.2f} {r['rest_ack_p50_ms']:>8.2f} {r['floor_p50_ms']:>9.3f} "
              f"{r['xadd_xreadgroup']['p50_ms']:>8.3f} {r['p50_multiple_of_floor']:>7.1f} "
              f"{r['client_cpu_percent']:>9}%")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'e2e_latency.json'}")


if __name__ == "__main__":
    main()
