"""Shared helpers of the benchmarks: the seeded order stream, a reference book, figures.

The stream is plain tuples, so each engine under test gets it converted to its own
command objects before any timing starts:

    ("limit", order_id, account_id, side, price_ticks, qty_lots)   GTC limit
    ("market", order_id, account_id, side, qty_lots)               market by quantity
    ("cancel", order_id, account_id)                               cancel a resting order

How it is made (`generate_stream`): a mid price walks randomly (±1 tick, half the ops);
60 % of ops are limit adds placed passively from -12 to +50 ticks off that mid (a buy at
mid - offset, a sell at mid + offset), so the ~1/5 with a negative offset usually cross;
25 % cancel an order picked at random among those resting; 15 % are market orders. The
generator knows which orders rest because it runs every op through `ReferenceBook`, a
small, obviously-correct price-time book (also the reference the engines' trades are
compared with). Fixed rates of adds and cancels have no size equilibrium (the book either
drains or grows without bound), so the market orders' mean size is steered by how many
orders rest: about 2k stay resting, the size the peer figures were measured at.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from sortedcontainers import SortedList

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

Op = tuple  # one of the three tuple shapes in the module docstring

MID_TICKS = 6_000_000  # 60 000.00 USD in BTC-USD's 0.01 ticks: a 5 % band is 300k ticks
TARGET_RESTING = 2_000
LIMIT_QTY = (1, 10)  # lots, uniform


# ---- the reference book -------------------------------------------------------------


@dataclass
class ReferenceBook:
    """Price-time priority with GTC limits, market orders by quantity (what is left
    expires) and cancels; no price band (on this stream a 5 % band is never reached).
    Written for clarity, not speed: it only generates and checks the stream."""

    # side -> price -> {order_id: remaining}, dicts keep arrival order within a level
    levels: dict[str, dict[int, dict[str, int]]] = field(
        default_factory=lambda: {"buy": {}, "sell": {}})
    prices: dict[str, SortedList] = field(
        default_factory=lambda: {"buy": SortedList(), "sell": SortedList()})
    where: dict[str, tuple[str, int]] = field(default_factory=dict)  # resting id -> side, price
    trades: list[tuple[int, int, str, str]] = field(default_factory=list)  # px, qty, maker, taker

    def apply(self, op: Op) -> None:
        kind = op[0]
        if kind == "limit":
            _, order_id, _, side, price, qty = op
            left = self._take(order_id, side, price, qty)
            if left:
                self.levels[side].setdefault(price, {})[order_id] = left
                if len(self.levels[side][price]) == 1:
                    self.prices[side].add(price)
                self.where[order_id] = (side, price)
        elif kind == "market":
            _, order_id, _, side, qty = op
            self._take(order_id, side, None, qty)
        else:
            side, price = self.where.pop(op[1])
            level = self.levels[side][price]
            del level[op[1]]
            if not level:
                self._drop_level(side, price)

    def _take(self, taker: str, side: str, limit: int | None, qty: int) -> int:
        other = "sell" if side == "buy" else "buy"
        prices = self.prices[other]
        while qty and prices:
            best = prices[0] if side == "buy" else prices[-1]
            if limit is not None and (best > limit if side == "buy" else best < limit):
                break
            level = self.levels[other][best]
            while qty and level:
                maker = next(iter(level))
                fill = min(qty, level[maker])
                self.trades.append((best, fill, maker, taker))
                qty -= fill
                level[maker] -= fill
                if not level[maker]:
                    del level[maker]
                    del self.where[maker]
            if not level:
                self._drop_level(other, best)
        return qty

    def _drop_level(self, side: str, price: int) -> None:
        del self.levels[side][price]
        self.prices[side].remove(price)

    def resting(self) -> int:
        return len(self.where)


# ---- the stream ---------------------------------------------------------------------


@dataclass
class Stream:
    ops: list[Op]
    reference: ReferenceBook
    seed: int
    resting_mean: float  # resting orders, averaged over the ops
    crossing_limits: int  # limit adds that traded on arrival

    @property
    def counts(self) -> dict[str, int]:
        out = {"limit": 0, "market": 0, "cancel": 0}
        for op in self.ops:
            out[op[0]] += 1
        return out

    @property
    def traded_qty(self) -> int:
        return sum(t[1] for t in self.reference.trades)


def generate_stream(n: int, seed: int = 7, accounts: int = 1000) -> Stream:
    """`n` ops, the same for the same (n, seed, accounts); see the module docstring."""
    rng = random.Random(seed)
    ref = ReferenceBook()
    resting: list[tuple[str, str]] = []  # (order_id, account) of possibly resting orders
    mid = MID_TICKS
    ops: list[Op] = []
    resting_sum = crossing = 0
    for i in range(n):
        if rng.random() < 0.5:
            mid += 1 if rng.random() < 0.5 else -1
        r = rng.random()
        op: Op | None = None
        # Skip orders filled since they were placed, so every cancel targets a resting
        # order (as a user cancels what the API shows open), not a lucky guess.
        while r < 0.25 and resting and op is None:
            j = rng.randrange(len(resting))
            order_id, account = resting[j]
            resting[j] = resting[-1]
            resting.pop()
            if order_id in ref.where:
                op = ("cancel", order_id, account)
        if op is None:
            order_id, account = f"o{i}", f"a{rng.randrange(accounts)}"
            side = "buy" if rng.random() < 0.5 else "sell"
            if 0.25 <= r < 0.40:
                # Mean size grows with the book (and shrinks with it): the one knob
                # that gives the book a level to settle at without changing the mix.
                mean = min(60.0, max(1.0, 3.5 * (ref.resting() / TARGET_RESTING) ** 3))
                op = ("market", order_id, account, side, rng.randint(1, round(2 * mean) - 1))
            else:  # adds, and the rare cancel with nothing left to cancel
                offset = rng.randint(-12, 50)
                price = mid - offset if side == "buy" else mid + offset
                op = ("limit", order_id, account, side, price, rng.randint(*LIMIT_QTY))
                resting.append((order_id, account))
        ops.append(op)
        traded = len(ref.trades)
        ref.apply(op)
        crossing += op[0] == "limit" and len(ref.trades) > traded
        resting_sum += len(ref.where)
    return Stream(ops, ref, seed, resting_sum / max(1, n), crossing)


# ---- figures ------------------------------------------------------------------------


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile, p in [0, 1]."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def machine() -> dict[str, object]:
    """Facts that make a figure comparable, flat for the results JSON."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1.0
    return {"machine_cpus": os.cpu_count(), "machine_cpu_model": model,
            "machine_python": platform.python_version(),
            "machine_platform": platform.platform(), "machine_load1_at_start": round(load1, 2)}


def source_digest(*relative: str) -> str:
    """Short hash of the measured source files: the tree changes, figures name the code."""
    h = hashlib.sha256()
    for rel in relative:
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:12]


def write_results(name: str, figures: dict[str, object]) -> Path:
    """bench/results/<name>.json, a flat object (no nested objects or lists)."""
    bad = [k for k, v in figures.items() if isinstance(v, dict | list | tuple)]
    if bad:
        raise ValueError(f"results must be flat; nested values under {bad}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    return path


def run_on_uvloop(main: Coroutine[Any, Any, dict[str, object]]) -> dict[str, object]:
    """Run a benchmark on uvloop, as the services run (services/common/process.py and
    uvicorn's loop="uvloop"); on asyncio's own loop where uvloop is missing."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# ---- the whole exchange, for the end-to-end benchmarks --------------------------------
# (e2e_latency, rest_capacity, scaling). Imports of bench-only packages (aiohttp) stay
# inside the helpers, so the engine benchmarks import this module without them.


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages: how busy the shared machine was."""
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, max and mean of latencies in ms (nearest rank), rounded to µs."""
    if not samples_ms:
        return {"n": 0}
    return {"n": len(samples_ms),
            "p50_ms": round(percentile(samples_ms, 0.50), 3),
            "p90_ms": round(percentile(samples_ms, 0.90), 3),
            "p99_ms": round(percentile(samples_ms, 0.99), 3),
            "max_ms": round(max(samples_ms), 3),
            "mean_ms": round(statistics.fmean(samples_ms), 3)}


def write_report(name: str, report: dict[str, Any]) -> Path:
    """bench/results/<name>.json for benchmarks whose figures nest (one entry per rate
    or per pair count); the headline figures stay at the top level."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block: processes started in it inherit them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def running_exchange(root: Path, env: dict[str, str] | None = None, gateways: int = 1,
                     ) -> Iterator[tuple[Any, Any]]:
    """(cluster, exchange): a 6-node local Redis Cluster (3 masters, AOF everysec, as
    `exchange up` runs it) and the exchange's real processes on it, as `make up` starts
    them (`LocalExchange`): an engine per pair, settlement, the API, `gateways` gateway
    processes each on its own port; no standby engines and no simulated market, so
    nothing but the benchmark's load runs. `env` reaches every child process."""
    from services.local.redis_cluster import ClusterSpec, LocalRedisCluster, free_ports
    from services.local.up import LocalExchange, UpOptions

    with LocalRedisCluster(ClusterSpec(root / "redis", tuple(free_ports(6)))) as cluster, \
            environment(env or {}):
        api_port, *gateway_ports = free_ports(1 + gateways)
        options = UpOptions(data_dir=root / "exchange", redis_url=cluster.url,
                            api_port=api_port, gateway_ports=tuple(gateway_ports), standbys=0,
                            simulate_rate=0, admin_token=secrets.token_urlsafe(16),
                            log_dir=root / "logs")
        with LocalExchange(options) as exchange:
            yield cluster, exchange


def child_pid(exchange: Any, name: str) -> int:
    """The pid of one of the exchange's processes, by its name (`api`, `gateway-1`,
    `engine[BTC-USD]#1`, `settlement`)."""
    for child in exchange.children:
        if child.name == name and child.process is not None:
            return int(child.process.pid)
    raise KeyError(name)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores together have spent busy since boot (Linux /proc/stat).
    Over a run, less what our own processes used (`cpu_seconds`), it is what the rest
    of a shared machine took meanwhile."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OrderEntry:
    """Signed order entry over one keep-alive connection pool (aiohttp: a lighter client
    than httpx, so the load generator is less often the limit), each request signed as
    API.md says. `place` returns (HTTP status, decoded body); `traceparent` sends a W3C
    trace context, which the API's parent-based sampler follows."""

    def __init__(self, base_url: str, connections: int) -> None:
        self.base_url = base_url
        self.connections = connections
        self.session: Any = None
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder().decode

    async def __aenter__(self) -> OrderEntry:
        import aiohttp

        self.session = aiohttp.ClientSession(
            self.base_url, connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def place(self, credentials: Any, body: dict[str, Any],
                    traceparent: str | None = None, path_prefix: str = "",
                    ) -> tuple[int, Any]:
        from services.common.signing import sign

        content = self._encode(body)
        ts = time.time_ns() // 1_000_000
        headers = {"content-type": "application/json", "X-API-KEY": credentials.api_key,
                   "X-API-TIMESTAMP": str(ts),
                   "X-API-SIGNATURE": sign(credentials.api_secret, ts, "POST",
                                           "/api/v1/orders", content)}
        if traceparent:
            headers["traceparent"] = traceparent
        async with self.session.post(path_prefix + "/api/v1/orders", data=content,
                                     headers=headers) as response:
            raw = await response.read()
            if response.content_type != "application/json":
                return response.status, raw  # e.g. a proxy's or server's error page
            return response.status, self._decode(raw)


async def funded_accounts(admin: Any, count: int, deposits: dict[str, str]) -> list[Any]:
    """`count` new accounts (Credentials) with no practical request rate limit, each
    given `deposits` (asset -> amount)."""
    accounts = []
    for _ in range(count):
        credentials = await admin.create_account(100_000, 1_000_000)
        for asset, amount in deposits.items():
            await admin.deposit(credentials.account_id, asset, amount)
        accounts.append(credentials)
    return accounts


# ---- profiles ---------------------------------------------------------------------------


def py_spy_record(pid: int, seconds: int, out: Path, rate: int = 200) -> subprocess.Popen:
    """Start sampling a running process with py-spy (a bench requirement) for `seconds`,
    without pausing it (`--nonblocking`), into `out` (collapsed stacks); wait() on the
    returned process before reading it."""
    exe = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(exe), "record", "--pid", str(pid), "--duration", str(seconds), "--rate",
         str(rate), "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame_name(frame: str) -> str:
    """`func (path:line)` -> `func (module/path)`, shortened to what names the code."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{func} ({path})" if path else func


def _package(name: str) -> str:
    """What a frame belongs to: `services/<service>` for our code, else the top-level
    package or stdlib module its file is in."""
    path = name.rpartition(" (")[2].rstrip(")")
    parts = path.split("/")
    if parts[0] == "services" and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0].removesuffix(".py") or "?"


def profile_summary(raw: Path, top: int = 12) -> dict[str, Any]:
    """From py-spy's collapsed stacks: busy samples; the share of them spent in each
    package's own code (`packages`); the functions with the most samples in themselves
    (`self`) and anywhere below them (`total`, leaving out the frames nearly every
    sample passes through: the event loop, the server's main). Shares are of the busy
    samples: idle time (waiting in the event loop's poll) is not sampled."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for name in set(frames):
            inclusive[name] += count
    if not samples:
        return {"samples": 0, "packages": [], "self": [], "total": []}

    def share(n: int) -> float:
        return round(n / samples, 3)

    return {"samples": samples,
            "packages": [[name, share(n)] for name, n in packages.most_common(top)],
            "self": [[name, share(n)] for name, n in own.most_common(top)],
            "total": [[name, share(n)] for name, n in inclusive.most_common()
                      if n < 0.9 * samples and "(<module>" not in name][:top]}


def format_profile(title: str, summary: dict[str, Any]) -> str:
    lines = [f"{title}: {summary['samples']} busy samples", "  own time by package:"]
    lines += [f"    {share:6.1%}  {name}" for name, share in summary["packages"]]
    lines.append("  most time in the function itself:")
    lines += [f"    {share:6.1%}  {name}" for name, share in summary["self"]]
    lines.append("  most time in the function and what it calls:")
    lines += [f"    {share:6.1%}  {name}" for name, share in summary["total"]]
    return "\n".join(lines)
