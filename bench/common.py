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
import statistics
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
