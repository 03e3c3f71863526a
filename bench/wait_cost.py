"""What waiting for a replica (WAIT 1) costs an order: hold + enqueue with and without it.

Method. A 6-node local cluster (3 masters, 3 replicas, AOF everysec, as `exchange up`
runs it) is started on free ports in a temp dir, and waited on until every replica is in
sync. In this process, the API's own order path (`OrderService.place`, no HTTP) places
GTC limit buys one after another, each: validate, read the pair (one script on its slot),
hold the funds (one script on the account's slot) and append the command to the pair's
input stream - the last two each followed by `WAIT 1 200` on the same connection when
waiting (`DurableWriter(replicas=1)`, what the API does on a cluster), or not at all
(`replicas=0`). `hold_enqueue` is the time of those two writes (their `DurableWriter.run`
calls, timed on the instance); `place` is the whole call.

In the same run, the floor: one bare `XADD` to a master, alone and pipelined with
`WAIT 1 200` - what one round trip and the wait itself cost with no work at all.
No engine runs (the orders only queue up), and back-pressure is off for the run, so the
figures are the API's Redis writes alone. Modes run interleaved, `--repeats` runs of
`--orders` orders each; each figure is the median over runs of a run's median (or p99).

    .venv/bin/python bench/wait_cost.py [--orders 2000] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py

from common import machine, median, percentile, run_on_uvloop, source_digest, write_results
from redis.asyncio import Redis

from services.api.accounts import AccountStore
from services.api.orders import OrderService
from services.api.schemas import OrderRequest
from services.api.settings import BacklogLimits
from services.common import keys
from services.common.durable import WAIT_TIMEOUT_MS, DurableWriter
from services.common.pairs import load_markets
from services.common.redis_conn import AnyRedis, connect
from services.common.secrets_box import SecretBox, new_key
from services.local.redis_cluster import ClusterSpec, LocalRedisCluster, free_ports

SYMBOL = "BTC-USD"
ORDER = OrderRequest(symbol=SYMBOL, side="buy", price="10000.00", qty="0.0001")  # 1 USD
MODES = {"nowait": 0, "wait": 1}  # replicas each write must reach before the ack


def timed(run: Callable[..., Coroutine[Any, Any, Any]],
          into: list[float]) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await run(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    return wrapper


async def order_run(redis: AnyRedis, orders: OrderService, account_id: str,
                    count: int) -> dict[str, float]:
    """`count` orders one after another: place and hold+enqueue latency (ms)."""
    writes: list[float] = []
    durable = orders.durable
    plain_run = durable.run
    durable.run = timed(plain_run, writes)  # type: ignore[method-assign]
    places: list[float] = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            _, created = await orders.place(account_id, ORDER)
            places.append(time.perf_counter() - start)
            assert created
    finally:
        durable.run = plain_run  # type: ignore[method-assign]
    # Two writes per order, in order: the hold, then the enqueue.
    pairs = [(writes[i] + writes[i + 1]) * 1000 for i in range(0, len(writes), 2)]
    place_ms = [p * 1000 for p in places]
    return {"hold_enqueue_p50_ms": percentile(pairs, 0.50),
            "hold_enqueue_p99_ms": percentile(pairs, 0.99),
            "place_p50_ms": percentile(place_ms, 0.50),
            "place_p99_ms": percentile(place_ms, 0.99)}


async def floor_run(master: Redis, key: str, count: int, wait: bool) -> dict[str, float]:
    """A bare XADD, or XADD + WAIT 1 in one pipeline, `count` times (ms)."""
    samples: list[float] = []
    for _ in range(count):
        pipe = master.pipeline(transaction=False)
        pipe.xadd(key, {"c": b"x"}, maxlen=1000, approximate=True)
        if wait:
            pipe.execute_command("WAIT", 1, WAIT_TIMEOUT_MS)
        start = time.perf_counter()
        results = await pipe.execute()
        samples.append((time.perf_counter() - start) * 1000)
        if wait and results[-1] < 1:
            raise RuntimeError("the replica did not confirm: the cluster is not in sync")
    return {"p50_ms": percentile(samples, 0.50), "p99_ms": percentile(samples, 0.99)}


async def run(count: int, repeats: int) -> dict[str, object]:
    markets = load_markets()
    with tempfile.TemporaryDirectory(prefix="bench-wait-cost-") as tmp, \
            LocalRedisCluster(ClusterSpec(Path(tmp) / "redis", tuple(free_ports(6)))) as cluster:
        redis = await connect(cluster.url)
        accounts = AccountStore(redis, markets, SecretBox(new_key()))
        account = await accounts.create()
        # Enough for every order of every run (and the warm-up) to hold its 1 USD.
        await accounts.deposit(account.account_id, "USD", str(2 * (count * repeats + 100)))
        services = {mode: OrderService(redis, markets, DurableWriter(redis, replicas),
                                       BacklogLimits(engine=0, settlement=0))
                    for mode, replicas in MODES.items()}
        node = redis.get_node_from_key(keys.PairKeys(SYMBOL).inbox)
        master = Redis(host=node.host, port=node.port)
        floor_key = "{" + SYMBOL + "}:bench-floor"
        runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        floors: dict[str, list[dict[str, float]]] = {"xadd": [], "xadd_wait": []}
        try:
            for service in services.values():  # warm up: scripts loaded, pools filled
                await order_run(redis, service, account.account_id, 50)
            for _ in range(repeats):
                for mode, service in services.items():
                    runs[mode].append(await order_run(redis, service, account.account_id,
                                                      count))
                floors["xadd"].append(await floor_run(master, floor_key, count, wait=False))
                floors["xadd_wait"].append(await floor_run(master, floor_key, count, wait=True))
        finally:
            await master.aclose()
            for service in services.values():
                await service.durable.aclose()
            await redis.aclose()

    figures: dict[str, object] = {"benchmark": "wait_cost"}
    for mode in MODES:
        for name in ("hold_enqueue_p50_ms", "hold_enqueue_p99_ms", "place_p50_ms",
                     "place_p99_ms"):
            figures[f"{name.replace('_ms', '')}_{mode}_ms"] = round(
                median([r[name] for r in runs[mode]]), 3)
        figures[f"hold_enqueue_p50_{mode}_ms_min"] = round(
            min(r["hold_enqueue_p50_ms"] for r in runs[mode]), 3)
        figures[f"hold_enqueue_p50_{mode}_ms_max"] = round(
            max(r["hold_enqueue_p50_ms"] for r in runs[mode]), 3)
    for name, samples in floors.items():
        figures[f"floor_{name}_p50_ms"] = round(median([s["p50_ms"] for s in samples]), 3)
        figures[f"floor_{name}_p99_ms"] = round(median([s["p99_ms"] for s in samples]), 3)
    wait_p50 = figures["hold_enqueue_p50_wait_ms"]
    nowait_p50 = figures["hold_enqueue_p50_nowait_ms"]
    assert isinstance(wait_p50, float) and isinstance(nowait_p50, float)
    figures.update({
        "wait_cost_p50_ms": round(wait_p50 - nowait_p50, 3),
        "wait_cost_ratio": round(wait_p50 / nowait_p50, 2),
        "orders_per_run": count,
        "repeats": repeats,
        "wait_timeout_ms": WAIT_TIMEOUT_MS,
        "pair": SYMBOL,
        "cluster": "3 masters + 3 replicas, AOF everysec, same host",
        "api_source": source_digest("services/api/orders.py", "services/api/hold.lua",
                                    "services/common/durable.py"),
    })
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000, help="orders per run and mode")
    parser.add_argument("--repeats", type=int, default=5, help="runs per mode")
    parser.add_argument("--quick", action="store_true", help="smoke size: 200 orders, 1 run")
    args = parser.parse_args()
    if args.quick:
        args.orders, args.repeats = 200, 1
    facts = machine()
    wall = time.perf_counter()
    figures = run_on_uvloop(run(args.orders, args.repeats))
    figures["wall_s"] = round(time.perf_counter() - wall, 1)
    figures.update(facts)
    path = write_results("wait_cost", figures)

    print(f"{args.orders} orders per run, median of {args.repeats} runs "
          "(one order at a time, no engine)")
    print(f"{'':<24} {'p50':>8} {'p99':>8}")
    for mode, label in (("nowait", "hold + enqueue"), ("wait", "hold + enqueue + WAIT 1")):
        print(f"{label:<24} {figures[f'hold_enqueue_p50_{mode}_ms']:>6.3f}ms "
              f"{figures[f'hold_enqueue_p99_{mode}_ms']:>6.3f}ms")
    for mode, label in (("nowait", "place, no WAIT"), ("wait", "place, WAIT 1")):
        print(f"{label:<24} {figures[f'place_p50_{mode}_ms']:>6.3f}ms "
              f"{figures[f'place_p99_{mode}_ms']:>6.3f}ms")
    for name, label in (("xadd", "floor: XADD"), ("xadd_wait", "floor: XADD + WAIT 1")):
        print(f"{label:<24} {figures[f'floor_{name}_p50_ms']:>6.3f}ms "
              f"{figures[f'floor_{name}_p99_ms']:>6.3f}ms")
    print(f"WAIT 1 costs an order {figures['wait_cost_p50_ms']} ms at the median "
          f"(x{figures['wait_cost_ratio']} its hold + enqueue); whole benchmark "
          f"{figures['wall_s']} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
