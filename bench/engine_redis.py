"""One pair's engine through a real local Redis Cluster: sustained orders/s and commit times.

Method. A 6-node local cluster (3 masters, 3 replicas, AOF on, as `exchange up` runs it)
is started on free ports in a temp dir. The pair's input stream `{PAIR}:in` is pre-filled
once with N commands from the seeded stream of bench/common.py (limit adds around a
random-walk mid, 25 % cancels of resting orders, 15 % market orders, ~2k resting),
encoded as the API writes them (`XADD {"c": msgpack command, "tp": b""}`, pipelined).

Then, for each batch size, an engine is built in this process exactly as the engine
service builds one (`Engine(redis, pair, batch_size=B)`, `await engine.recover()`) and
fed by the loop of `Engine.run` with the BLOCK left out (everything is already queued):
`engine.read_batch()` (XREAD COUNT B from the last committed input) then
`await engine.process_batch(entries)` - decode, match, and the one-script atomic commit
of events, book levels, trades, candles, market data and the engine's input position.
`orders_per_s` is N / (first read to last commit); a commit time is one
`process_batch` call (matching included, because a batch's commit waits for it).

In the same run, on the same entries, the floor: a bare `XREAD COUNT B` loop - what
reading the input costs with no work at all. Before each run every key of the pair but
its input stream is deleted, so each run starts from an empty book on the same input. Each batch
size runs `--repeats` times, interleaved with the others; figures are medians of runs.

    .venv/bin/python bench/engine_redis.py [--orders 100000] [--batches 100,500,2000]
                                           [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py

from common import (
    Op,
    generate_stream,
    machine,
    median,
    percentile,
    run_on_uvloop,
    source_digest,
    write_results,
)

from services.common import keys
from services.common.messages import CancelOrder, PlaceOrder, command_decoder, encode
from services.common.pairs import load_markets
from services.common.redis_conn import AnyRedis, connect
from services.engine.book import OrderBook
from services.engine.runner import Engine
from services.local.redis_cluster import ClusterSpec, LocalRedisCluster, free_ports

SYMBOL = "BTC-USD"
GOAL_ORDERS_PER_S = 100_000
PREFILL_CHUNK = 2000  # XADDs per pipeline round trip


def to_command(op: Op) -> PlaceOrder | CancelOrder:
    if op[0] == "limit":
        return PlaceOrder(op[1], op[2], op[3], op[4], op[5])
    if op[0] == "market":
        return PlaceOrder(op[1], op[2], op[3], 0, op[4], type="market")
    return CancelOrder(op[1], op[2])


async def prefill(redis: AnyRedis, inbox: str, blobs: list[bytes]) -> float:
    """XADD every command as the API does, pipelined; returns XADDs per second."""
    start = time.perf_counter()
    for i in range(0, len(blobs), PREFILL_CHUNK):
        pipe = redis.pipeline(transaction=False)
        for blob in blobs[i:i + PREFILL_CHUNK]:
            pipe.xadd(inbox, {"c": blob, "tp": b""})
        await pipe.execute()
    return len(blobs) / (time.perf_counter() - start)


async def reset_pair(redis: AnyRedis, k: keys.PairKeys) -> None:
    """Delete every key of the pair except its input: the next engine starts from
    nothing on the same input. Found by hash tag, so keys the engine gains later are
    cleared too."""
    pattern = "{" + k.symbol + "}*"
    doomed = [key async for key in redis.scan_iter(match=pattern, count=1000)
              if key.decode() != k.inbox]
    for key in doomed:
        await redis.delete(key)


async def engine_run(redis: AnyRedis, pair: Any, batch: int, total: int) -> dict[str, float]:
    k = keys.PairKeys(pair.symbol)
    await reset_pair(redis, k)
    engine = Engine(redis, pair, batch_size=batch)
    await engine.recover()
    # Time the commit script's round trip inside process_batch too, to tell Python work
    # (decode, match, encode) from Redis work. A wrapper on the instance, nothing else.
    scripts: list[float] = []
    script = getattr(engine, "_commit", None)
    if script is not None:
        async def timed_script(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return await script(*args, **kwargs)
            finally:
                scripts.append(time.perf_counter() - t)

        engine._commit = timed_script  # type: ignore[method-assign]
    commits: list[float] = []
    consumed = 0
    start = time.perf_counter()
    while consumed < total:
        entries = await engine.read_batch()
        if not entries:
            raise RuntimeError(f"input ran dry after {consumed} of {total} entries")
        t = time.perf_counter()
        await engine.process_batch(entries)
        commits.append(time.perf_counter() - t)
        consumed += len(entries)
    elapsed = time.perf_counter() - start
    # The run counts only if everything was committed: every input, and the seq stored.
    inputs, seq = await redis.hmget(k.state, "inputs", "event_seq")
    if int(inputs or 0) != total or int(seq or 0) != engine.book.last_seq:
        raise RuntimeError(f"incomplete commit: {inputs} of {total} inputs, event_seq {seq} "
                           f"vs book {engine.book.last_seq}")
    ms = [c * 1000 for c in commits]
    return {"orders_per_s": consumed / elapsed, "commit_p50_ms": percentile(ms, 0.50),
            "commit_p99_ms": percentile(ms, 0.99), "commit_max_ms": max(ms),
            "read_share": 1 - sum(commits) / elapsed,
            "script_share": sum(scripts) / elapsed if scripts else -1.0,
            "batches": len(commits), "resting": len(engine.book.orders),
            "events": engine.book.last_seq}


async def floor_run(redis: AnyRedis, inbox: str, batch: int, total: int) -> float:
    """A bare XREAD COUNT batch loop over the same entries: orders per second."""
    consumed = 0
    position = "0-0"
    start = time.perf_counter()
    while consumed < total:
        streams = await redis.xread({inbox: position}, count=batch)
        entries = streams[0][1] if streams else []
        if not entries:
            raise RuntimeError(f"floor ran dry after {consumed} of {total} entries")
        position = entries[-1][0]
        consumed += len(entries)
    return consumed / (time.perf_counter() - start)


def book_only(blobs: list[bytes]) -> float:
    """Decode + match the same commands with no Redis at all: orders per second."""
    book = OrderBook()
    start = time.perf_counter()
    for blob in blobs:
        book.apply(command_decoder.decode(blob), 0)
    return len(blobs) / (time.perf_counter() - start)


async def run(orders: int, batches: list[int], repeats: int, seed: int) -> dict[str, object]:
    pair = load_markets().pair(SYMBOL)
    k = keys.PairKeys(pair.symbol)
    stream = generate_stream(orders, seed)
    blobs = [encode(to_command(op)) for op in stream.ops]
    with tempfile.TemporaryDirectory(prefix="bench-engine-redis-") as tmp, \
            LocalRedisCluster(ClusterSpec(Path(tmp) / "redis", tuple(free_ports(6)))) as cluster:
        redis = await connect(cluster.url)
        try:
            await redis.delete(k.inbox)
            xadd_per_s = await prefill(redis, k.inbox, blobs)
            engine: dict[int, list[dict[str, float]]] = {b: [] for b in batches}
            floor: dict[int, list[float]] = {b: [] for b in batches}
            for _ in range(repeats):
                for b in batches:
                    engine[b].append(await engine_run(redis, pair, b, orders))
                    floor[b].append(await floor_run(redis, k.inbox, b, orders))
        finally:
            await redis.aclose()
    book_rate = median([book_only(blobs) for _ in range(3)])

    figures: dict[str, object] = {"benchmark": "engine_redis"}
    per: dict[int, dict[str, float]] = {}
    for b in batches:
        runs = engine[b]
        per[b] = {name: median([r[name] for r in runs])
                  for name in ("orders_per_s", "commit_p50_ms", "commit_p99_ms",
                               "commit_max_ms", "read_share", "script_share")}
        per[b]["floor_orders_per_s"] = median(floor[b])
        per[b]["orders_per_s_min"] = min(r["orders_per_s"] for r in runs)
        per[b]["orders_per_s_max"] = max(r["orders_per_s"] for r in runs)
        per[b]["batches"] = runs[0]["batches"]
    best = max(batches, key=lambda b: per[b]["orders_per_s"])
    figures.update({
        "orders_per_s": round(per[best]["orders_per_s"]),
        "batch_size": best,
        "commit_p50_ms": round(per[best]["commit_p50_ms"], 3),
        "commit_p99_ms": round(per[best]["commit_p99_ms"], 3),
        "floor_orders_per_s": round(per[best]["floor_orders_per_s"]),
        # Where the wall time of the best run goes: waiting for XREAD, waiting for
        # the commit script, and the rest (decode, match, encode: Python in this process).
        "read_share": round(per[best]["read_share"], 3),
        "script_share": round(per[best]["script_share"], 3),
        "python_share": round(1 - per[best]["read_share"] - per[best]["script_share"], 3),
        "goal_orders_per_s": GOAL_ORDERS_PER_S,
        "meets_goal": per[best]["orders_per_s"] >= GOAL_ORDERS_PER_S,
    })
    for b in batches:
        figures.update({
            f"orders_per_s_batch_{b}": round(per[b]["orders_per_s"]),
            f"orders_per_s_min_batch_{b}": round(per[b]["orders_per_s_min"]),
            f"orders_per_s_max_batch_{b}": round(per[b]["orders_per_s_max"]),
            f"commit_p50_ms_batch_{b}": round(per[b]["commit_p50_ms"], 3),
            f"commit_p99_ms_batch_{b}": round(per[b]["commit_p99_ms"], 3),
            f"commit_max_ms_batch_{b}": round(per[b]["commit_max_ms"], 3),
            f"floor_orders_per_s_batch_{b}": round(per[b]["floor_orders_per_s"]),
            f"read_share_batch_{b}": round(per[b]["read_share"], 3),
            f"script_share_batch_{b}": round(per[b]["script_share"], 3),
        })
    counts = stream.counts
    figures.update({
        "book_only_orders_per_s": round(book_rate),
        "prefill_xadd_per_s": round(xadd_per_s),
        "orders": orders,
        "repeats": repeats,
        "seed": seed,
        "limit_ops": counts["limit"],
        "market_ops": counts["market"],
        "cancel_ops": counts["cancel"],
        "trades": len(stream.reference.trades),
        "resting_orders_at_end": engine[best][0]["resting"],
        "events": int(engine[best][0]["events"]),
        "pair": SYMBOL,
        "cluster": "3 masters + 3 replicas, AOF everysec, same host",
        "engine_source": source_digest("services/engine/runner.py", "services/engine/book.py",
                                       "services/engine/commit.lua"),
    })
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--batches", default="100,500,2000", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs per batch size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smoke size: 10k orders, 1 run")
    args = parser.parse_args()
    if args.quick:
        args.orders, args.repeats = 10_000, 1
    batches = [int(b) for b in args.batches.split(",")]
    facts = machine()
    wall = time.perf_counter()
    figures = run_on_uvloop(run(args.orders, batches, args.repeats, args.seed))
    figures["wall_s"] = round(time.perf_counter() - wall, 1)
    figures.update(facts)
    path = write_results("engine_redis", figures)

    print(f"{args.orders} orders (limit {figures['limit_ops']}, market {figures['market_ops']}, "
          f"cancel {figures['cancel_ops']}), {figures['trades']} trades, "
          f"{figures['events']} events; median of {args.repeats} runs")
    print(f"{'batch':>6} {'orders/s':>9} {'min':>9} {'max':>9} {'commit p50':>10} "
          f"{'p99':>8} {'max':>8} {'floor/s':>9} {'of floor':>8}  wall: read/script/python")
    for b in batches:
        rate, floor = figures[f"orders_per_s_batch_{b}"], figures[f"floor_orders_per_s_batch_{b}"]
        read, script = figures[f"read_share_batch_{b}"], figures[f"script_share_batch_{b}"]
        assert isinstance(rate, int) and isinstance(floor, int)
        assert isinstance(read, float) and isinstance(script, float)
        print(f"{b:>6} {rate:>9,} {figures[f'orders_per_s_min_batch_{b}']:>9,} "
              f"{figures[f'orders_per_s_max_batch_{b}']:>9,} "
              f"{figures[f'commit_p50_ms_batch_{b}']:>8.2f}ms "
              f"{figures[f'commit_p99_ms_batch_{b}']:>6.2f}ms "
              f"{figures[f'commit_max_ms_batch_{b}']:>6.2f}ms {floor:>9,} {rate / floor:>8.0%}"
              f"  {read:>5.0%} / {script:.0%} / {1 - read - script:.0%}")
    print(f"book only (decode + match, no Redis): {figures['book_only_orders_per_s']:,} orders/s;"
          f" prefill XADD pipelined: {figures['prefill_xadd_per_s']:,}/s")
    print(f"goal: >= {GOAL_ORDERS_PER_S:,} orders/s per pair: "
          f"{'met' if figures['meets_goal'] else 'NOT met'} (best batch {figures['batch_size']},"
          f" {figures['orders_per_s']:,}/s); whole benchmark {figures['wall_s']} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
