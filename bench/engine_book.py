"""Pure order book throughput: our `OrderBook` against published pure-Python books.

Method. One seeded stream of plain-tuple ops (bench/common.py: 60 % limit adds placed
passively from -12 to +50 ticks off a random-walk mid, so about a fifth cross; 25 %
cancels of resting orders; 15 % market orders; about 2k orders stay resting) is
converted, before any clock starts, into each engine's own command objects. Each engine
then runs the whole stream from an empty book; only the loop that feeds it is timed. Ours
is fed as the engine loop feeds it, `apply_batch` of 100 (command, time) pairs at a time
(the batches are built before timing, as the peers' calls are); the peers take one order
per call, the only interface they have. Ours drops each batch's events before the next
(freeing them is timed), as the engine does after each commit, while the peer keeps its
trade log.

Engines run in rounds, one after another in the same process, the first engine of a
round rotating so none always runs on a warm or a cold CPU; the figure of an engine is
the median of its rounds (the machine is shared and noisy).

Before the timed rounds each engine runs the stream once untimed (which also warms it
up) and its trades are compared with bench/common.py's reference book: our book and
akhil4n-orderbook exactly, trade by trade (price, quantity, maker, taker); fastlob by
trade count, total quantity and quantity per price (it reports no per-trade ids).

Peers, pinned in bench/requirements.txt:
- akhil4n-orderbook 0.1.1 installs a top-level `orderbook.py`; it is loaded by file path
  under another name so it cannot clash with anything called `orderbook`. It assigns
  order ids itself when an order object is built, which happens before timing.
- fastlob 0.0.24 has no market order type: an order is executed against the book when
  its price crosses. A market order is given as a limit at a price no book reaches, and
  whatever it leaves resting is cancelled at once (its IOC semantics). Its order ids are
  random and known only once it returns, so a cancel looks them up in a dict.

    .venv/bin/python bench/engine_book.py [--ops 200000] [--runs 5] [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib
import importlib.metadata
import importlib.util
import io
import pstats
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py

from common import Op, Stream, generate_stream, machine, median, source_digest, write_results

from services.common.messages import CancelOrder, OrderExpired, PlaceOrder, Trade
from services.engine.book import OrderBook

GOAL_OPS_PER_S = 1_000_000
GOAL_RATIO_VS_PEER = 2.0
TS = 1_764_000_000_000  # the book only stamps events with it
BATCH = 100  # commands per apply_batch call: the engine loop hands the book a batch


# ---- engines ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What an engine did with the stream, in comparable terms."""

    trades: list[tuple[int, int, str, str]] | None  # (price, qty, maker, taker), if known
    trade_count: int
    traded_qty: int
    qty_by_price: dict[int, int]
    resting: int
    notes: str = ""


class Engine:
    """An engine under test: `prepare` (untimed) builds its inputs and an empty book,
    `run` (timed) feeds the stream, `outcome` reads what happened."""

    name = ""

    def prepare(self, ops: list[Op]) -> Any:
        raise NotImplementedError

    def run(self, prepared: Any) -> Any:
        raise NotImplementedError

    def check(self, ops: list[Op]) -> Outcome:
        """One untimed pass that records trades."""
        raise NotImplementedError


def _summary(trades: list[tuple[int, int, str, str]] | None, count: int,
             by_price: dict[int, int], resting: int, notes: str = "") -> Outcome:
    return Outcome(trades, count, sum(by_price.values()), dict(by_price), resting, notes)


class Ours(Engine):
    name = "ours"

    def prepare(self, ops: list[Op]) -> Any:
        cmds: list[PlaceOrder | CancelOrder] = []
        for op in ops:
            if op[0] == "limit":
                cmds.append(PlaceOrder(op[1], op[2], op[3], op[4], op[5]))
            elif op[0] == "market":
                cmds.append(PlaceOrder(op[1], op[2], op[3], 0, op[4], type="market"))
            else:
                cmds.append(CancelOrder(op[1], op[2]))
        # What the engine loop hands the book: batches of (command, time) pairs.
        batches = [[(cmd, TS) for cmd in cmds[start:start + BATCH]]
                   for start in range(0, len(cmds), BATCH)]
        return OrderBook(band_bps=500), cmds, batches

    def run(self, prepared: Any) -> OrderBook:
        book, _, batches = prepared
        apply_batch = book.apply_batch
        for batch in batches:
            apply_batch(batch)  # each batch's events are dropped, as after a commit
        return book

    def check(self, ops: list[Op]) -> Outcome:
        book, cmds, _ = self.prepare(ops)
        trades: list[tuple[int, int, str, str]] = []
        by_price: dict[int, int] = defaultdict(int)
        band_stops = 0
        for cmd in cmds:
            for event in book.apply(cmd, TS):
                if isinstance(event, Trade):
                    trades.append((event.price, event.qty, event.maker_order_id,
                                   event.taker_order_id))
                    by_price[event.price] += event.qty
                elif isinstance(event, OrderExpired) and event.reason == "price_band":
                    band_stops += 1
        notes = f"{band_stops} market orders stopped by the 5% band" if band_stops else ""
        return _summary(trades, len(trades), by_price, len(book.orders), notes)


def _load_akhil4n() -> ModuleType:
    """akhil4n-orderbook's top-level orderbook.py, by file path, as `akhil4n_orderbook`."""
    dist = importlib.metadata.distribution("akhil4n-orderbook")
    path = next(Path(str(dist.locate_file(f))) for f in dist.files or []
                if str(f) == "orderbook.py")
    spec = importlib.util.spec_from_file_location("akhil4n_orderbook", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Akhil4n(Engine):
    def __init__(self) -> None:
        self.mod = _load_akhil4n()
        self.name = f"akhil4n-orderbook {importlib.metadata.version('akhil4n-orderbook')}"

    def prepare(self, ops: list[Op]) -> Any:
        # Its orders are mutable objects with ids it assigns, so they are built afresh
        # for every run; a cancel names the id it gave the order.
        m = self.mod
        book = m.OrderBook()
        side = {"buy": m.OrderSide.BID, "sell": m.OrderSide.ASK}
        theirs: dict[str, str] = {}  # our id -> its id
        ours: dict[str, str] = {}  # its id -> our id
        calls: list[tuple[Callable[[Any], Any], Any]] = []
        for op in ops:
            if op[0] == "cancel":
                calls.append((book.cancel_order, theirs[op[1]]))
                continue
            if op[0] == "limit":
                order = m.Order(side[op[3]], op[4], op[5])
                calls.append((book.add_limit_order, order))
            else:
                order = m.MarketOrder(side[op[3]], op[4])
                calls.append((book.add_market_order, order))
            theirs[op[1]], ours[order.order_id] = order.order_id, op[1]
        return book, calls, ours

    def run(self, prepared: Any) -> Any:
        book, calls, _ = prepared
        for call, arg in calls:
            call(arg)
        return book

    def check(self, ops: list[Op]) -> Outcome:
        prepared = self.prepare(ops)
        book = self.run(prepared)
        ours = prepared[2]
        trades = [(t.price, t.quantity_filled, ours[t.filler_id], ours[t.aggressor_id])
                  for t in book.trade_log]
        by_price: dict[int, int] = defaultdict(int)
        for price, qty, _, _ in trades:
            by_price[price] += qty
        return _summary(trades, len(trades), by_price, len(book.orders))


class Fastlob(Engine):
    LIMIT, MARKET, CANCEL = 0, 1, 2

    def __init__(self) -> None:
        self.fl = importlib.import_module("fastlob")
        self.name = f"fastlob {importlib.metadata.version('fastlob')}"
        # A market order: a limit beyond any price the book holds (its maximum is 1e11).
        self.far = {"buy": 10**10, "sell": 1}

    def prepare(self, ops: list[Op]) -> Any:
        fl = self.fl
        side = {"buy": fl.OrderSide.BID, "sell": fl.OrderSide.ASK}
        calls: list[tuple[int, str, Any]] = []
        for op in ops:
            if op[0] == "limit":
                calls.append((self.LIMIT, op[1], fl.OrderParams(side[op[3]], op[4], op[5])))
            elif op[0] == "market":
                calls.append((self.MARKET, op[1],
                              fl.OrderParams(side[op[3]], self.far[op[3]], op[4])))
            else:
                calls.append((self.CANCEL, op[1], None))
        return fl.Orderbook("bench"), calls

    def run(self, prepared: Any, results: list[Any] | None = None) -> Any:
        lob, calls = prepared
        rested = {self.fl.ResultType.LIMIT, self.fl.ResultType.PARTIAL_MARKET}
        limit, cancel_kind = self.LIMIT, self.CANCEL
        process, cancel = lob.process, lob.cancel
        ids: dict[str, str] = {}  # our id -> its id, known once it has the order
        lob.start()  # required by its API; starts a thread that wakes every 0.1 s
        try:
            for kind, order_id, params in calls:
                if kind == limit:
                    result = process(params)
                    ids[order_id] = result.orderid()
                elif kind == cancel_kind:
                    cancel(ids[order_id])
                    continue
                else:
                    result = process(params)
                    if result.kind() in rested:  # IOC: what a market order leaves is gone
                        cancel(result.orderid())
                if results is not None:
                    results.append(result)
        finally:
            lob.stop()
        return lob

    def check(self, ops: list[Op]) -> Outcome:
        # Its results count fully filled makers, not the partial fill of the last one;
        # count those by watching the function that makes them (untimed pass only).
        engine_mod = importlib.import_module("fastlob.engine.engine")
        original = engine_mod.fill_last_order
        partial_fills = 0

        def counting(side: Any, order: Any, result: Any) -> None:
            nonlocal partial_fills
            before = order.quantity()
            original(side, order, result)
            partial_fills += order.quantity() != before

        engine_mod.fill_last_order = counting
        results: list[Any] = []
        try:
            lob = self.run(self.prepare(ops), results)
        finally:
            engine_mod.fill_last_order = original
        by_price: dict[int, int] = defaultdict(int)
        count = partial_fills
        for result in results:
            if result.kind() in {self.fl.ResultType.MARKET, self.fl.ResultType.PARTIAL_MARKET}:
                count += result.n_orders_matched()
                for price, qty in result.execprices().items():
                    by_price[int(price)] += int(Decimal(qty))
        resting = sum(limit.valid_orders() for side in (lob._askside, lob._bidside)
                      for limit in side.limits())
        return _summary(None, count, by_price, resting,
                        "market orders as a far-priced limit + cancel of any rest")


# ---- the benchmark ------------------------------------------------------------------


def same_trades(outcome: Outcome, stream: Stream) -> bool:
    ref = stream.reference
    by_price: dict[int, int] = defaultdict(int)
    for price, qty, _, _ in ref.trades:
        by_price[price] += qty
    if outcome.trades is not None and outcome.trades != ref.trades:
        return False
    return (outcome.trade_count == len(ref.trades) and outcome.traded_qty == stream.traded_qty
            and outcome.qty_by_price == by_price and outcome.resting == ref.resting())


def time_once(engine: Engine, ops: list[Op]) -> float:
    prepared = engine.prepare(ops)
    gc.collect()  # start every run with the same clean heap; gc stays on, as in service
    start = time.perf_counter()
    engine.run(prepared)
    elapsed = time.perf_counter() - start
    del prepared
    return len(ops) / elapsed


def profile_ours(ops: list[Op], top: int = 20) -> str:
    engine = Ours()
    prepared = engine.prepare(ops)
    profiler = cProfile.Profile()
    profiler.runcall(engine.run, prepared)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5, help="timed rounds per engine")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smoke size: 20k ops, 2 runs")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of our book on the stream")
    args = parser.parse_args()
    if args.quick:
        args.ops, args.runs = 20_000, 2
    facts = machine()

    stream = generate_stream(args.ops, args.seed)
    ops = stream.ops
    engines: list[Engine] = [Ours(), Akhil4n(), Fastlob()]
    outcomes = {e.name: e.check(ops) for e in engines}
    rates: dict[str, list[float]] = {e.name: [] for e in engines}
    for r in range(args.runs):
        for e in engines[r % len(engines):] + engines[:r % len(engines)]:
            rates[e.name].append(time_once(e, ops))
    ours, peer, fastlob = engines
    med = {name: median(xs) for name, xs in rates.items()}
    counts = stream.counts
    notes = [f"fastlob: {outcomes[fastlob.name].notes}"]
    notes += [f"{e.name}: {outcomes[e.name].notes}" for e in (ours, peer) if outcomes[e.name].notes]
    figures: dict[str, object] = {
        "benchmark": "engine_book",
        "ops_per_s": round(med[ours.name]),
        "ops_per_s_min": round(min(rates[ours.name])),
        "ops_per_s_max": round(max(rates[ours.name])),
        "peer": peer.name,
        "peer_ops_per_s": round(med[peer.name]),
        "peer_ops_per_s_min": round(min(rates[peer.name])),
        "peer_ops_per_s_max": round(max(rates[peer.name])),
        "ratio_vs_peer": round(med[ours.name] / med[peer.name], 2),
        "fastlob": fastlob.name,
        "fastlob_ops_per_s": round(med[fastlob.name]),
        "fastlob_ops_per_s_min": round(min(rates[fastlob.name])),
        "fastlob_ops_per_s_max": round(max(rates[fastlob.name])),
        "ratio_vs_fastlob": round(med[ours.name] / med[fastlob.name], 2),
        "same_trades": same_trades(outcomes[ours.name], stream),
        "peer_same_trades": same_trades(outcomes[peer.name], stream),
        "fastlob_same_trades": same_trades(outcomes[fastlob.name], stream),
        "goal_ops_per_s": GOAL_OPS_PER_S,
        "goal_ratio_vs_peer": GOAL_RATIO_VS_PEER,
        "meets_goal": med[ours.name] >= GOAL_OPS_PER_S
        and med[ours.name] >= GOAL_RATIO_VS_PEER * med[peer.name],
        "ops": len(ops),
        "runs": args.runs,
        "seed": args.seed,
        "limit_ops": counts["limit"],
        "market_ops": counts["market"],
        "cancel_ops": counts["cancel"],
        "limit_crossing_share": round(stream.crossing_limits / max(1, counts["limit"]), 3),
        "trades": len(stream.reference.trades),
        "traded_qty": stream.traded_qty,
        "resting_orders_at_end": outcomes[ours.name].resting,
        "resting_orders_mean": round(stream.resting_mean),
        "book_source": source_digest("services/engine/book.py"),
        "notes": "; ".join(notes),
        **facts,
    }
    path = write_results("engine_book", figures)

    print(f"{len(ops)} ops (limit {counts['limit']}, market {counts['market']}, cancel "
          f"{counts['cancel']}), {len(stream.reference.trades)} trades, resting at end "
          f"{figures['resting_orders_at_end']}, mean {figures['resting_orders_mean']}; "
          f"median of {args.runs} runs")
    print(f"{'engine':<26} {'ops/s':>10} {'min':>10} {'max':>10} {'ours x':>7} "
          f"{'trades':>7} {'same trades':>11}")
    for e in engines:
        o = outcomes[e.name]
        print(f"{e.name:<26} {med[e.name]:>10,.0f} {min(rates[e.name]):>10,.0f} "
              f"{max(rates[e.name]):>10,.0f} {med[ours.name] / med[e.name]:>7.2f} "
              f"{o.trade_count:>7} {same_trades(o, stream)!s:>11}")
    print(f"goal: >= {GOAL_OPS_PER_S:,} ops/s and >= {GOAL_RATIO_VS_PEER:g}x {peer.name}: "
          f"{'met' if figures['meets_goal'] else 'NOT met'}")
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {path}")
    if args.profile:
        print(profile_ours(ops))


if __name__ == "__main__":
    main()
