"""REST order entry: signed orders per second one API process takes, against bare floors.

Method. The exchange's real processes run on a 6-node local cluster (`running_exchange`
in common.py: an engine per pair, settlement, one API process, one gateway; tracing
off). Closed-loop clients in this process (aiohttp, one keep-alive connection each)
send signed `POST /api/v1/orders` as fast as the answers come: post-only GTC limit buys
of 0.0010 BTC at 1000.00, which rest (the engine's work stays small and constant), each
with a unique `client_order_id`, spread over 8 funded accounts. Each order is
validated, held (script + WAIT 1 on the account's master) and enqueued (XADD + WAIT 1)
before its 201, as always.

Baselines in the same run, from the same clients: a bare FastAPI app under uvicorn with
the API's server settings (uvloop, httptools, no access log), in its own process
(this file, `serve` mode), taking the same JSON body as a pydantic model and
- `const`: returning a constant (the HTTP + framework floor);
- `redis`: doing one Redis Cluster round trip first (INCR), then returning a constant.

For each concurrency (`--concurrency`, default 1,4,16,64) and target, `--rounds` runs
of `--seconds`, targets interleaved; figures are medians over rounds. `orders_per_s` is
the best concurrency's median. Then, unless `--no-profile`, py-spy samples the API for
one more run at the highest concurrency (results/rest_capacity-profile.txt).

    .venv/bin/python bench/rest_capacity.py [--concurrency 1,4,16,64] [--seconds 3]
                                            [--rounds 3] [--no-profile] [--quick]
                                            [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py

from common import (
    RESULTS,
    OrderEntry,
    child_pid,
    cpu_seconds,
    format_profile,
    funded_accounts,
    latency_summary,
    load_average,
    machine,
    machine_busy_seconds,
    median,
    profile_summary,
    py_spy_record,
    run_on_uvloop,
    running_exchange,
    source_digest,
    write_results,
)

SYMBOL = "BTC-USD"
ACCOUNTS = 8
TARGETS = ("api", "const", "redis")


# ---- serve mode: the bare FastAPI baseline ------------------------------------------------


class Order(BaseModel):
    """The order body, as a plain pydantic model (the API validates it further)."""

    symbol: str
    side: str
    type: str
    price: str
    qty: str
    tif: str
    post_only: bool = False
    client_order_id: str | None = None


def serve(port: int, redis_url: str) -> None:
    """The baseline app: what any FastAPI endpoint under uvicorn costs, with and without
    one Redis round trip."""
    import uvicorn
    from fastapi import FastAPI
    from redis.asyncio.cluster import RedisCluster

    redis = RedisCluster.from_url(redis_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await redis.initialize()  # before the first request, as the API connects first
        yield
        await redis.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/const/api/v1/orders", status_code=201)
    async def const(order: Order) -> dict[str, str]:
        return {"order_id": "0", "status": "new"}

    @app.post("/redis/api/v1/orders", status_code=201)
    async def one_round_trip(order: Order) -> dict[str, str]:
        await redis.incr("{bench}:counter")
        return {"order_id": "0", "status": "new"}

    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)


# ---- the clients ----------------------------------------------------------------------------


class Target:
    """Where a run sends: the API, or one of the baseline's two routes (same body, same
    signed headers, which the baseline ignores)."""

    def __init__(self, name: str, entry: OrderEntry, prefix: str, pid: int) -> None:
        self.name, self.entry, self.prefix, self.pid = name, entry, prefix, pid


async def closed_loop(target: Target, accounts: list[Any], concurrency: int, seconds: float,
                      ids: itertools.count) -> dict[str, Any]:
    """`concurrency` clients, each sending its next order when the last is answered."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    entry = target.entry

    async def client(n: int) -> None:
        credentials = accounts[n % len(accounts)]
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            body = {"symbol": SYMBOL, "side": "buy", "type": "limit", "price": "1000.00",
                    "qty": "0.0010", "tif": "GTC", "post_only": True,
                    "client_order_id": f"cap-{next(ids)}"}
            started = time.perf_counter()
            status, _ = await entry.place(credentials, body, path_prefix=target.prefix)
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[status] = statuses.get(status, 0) + 1

    cpu_before, client_before = cpu_seconds(target.pid), time.process_time()
    busy = machine_busy_seconds()
    wall = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(concurrency)))
    wall = time.perf_counter() - wall
    ok = statuses.get(201, 0)
    return {"per_s": ok / wall, **latency_summary(latencies),
            "server_cpu": (cpu_seconds(target.pid) - cpu_before) / wall,
            "client_cpu": (time.process_time() - client_before) / wall,
            "machine_cores": (machine_busy_seconds() - busy) / wall,
            "errors": sum(n for status, n in statuses.items() if status != 201),
            "statuses": statuses}


async def run(levels: list[int], seconds: float, rounds: int, profile: bool,
              env: dict[str, str]) -> dict[str, object]:
    from services.common.client import ExchangeClient
    from services.local.redis_cluster import free_ports

    figures: dict[str, object] = {"benchmark": "rest_capacity"}
    with tempfile.TemporaryDirectory(prefix="bench-rest-") as tmp, \
            running_exchange(Path(tmp), {"EXCHANGE_TRACE_DIR": "", **env}) as (cluster, exchange):
        [port] = free_ports(1)
        baseline = subprocess.Popen(
            [sys.executable, __file__, "serve", str(port), cluster.url],
            stdin=subprocess.DEVNULL)
        admin = ExchangeClient(exchange.api_url, admin_token=exchange.options.admin_token)
        try:
            accounts = await funded_accounts(admin, ACCOUNTS, {"USD": "1000000000"})
            await wait_http(f"http://127.0.0.1:{port}/docs")
            ids = itertools.count()
            top = max(levels)
            async with OrderEntry(exchange.api_url, top) as api_entry, \
                    OrderEntry(f"http://127.0.0.1:{port}", top) as bare_entry:
                targets = {
                    "api": Target("api", api_entry, "", child_pid(exchange, "api")),
                    "const": Target("const", bare_entry, "/const", baseline.pid),
                    "redis": Target("redis", bare_entry, "/redis", baseline.pid),
                }
                # Warm-up: connections open, code paths and Redis scripts loaded.
                for target in targets.values():
                    await closed_loop(target, accounts, top, 0.5, ids)
                runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
                for r in range(rounds):
                    for c in levels:
                        names = TARGETS if r % 2 == 0 else TARGETS[::-1]
                        for name in names:
                            runs.setdefault((name, c), []).append(
                                await closed_loop(targets[name], accounts, c, seconds, ids))
                profile_text = ""
                if profile:
                    out = RESULTS / "rest_capacity-profile.raw"
                    RESULTS.mkdir(exist_ok=True)
                    spy = py_spy_record(targets["api"].pid, int(seconds) + 1, out)
                    await asyncio.sleep(0.3)  # py-spy attaches
                    profiled = await closed_loop(targets["api"], accounts, top, seconds, ids)
                    spy.wait(30)
                    summary = profile_summary(out)
                    profile_text = format_profile(
                        f"API process under {top} concurrent order clients "
                        f"({profiled['per_s']:.0f} orders/s while sampled)", summary)
                    (RESULTS / "rest_capacity-profile.txt").write_text(profile_text + "\n")
                    out.unlink(missing_ok=True)
        finally:
            await admin.aclose()
            baseline.terminate()
            baseline.wait(10)

    per: dict[tuple[str, int], dict[str, float]] = {}
    for (name, c), results in runs.items():
        per[name, c] = {key: median([r[key] for r in results])
                        for key in ("per_s", "p50_ms", "p99_ms", "server_cpu", "client_cpu",
                                    "machine_cores")}
        per[name, c]["per_s_min"] = min(r["per_s"] for r in results)
        per[name, c]["per_s_max"] = max(r["per_s"] for r in results)
        per[name, c]["errors"] = sum(r["errors"] for r in results)
    best = max(levels, key=lambda c: per["api", c]["per_s"])
    best_const = max(per["const", c]["per_s"] for c in levels)
    best_redis = max(per["redis", c]["per_s"] for c in levels)
    figures.update({
        "orders_per_s": round(per["api", best]["per_s"]),
        "concurrency": best,
        "p50_ms": round(per["api", best]["p50_ms"], 3),
        "p99_ms": round(per["api", best]["p99_ms"], 3),
        "api_cpu": round(per["api", best]["server_cpu"], 2),
        "baseline_const_per_s": round(best_const),
        "baseline_redis_per_s": round(best_redis),
        "share_of_const": round(per["api", best]["per_s"] / best_const, 3),
        "share_of_redis": round(per["api", best]["per_s"] / best_redis, 3),
        "errors": sum(int(per["api", c]["errors"]) for c in levels),
    })
    for name in TARGETS:
        prefix = "" if name == "api" else f"{name}_"
        for c in levels:
            f = per[name, c]
            figures.update({
                f"{prefix}per_s_c{c}": round(f["per_s"]),
                f"{prefix}per_s_min_c{c}": round(f["per_s_min"]),
                f"{prefix}per_s_max_c{c}": round(f["per_s_max"]),
                f"{prefix}p50_ms_c{c}": round(f["p50_ms"], 3),
                f"{prefix}p99_ms_c{c}": round(f["p99_ms"], 3),
                f"{prefix}server_cpu_c{c}": round(f["server_cpu"], 2),
                f"{prefix}client_cpu_c{c}": round(f["client_cpu"], 2),
                f"{prefix}machine_cores_c{c}": round(f["machine_cores"], 2),
            })
    figures.update({
        "concurrency_levels": ",".join(map(str, levels)), "seconds": seconds,
        "rounds": rounds, "accounts": ACCOUNTS, "pair": SYMBOL,
        "profile": profile_text.replace("\n", " | ") if profile_text else "",
        "api_source": source_digest("services/api/orders.py", "services/api/app.py",
                                    "services/api/auth.py", "services/api/hold.lua",
                                    "services/common/durable.py"),
    })
    return figures


async def wait_http(url: str, timeout: float = 20.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer")
            await asyncio.sleep(0.1)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,4,16,64", help="clients, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the exchange's processes, e.g. "
                             "OTEL_TRACES_SAMPLER=always_off (repeatable): a before/after "
                             "of a setting is two runs")
    parser.add_argument("--quick", action="store_true", help="smoke size: 1 round of 1 s")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
    levels = [int(c) for c in args.concurrency.split(",")]
    facts = machine()
    load = load_average()
    wall = time.perf_counter()
    env = dict(item.split("=", 1) for item in args.env)
    figures = run_on_uvloop(run(levels, args.seconds, args.rounds, not args.no_profile, env))
    figures["env"] = " ".join(args.env)
    figures["wall_s"] = round(time.perf_counter() - wall, 1)
    figures["load_at_start"] = ",".join(map(str, load))
    figures["load_at_end"] = ",".join(map(str, load_average()))
    figures.update(facts)
    path = write_results("rest_capacity", figures)

    print(f"signed POST /api/v1/orders, closed loop, median of {args.rounds} rounds of "
          f"{args.seconds:g} s (load {figures['load_at_start']})")
    print(f"{'clients':>7} | {'orders/s':>8} {'p50':>7} {'p99':>7} {'api cpu':>7} | "
          f"{'const/s':>8} {'p50':>6} | {'redis/s':>8} {'p50':>6} | {'of const':>8}")
    for c in levels:
        api, const, redis = (figures[f"per_s_c{c}"], figures[f"const_per_s_c{c}"],
                             figures[f"redis_per_s_c{c}"])
        assert isinstance(api, int) and isinstance(const, int)
        print(f"{c:>7} | {api:>8,} {figures[f'p50_ms_c{c}']:>5.2f}ms "
              f"{figures[f'p99_ms_c{c}']:>5.2f}ms {figures[f'server_cpu_c{c}']:>7.2f} | "
              f"{const:>8,} {figures[f'const_p50_ms_c{c}']:>4.2f}ms | {redis:>8,} "
              f"{figures[f'redis_p50_ms_c{c}']:>4.2f}ms | {api / const:>8.1%}")
    print(f"one API process: {figures['orders_per_s']:,} orders/s at {figures['concurrency']} "
          f"clients (p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
          f"{figures['api_cpu']} cores); bare FastAPI {figures['baseline_const_per_s']:,}/s, "
          f"with one Redis round trip {figures['baseline_redis_per_s']:,}/s; "
          f"errors {figures['errors']}; whole benchmark {figures['wall_s']} s")
    if figures["profile"]:
        print((RESULTS / "rest_capacity-profile.txt").read_text())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
