"""How matching scales with pairs: 1, 2, 4 and 8 engine processes on the 3-master cluster.

Method. A 6-node local cluster (3 masters + 3 replicas, AOF everysec, as `exchange up`
runs it) is started on free ports. Eight pairs are made up for the run (a pairs file
passed to every engine as `EXCHANGE_PAIRS_FILE`, each with BTC-USD's rules), their
names chosen so that their hash slots fall on the masters in turn: 1 pair uses one
master, 2 use two, 4 and 8 use all three (3/3/2). Every pair gets the same N commands
(the seeded stream of common.py, as engine_redis uses), encoded as the API writes them
and XADDed once, before any timing, into a staging stream in the pair's slot.

For each pair count P, P real engine processes are started, one per pair, exactly as
`make up` starts them (`exchange engine --pair X`, with `--batch-size`), on empty
inputs. Once every one holds its lease and waits on its input (XREAD BLOCK), each
pair's staged stream is copied to its input stream (COPY: one command per pair, the
entries already there), and the engines run flat out. A pair's time is from that
release (server clock) to its last commit (the id of its last events entry, server
clock); `orders_per_s_by_pairs` is every order of the P pairs / the slowest pair's time,
`per_pair_orders_per_s_by_pairs` the median pair's own rate. Every pair must end with
all N inputs committed. The CPU time of the engines and of the Redis servers over the
run tells when the machine's cores are all busy (`cores` is how many there are), and
what the rest of the machine (other processes: it is shared) took meanwhile.
`--repeats` runs per count, counts interleaved; figures are medians. Then, unless
`--no-profile`, one more single-pair run with py-spy sampling its engine
(results/scaling-profile.txt).

    .venv/bin/python bench/scaling.py [--pairs 1,2,4,8] [--orders 100000] [--repeats 2]
                                      [--batch-size 2000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py

from common import (
    RESULTS,
    cpu_seconds,
    format_profile,
    generate_stream,
    load_average,
    machine,
    machine_busy_seconds,
    median,
    profile_summary,
    py_spy_record,
    run_on_uvloop,
    source_digest,
    write_report,
)
from engine_redis import prefill, to_command
from redis.asyncio.cluster import RedisCluster

from services.common import keys
from services.common.messages import encode
from services.local.redis_cluster import ClusterSpec, LocalRedisCluster, free_ports

GOAL_PER_PAIR = 100_000
PAIR_RULES = """tick_size = "0.01"
lot_size = "0.0001"
min_qty = "0.0001"
max_qty = "1000"
min_notional = "1"
price_decimals = 2
qty_decimals = 4
"""


def staging(symbol: str) -> str:
    return "{" + symbol + "}:bench-staging"  # in the pair's slot, so COPY stays on it


def pick_symbols(cluster: RedisCluster, count: int) -> list[str]:
    """`count` pair names whose slots fall on the masters in turn."""
    masters = sorted({cluster.get_node_from_key("{" + f"S{i}-USD" + "}").name
                      for i in range(64)})
    chosen: list[str] = []
    candidates = (f"S{i}-USD" for i in range(10_000))
    for n in range(count):
        want = masters[n % len(masters)]
        chosen.append(next(c for c in candidates
                           if cluster.get_node_from_key("{" + c + "}").name == want))
    return chosen


def pairs_file(path: Path, symbols: list[str]) -> Path:
    assets = {s.split("-")[0] for s in symbols}
    text = "[assets]\nUSD = { decimals = 6 }\n" + "".join(
        f"{a} = {{ decimals = 8 }}\n" for a in sorted(assets))
    text += "".join(f'\n[[pairs]]\nsymbol = "{s}"\n{PAIR_RULES}' for s in symbols)
    path.write_text(text)
    return path


async def clear(cluster: RedisCluster, symbol: str) -> None:
    """Every key of the pair but its staged stream: the next engine starts from nothing."""
    doomed = [key async for key in cluster.scan_iter(match="{" + symbol + "}*", count=1000)
              if key.decode() != staging(symbol)]
    for key in doomed:
        await cluster.delete(key)


async def engines_waiting(cluster: RedisCluster, symbols: list[str]) -> bool:
    """Has each pair's engine taken the lease and recovered (and so begun reading)?"""
    for symbol in symbols:
        k = keys.PairKeys(symbol)
        if not await cluster.exists(k.lease) or not await cluster.hexists(k.state, "epoch"):
            return False
    return True


async def one_run(cluster: RedisCluster, redis_pids: list[int], symbols: list[str],
                  orders: int, batch: int, env: dict[str, str],
                  profile: Path | None = None) -> dict[str, Any]:
    """The P = len(symbols) engines through one release of their inputs; with `profile`,
    py-spy samples the first engine meanwhile (collapsed stacks into that file)."""
    for symbol in symbols:
        await clear(cluster, symbol)
    engines = [subprocess.Popen(
        [sys.executable, "-m", "services.cli", "engine", "--pair", symbol,
         "--batch-size", str(batch)], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for symbol in symbols]
    try:
        deadline = time.monotonic() + 60
        while not await engines_waiting(cluster, symbols):
            for engine in engines:
                if engine.poll() is not None:
                    raise RuntimeError(f"engine exited: {engine.stderr.read().decode()[-2000:]}"
                                       if engine.stderr else "engine exited")
            if time.monotonic() > deadline:
                raise RuntimeError("engines did not start in 60 s")
            await asyncio.sleep(0.05)
        spy = py_spy_record(engines[0].pid, 10, profile, rate=1000) if profile else None
        await asyncio.sleep(0.5)  # each is now blocked in XREAD on its (empty) input
        pids = [e.pid for e in engines] + redis_pids
        cpu = {pid: cpu_seconds(pid) for pid in pids}
        busy = machine_busy_seconds()
        wall = time.perf_counter()
        seconds, micros = await cluster.time(target_nodes=RedisCluster.RANDOM)
        released_ms = seconds * 1000 + micros / 1000
        for symbol in symbols:
            await cluster.copy(staging(symbol), keys.PairKeys(symbol).inbox)
        deadline = time.monotonic() + 120
        done: set[str] = set()
        while len(done) < len(symbols):
            for symbol in set(symbols) - done:
                committed = await cluster.hget(keys.PairKeys(symbol).state, "inputs")
                if int(committed or 0) == orders:
                    done.add(symbol)
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sorted(done)} committed every input in 120 s")
            await asyncio.sleep(0.05)
        wall = time.perf_counter() - wall
        used = {pid: cpu_seconds(pid) - before for pid, before in cpu.items()}
        busy = machine_busy_seconds() - busy
    finally:
        for engine in engines:
            engine.terminate()
        for engine in engines:
            try:
                engine.wait(10)
            except subprocess.TimeoutExpired:
                engine.kill()
        if profile and spy is not None:
            spy.wait(30)  # it stops and writes once its process has exited
    times = []
    for symbol in symbols:
        [(last_id, _)] = await cluster.xrevrange(keys.PairKeys(symbol).events, count=1)
        last_ms = int(last_id.split(b"-")[0])
        times.append(max(0.001, (last_ms - released_ms) / 1000))
    engine_cpu = sum(used[e.pid] for e in engines)
    redis_cpu = sum(used[pid] for pid in redis_pids)
    return {"aggregate": orders * len(symbols) / max(times),
            "per_pair": median([orders / t for t in times]),
            "slowest_s": max(times), "fastest_s": min(times),
            "engine_cores": engine_cpu / wall, "redis_cores": redis_cpu / wall,
            # Everything else on the machine meanwhile (this process included): on a
            # shared machine, what the engines could not have.
            "other_cores": max(0.0, busy - engine_cpu - redis_cpu) / wall,
            "per_engine_cores": engine_cpu / wall / len(symbols)}


async def run(counts: list[int], orders: int, repeats: int, batch: int,
              tmp: Path, profile: bool) -> dict[str, Any]:
    stream = generate_stream(orders, 7)
    blobs = [encode(to_command(op)) for op in stream.ops]
    spec = ClusterSpec(tmp / "redis", tuple(free_ports(6)))
    with LocalRedisCluster(spec) as local:
        cluster = RedisCluster.from_url(local.url)
        await cluster.initialize()
        try:
            symbols = pick_symbols(cluster, max(counts))
            env = {key: value for key, value in os.environ.items()
                   if key not in ("EXCHANGE_TRACE_DIR", "OTEL_EXPORTER_OTLP_ENDPOINT")}
            env.update(REDIS_URL=local.url,
                       EXCHANGE_PAIRS_FILE=str(pairs_file(tmp / "pairs.toml", symbols)))
            prefill_rate = median([await prefill(cluster, staging(s), blobs) for s in symbols])
            redis_pids = [proc.pid for proc in local.processes.values()]
            runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
            for r in range(repeats):
                for n in (counts if r % 2 == 0 else counts[::-1]):
                    result = await one_run(cluster, redis_pids, symbols[:n], orders, batch, env)
                    runs[n].append(result)
                    print(f"  {n} pair(s): {result['aggregate']:,.0f} orders/s in all, "
                          f"{result['per_pair']:,.0f} per pair; engines "
                          f"{result['engine_cores']:.2f} cores, Redis "
                          f"{result['redis_cores']:.2f}, others {result['other_cores']:.2f}",
                          flush=True)
            masters = {n: len({cluster.get_node_from_key("{" + s + "}").name
                               for s in symbols[:n]}) for n in counts}
            profile_text = ""
            if profile:
                # One more single-pair run, sampled: where an engine's time goes at full load.
                raw = tmp / "engine.raw"
                sampled = await one_run(cluster, redis_pids, symbols[:1], orders, batch, env,
                                        raw)
                profile_text = format_profile(
                    f"one engine process at full load ({sampled['aggregate']:,.0f} orders/s "
                    f"while sampled, batch {batch})", profile_summary(raw))
                RESULTS.mkdir(exist_ok=True)
                (RESULTS / "scaling-profile.txt").write_text(profile_text + "\n")
        finally:
            await cluster.aclose()

    def by_count(name: str, digits: int = 0) -> dict[str, float]:
        return {str(n): round(median([r[name] for r in runs[n]]), digits or None)
                for n in counts}

    aggregate = by_count("aggregate")
    one = aggregate.get("1")
    return {
        "benchmark": "scaling",
        "orders_per_s_by_pairs": aggregate,
        "per_pair_orders_per_s_by_pairs": by_count("per_pair"),
        "aggregate_min_by_pairs": {str(n): round(min(r["aggregate"] for r in runs[n]))
                                   for n in counts},
        "aggregate_max_by_pairs": {str(n): round(max(r["aggregate"] for r in runs[n]))
                                   for n in counts},
        "speedup_by_pairs": {key: round(value / one, 2) for key, value in aggregate.items()}
        if one else {},
        "engine_cores_by_pairs": by_count("engine_cores", 2),
        "redis_cores_by_pairs": by_count("redis_cores", 2),
        "other_cores_by_pairs": by_count("other_cores", 2),
        "masters_by_pairs": {str(n): masters[n] for n in counts},
        "cores": os.cpu_count(),
        "goal_per_pair_orders_per_s": GOAL_PER_PAIR,
        "meets_per_pair_goal": bool(one and one >= GOAL_PER_PAIR),
        "orders_per_pair": orders, "batch_size": batch, "repeats": repeats,
        "prefill_xadd_per_s": round(prefill_rate),
        "pairs": ",".join(symbols),
        "profile": profile_text.replace("\n", " | "),
        "engine_source": source_digest("services/engine/runner.py", "services/engine/book.py",
                                       "services/engine/commit.lua"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="1,2,4,8", help="pair counts, comma-separated")
    parser.add_argument("--orders", type=int, default=100_000, help="per pair")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2000,
                        help="the engines' --batch-size (engine_redis's best)")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the extra single-pair run sampled by py-spy")
    parser.add_argument("--quick", action="store_true", help="smoke size: 20k orders, 1 run")
    args = parser.parse_args()
    if args.quick:
        args.orders, args.repeats = 20_000, 1
    counts = [int(n) for n in args.pairs.split(",")]
    facts = machine()
    load = load_average()
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        report = run_on_uvloop(run(counts, args.orders, args.repeats, args.batch_size,
                                   Path(tmp), not args.no_profile))
    report.update({"wall_s": round(time.perf_counter() - wall, 1),
                   "load_at_start": ",".join(map(str, load)),
                   "load_at_end": ",".join(map(str, load_average())), **facts})
    path = write_report("scaling", report)
    print(f"\n{args.orders:,} orders per pair, engines with batch {args.batch_size}, "
          f"median of {args.repeats}; {report['cores']} cores (load {report['load_at_start']})")
    print(f"{'pairs':>5} {'masters':>7} {'orders/s':>10} {'per pair':>9} {'speedup':>7} "
          f"{'engine cores':>12} {'redis cores':>11} {'other cores':>11}")
    for n in counts:
        key = str(n)
        print(f"{n:>5} {report['masters_by_pairs'][key]:>7} "
              f"{report['orders_per_s_by_pairs'][key]:>10,.0f} "
              f"{report['per_pair_orders_per_s_by_pairs'][key]:>9,.0f} "
              f"{report['speedup_by_pairs'].get(key, 0):>6.2f}x "
              f"{report['engine_cores_by_pairs'][key]:>12.2f} "
              f"{report['redis_cores_by_pairs'][key]:>11.2f} "
              f"{report['other_cores_by_pairs'][key]:>11.2f}")
    print(f"goal: >= {GOAL_PER_PAIR:,} orders/s for one pair: "
          f"{'met' if report['meets_per_pair_goal'] else 'NOT met'}; whole benchmark "
          f"{report['wall_s']} s")
    if report["profile"]:
        print((RESULTS / "scaling-profile.txt").read_text())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
