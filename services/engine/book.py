"""A pure price-time-priority order book: no I/O, no clock, no randomness.

`OrderBook.apply(command, ts)` returns the events the command caused; the same
commands with the same timestamps always give the same events (DESIGN §5), which is
what makes crash recovery by replay exact.

Order types: limit (GTC / IOC / FOK, optionally post-only), market (by quantity, or
for buys by a quote budget) bounded by a price band, stop-market and stop-limit
triggered by the last trade price. Self-trade prevention is decided by the incoming
order. Integers only: prices in ticks, quantities in lots, budgets in tick*lot units.

How it is made fast (bench/engine_book.py measures it). The engine's throughput is
this module's, and in CPython the cost is mostly the number of bytecodes run per
command, and then memory: the remembered order ids are a large set, one cache miss per
look-up. So:
- the commands that make up nearly all traffic - a plain limit or market order (no
  post-only, budget, stop, self-trade prevention or FOK) and the cancel of a resting
  order - run inline in `apply_batch`; everything else goes through ordinary methods
  (`_place_other`, `_execute`, `_match`, ...), which are simpler and slower;
- `apply_batch` keeps the event sequence in a local and writes it back to
  `self.last_seq` before calling one of those methods, reading it again after (the
  lines marked `_sync`);
- rare cases sit in short blocks right after the test that picks them, so hot tests
  jump a short way and keep their specialised fast form in CPython 3.11;
- a plain taker matches inline too, in a loop where each fill ends the taker or the
  maker; self-trade prevention, budgets and FOK take the general `_match`;
- a batch's placement ids are checked against the remembered ones together, in C loops
  whose cache misses overlap, instead of one by one.
The general methods are the reference the fast paths must agree with, event for event
(tests/engine/test_book.py checks both against a small model).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from heapq import heapify, heappop, heappush

import msgspec
from sortedcontainers import SortedList

from services.common.messages import (
    AmendOrder,
    AmendRejected,
    CancelAll,
    CancelOrder,
    CancelRejected,
    Command,
    DuplicateIgnored,
    Event,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderTriggered,
    PlaceOrder,
    Trade,
)

DEFAULT_BAND_BPS = 500  # market orders fill within 5 % of the reference price
# Order ids remembered to refuse a re-sent placement (ids are unique per order, so a
# repeat is the same command delivered twice): the last 1-2 generations of this many.
# Bounded, and kept in snapshots so a replay remembers exactly what the original run did.
REMEMBERED_IDS = 200_000
# A level's queue is compacted when it holds this many dead entries and more dead than live.
COMPACT_DEAD = 32


class RestingOrder(msgspec.Struct, gc=False):
    """An order in the book. A C-level struct: built and read far faster than a Python
    class; never in a reference cycle (strings and ints only), so the GC skips it."""

    order_id: str
    account_id: str
    side: str
    price: int
    qty: int  # total quantity, as amended
    remaining: int  # 0 once cancelled: a dead entry, left in its level's queue
    post_only: bool
    # Orders that rest or wait earlier have a smaller arrival: the seq of the last event
    # before the order went in (each rest follows an event of its own, so they differ).
    # Cancel-all goes oldest first by it, and stops trigger in arrival order.
    arrival: int = 0


class Level(deque[RestingOrder]):
    """Orders at one price in arrival order: the queue itself, so reading its front is
    one C-level index.

    A cancelled order is not searched for in the queue: its `remaining` drops to 0 and it
    stays, dead, until it reaches the front (or the queue is compacted). So a cancel is
    O(1).
    """

    __slots__ = ("dead", "total")

    # Both set by OrderBook._add_level, the one place levels are made: an __init__ in
    # Python (calling deque's) would cost more than all the rest of making a level.
    total: int  # lots of the live orders; 0 = the level is empty
    dead: int  # dead entries in the queue

    def compact(self) -> None:
        live = [order for order in self if order.remaining]
        self.clear()
        self.extend(live)
        self.dead = 0


class OrderBook:
    def __init__(self, band_bps: int = DEFAULT_BAND_BPS) -> None:
        self.band_bps = band_bps
        # Levels by price, and a heap of their prices (negated for bids) whose top is the
        # best level: a new level is one C-level push, and only dropping the best level
        # pops; a dropped level deeper in the book leaves a stale price behind, discarded
        # when it surfaces.
        self.bids: dict[int, Level] = {}
        self.asks: dict[int, Level] = {}
        self._bid_heap: list[int] = []
        self._ask_heap: list[int] = []
        self.orders: dict[str, RestingOrder] = {}
        self.stops: dict[str, tuple[PlaceOrder, int]] = {}  # id -> (order, arrival)
        # Waiting stops in the order a moving price crosses them: buy stops from the
        # lowest trigger up, sell stops from the highest down; then by arrival.
        self._buy_stops: SortedList = SortedList()  # (stop_price, arrival, order_id)
        self._sell_stops: SortedList = SortedList()  # (-stop_price, arrival, order_id)
        self._triggered: deque[str] = deque()
        # Two generations of placed ids: sets, not an ordered dict, since a set is the
        # cheapest membership test and a whole generation is forgotten at once.
        self.seen_recent: set[str] = set()
        self.seen_older: set[str] = set()
        # Best prices, cached: kept right where levels appear and disappear.
        self.best_bid: int | None = None
        self.best_ask: int | None = None
        self.last_price: int | None = None
        self.last_seq = 0  # seq of the last event emitted
        self.last_trade_id = 0
        self._events: list[Event] = []
        self._ts = 0
        # Levels touched since the last take_level_changes(): price -> new total lots.
        self._changed_bids: dict[int, int] = {}
        self._changed_asks: dict[int, int] = {}

    # ---- commands -------------------------------------------------------------------

    def apply(self, command: Command, ts: int) -> list[Event]:
        """Apply one command stamped with time `ts` (ms) and return its events in order."""
        return self.apply_batch(((command, ts),))

    def apply_batch(self, commands: Collection[tuple[Command, int]]) -> list[Event]:
        """Apply (command, ts) pairs in order and return all their events in order: what
        the engine does with a batch of inputs, without a call and a list per command.

        Plain limit and market orders and the cancel of a resting order are handled
        right here (see the module docstring); every other case calls the general
        methods, handing them the event sequence (`_sync`) and taking it back."""
        self._events = events = []
        orders, bids, asks = self.orders, self.bids, self.asks
        changed_bids, changed_asks = self._changed_bids, self._changed_asks
        # Duplicate placements: the batch's ids are looked up in the remembered ones all
        # at once, by C loops whose memory accesses overlap (the sets are large, so each
        # look-up is likely a cache miss; one at a time in the loop below they add up).
        # When none is remembered or repeated and the batch cannot fill the current
        # generation, they are remembered at once and the loop skips its own check.
        seen, older = self.seen_recent, self.seen_older
        remember = seen.add
        may_fill = len(seen) + len(commands) >= REMEMBERED_IDS
        ids = [c.order_id for c, _ in commands if type(c) is PlaceOrder]
        fresh = not may_fill and older.isdisjoint(ids) and seen.isdisjoint(ids)
        if fresh:
            count = len(seen)
            seen.update(ids)
            if len(seen) - count != len(ids):  # an id repeated within the batch
                seen.difference_update(ids)
                fresh = False
        triggered, stops = self._triggered, self.stops
        seq = self.last_seq
        for command, ts in commands:
            if type(command) is PlaceOrder:
                order_id = command.order_id
                if not fresh:
                    if order_id in seen or order_id in older:
                        seq += 1
                        events.append(DuplicateIgnored(seq, ts, order_id, command.account_id))
                        continue
                    remember(order_id)
                    if may_fill and len(seen) >= REMEMBERED_IDS:
                        self.seen_older = older = seen
                        self.seen_recent = seen = set()
                        remember = seen.add
                price, qty = command.price, command.qty
                if qty <= 0 or command.post_only or command.quote_qty or command.stop_price or (
                        price <= 0 if command.type == "limit"
                        else price or command.type != "market"):
                    # Any other placement: validated and run the general way.
                    self.last_seq, self._ts = seq, ts  # _sync
                    self._place_other(command)
                    while triggered:
                        self._fire(triggered.popleft())
                    seq = self.last_seq
                    continue
                # A plain limit or market order, valid as it stands.
                account_id, side, tif = command.account_id, command.side, command.tif
                seq += 1
                if price:
                    events.append(OrderAccepted(seq, ts, order_id, account_id, side, "limit",
                                                price, qty, tif))
                    # It rests at once unless it can trade or must not rest: the commonest
                    # command of all.
                    if side == "buy":
                        best = self.best_ask
                        if tif == "GTC" and (best is None or best > price):
                            order = RestingOrder(order_id, account_id, side, price, qty, qty,
                                                 False, seq)
                            orders[order_id] = order
                            level = bids.get(price)
                            if level is None:
                                level = self._add_level(True, price)
                            level.append(order)
                            changed_bids[price] = level.total = level.total + qty
                            continue
                    else:
                        best = self.best_bid
                        if tif == "GTC" and (best is None or best < price):
                            order = RestingOrder(order_id, account_id, side, price, qty, qty,
                                                 False, seq)
                            orders[order_id] = order
                            level = asks.get(price)
                            if level is None:
                                level = self._add_level(False, price)
                            level.append(order)
                            changed_asks[price] = level.total = level.total + qty
                            continue
                    limit = price
                else:
                    events.append(OrderAccepted(seq, ts, order_id, account_id, side, "market",
                                                0, qty, tif))
                    # The worst price it may fill at (as in _band_limit, inline).
                    limit = self.last_price
                    if limit is None:
                        limit = self.best_ask if side == "buy" else self.best_bid
                    if limit is not None:
                        band = limit * self.band_bps // 10_000
                        limit = limit + band if side == "buy" else limit - band
                if tif == "FOK" or limit is None or command.stp != "none":
                    self.last_seq, self._ts = seq, ts  # _sync
                    self._execute(command, qty)  # the general way
                    while triggered:
                        self._fire(triggered.popleft())
                    seq = self.last_seq
                    continue
                # A plain taker, matched right here: the engine's hottest loop. Each fill
                # ends the taker or the maker, so a trade is a few local updates and one
                # event (the general way, with self-trade prevention and budgets, is
                # `_match`).
                if side == "buy":
                    buying, levels, changed = True, asks, changed_asks
                else:
                    buying, levels, changed = False, bids, changed_bids
                trade_id = self.last_trade_id
                left = qty
                while True:
                    best = self.best_ask if buying else self.best_bid
                    if best is None or ((best > limit) if buying else (best < limit)):
                        break
                    level = levels[best]
                    wanted = left
                    while level:
                        maker = level[0]
                        have = maker.remaining
                        if not have:  # cancelled earlier, left in the queue
                            level.popleft()
                            level.dead -= 1
                            continue
                        trade_id += 1
                        seq += 1
                        if have > left:
                            maker.remaining = have - left
                            events.append(Trade(seq, ts, trade_id, best, left, side,
                                                maker.order_id, maker.account_id, order_id,
                                                account_id, False, True))
                            left = 0
                            break
                        # The maker is done and leaves the book (nothing refers to it now).
                        left -= have
                        level.popleft()
                        del orders[maker.order_id]
                        events.append(Trade(seq, ts, trade_id, best, have, side,
                                            maker.order_id, maker.account_id, order_id,
                                            account_id, True, not left))
                        if not left:
                            break
                    # Stops see every price traded at; one look per level is enough: its
                    # trades are all at one price, and triggered stops fire afterwards.
                    self.last_price = best
                    if stops:
                        self._collect_triggers(best)
                    changed[best] = level.total = total = level.total - (wanted - left)
                    if not total:
                        self._drop_level(buying, best)
                    if not left:
                        break
                self.last_trade_id = trade_id
                if left:
                    if not price:
                        seq += 1
                        events.append(OrderExpired(
                            seq, ts, order_id, account_id, left,
                            "no_liquidity" if best is None else "price_band"))
                    elif tif == "GTC":
                        self._enqueue(RestingOrder(order_id, account_id, side, price, qty,
                                                   left, False, seq))
                    else:
                        seq += 1
                        events.append(OrderExpired(seq, ts, order_id, account_id, left,
                                                   "ioc_remainder"))
                if triggered:
                    self.last_seq, self._ts = seq, ts  # _sync
                    while triggered:
                        self._fire(triggered.popleft())
                    seq = self.last_seq
            elif type(command) is CancelOrder:
                order_id = command.order_id
                order = orders.get(order_id)
                if order is None or order.account_id != command.account_id:
                    self.last_seq, self._ts = seq, ts  # _sync
                    self._cancel(command)  # a waiting stop, or nothing to cancel
                    seq = self.last_seq
                    continue
                # The cancel of a resting order: a quarter of all commands.
                del orders[order_id]
                price, remaining = order.price, order.remaining
                order.remaining = 0
                seq += 1
                events.append(OrderCancelled(seq, ts, order_id, order.account_id, remaining,
                                             "user"))
                if order.side == "buy":
                    level = bids[price]
                    changed_bids[price] = level.total = total = level.total - remaining
                    if not total:
                        self._drop_level(False, price)
                        continue
                else:
                    level = asks[price]
                    changed_asks[price] = level.total = total = level.total - remaining
                    if not total:
                        self._drop_level(True, price)
                        continue
                level.dead = dead = level.dead + 1
                if dead > COMPACT_DEAD and 2 * dead > len(level):
                    level.compact()
            else:
                self.last_seq, self._ts = seq, ts  # _sync
                if type(command) is AmendOrder:
                    self._amend(command)
                else:
                    self._cancel_all(command)  # type: ignore[arg-type]
                while triggered:
                    self._fire(triggered.popleft())
                seq = self.last_seq
        self.last_seq = seq
        return events

    def _seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def _reject(self, cmd: PlaceOrder, reason: str) -> None:
        self._events.append(OrderRejected(self._seq(), self._ts, cmd.order_id, cmd.account_id,
                                          reason))

    def _expire(self, order_id: str, account_id: str, remaining: int, reason: str) -> None:
        self._events.append(OrderExpired(self._seq(), self._ts, order_id, account_id, remaining,
                                         reason))  # type: ignore[arg-type]

    def _place_other(self, cmd: PlaceOrder) -> None:
        """Every placement but a plain limit or market order: validated, then matched or
        parked."""
        reason = self._invalid(cmd)
        if reason:
            self._reject(cmd, reason)
            return
        if cmd.post_only and self._would_take(cmd.side, cmd.price):
            self._reject(cmd, "POST_ONLY_WOULD_TAKE")
            return
        if cmd.type in ("stop_limit", "stop_market"):
            last = self.last_price
            if last is not None and (last >= cmd.stop_price if cmd.side == "buy"
                                     else last <= cmd.stop_price):
                self._reject(cmd, "STOP_WOULD_TRIGGER")
                return
            self._accept(cmd)
            self._park_stop(cmd, self.last_seq)
            return
        self._accept(cmd)
        self._execute(cmd, cmd.qty)

    def _invalid(self, cmd: PlaceOrder) -> str | None:
        limit_priced = cmd.type in ("limit", "stop_limit")
        if limit_priced and cmd.price <= 0:
            return "INVALID_PRICE"
        if not limit_priced and cmd.price:
            return "INVALID_PRICE"
        if cmd.quote_qty:
            # A budget: alone it is what a market buy spends; with a qty, the most it may.
            if cmd.quote_qty < 0 or cmd.side != "buy" or cmd.type not in ("market",
                                                                          "stop_market"):
                return "INVALID_QUOTE_QTY"
            if cmd.qty < 0:
                return "INVALID_QTY"
        elif cmd.qty <= 0:
            return "INVALID_QTY"
        if cmd.type in ("stop_limit", "stop_market") and cmd.stop_price <= 0:
            return "INVALID_STOP_PRICE"
        if cmd.type in ("limit", "market") and cmd.stop_price:
            return "INVALID_STOP_PRICE"
        if cmd.post_only and (cmd.type != "limit" or cmd.tif != "GTC"):
            return "INVALID_POST_ONLY"
        if cmd.type in ("market", "stop_market") and cmd.tif == "FOK" and cmd.quote_qty:
            return "INVALID_TIME_IN_FORCE"
        return None

    def _accept(self, cmd: PlaceOrder) -> None:
        self._events.append(OrderAccepted(
            self._seq(), self._ts, cmd.order_id, cmd.account_id, cmd.side, cmd.type, cmd.price,
            cmd.qty, cmd.tif, cmd.quote_qty, cmd.stop_price))

    def _band_limit(self, side: str) -> int | None:
        """The worst price a market order on `side` may fill at: the band around the
        last trade price, or around the best opposite price before any trade; None
        with neither."""
        reference = self.last_price
        if reference is None:
            reference = self.best_ask if side == "buy" else self.best_bid
            if reference is None:
                return None
        band = reference * self.band_bps // 10_000
        return reference + band if side == "buy" else reference - band

    def _execute(self, cmd: PlaceOrder, qty: int) -> None:
        """Match an accepted (or triggered) order for `qty` lots (0: as many as its budget
        buys), then rest or expire what is left."""
        market = cmd.type in ("market", "stop_market")
        if market:
            limit = self._band_limit(cmd.side)
            if limit is None:
                self._expire(cmd.order_id, cmd.account_id, qty, "no_liquidity")
                return
        else:
            limit = cmd.price
        if cmd.tif == "FOK" and not self._fillable(cmd, limit, qty):
            self._expire(cmd.order_id, cmd.account_id, qty, "fok_unfilled")
            return
        remaining, stopped_by = self._match(cmd, limit, qty)
        if stopped_by == "filled":
            return
        if not cmd.qty:
            remaining = 0  # a pure budget order leaves money, not lots: nothing rests
        if stopped_by == "stp":
            self._expire(cmd.order_id, cmd.account_id, remaining, "stp")
        elif market:
            self._expire(cmd.order_id, cmd.account_id, remaining, stopped_by)
        elif cmd.tif == "GTC":
            self._enqueue(RestingOrder(cmd.order_id, cmd.account_id, cmd.side, cmd.price,
                                       cmd.qty, remaining, cmd.post_only, self.last_seq))
        else:
            self._expire(cmd.order_id, cmd.account_id, remaining, "ioc_remainder")

    def _match(self, cmd: PlaceOrder, limit: int, qty: int) -> tuple[int, str]:
        """Fill `qty` lots (0: as many as the order's budget buys) against the opposite
        side up to `limit`, with self-trade prevention and the budget, if any. Returns the
        lots left and why matching stopped: "filled", "stp", "market_remainder" (the
        budget buys no more), "price_band" or "no_liquidity".

        The general matcher, for every order `apply_batch` does not match inline (FOK,
        self-trade prevention, budgets, triggered stops, amended orders): simpler than
        the inline loop and the model it must agree with."""
        stp, budget = cmd.stp, cmd.quote_qty  # budget: tick*lot units still to spend
        side, taker_id, taker_account = cmd.side, cmd.order_id, cmd.account_id
        if side == "buy":
            buying, levels, changed = True, self.asks, self._changed_asks
        else:
            buying, levels, changed = False, self.bids, self._changed_bids
        seq, trade_id, ts = self.last_seq, self.last_trade_id, self._ts
        events = self._events
        orders = self.orders
        capped = budget > 0
        left = qty
        stopped_by = ""
        while not stopped_by:
            price = self.best_ask if buying else self.best_bid
            if price is None:
                stopped_by = "no_liquidity"
                break
            if (price > limit) if buying else (price < limit):
                stopped_by = "price_band"
                break
            level = levels[price]
            first_trade = trade_id + 1
            while level.total:
                maker = level[0]
                have = maker.remaining
                if not have:
                    level.popleft()
                    level.dead -= 1
                    continue
                if stp != "none" and maker.account_id == taker_account:
                    if stp != "cancel_newest":  # cancel_oldest or cancel_both
                        level.total -= have
                        level.dead += 1
                        maker.remaining = 0
                        del orders[maker.order_id]
                        seq += 1
                        events.append(OrderCancelled(seq, ts, maker.order_id,
                                                     maker.account_id, have, "stp"))
                    if stp != "cancel_oldest":
                        stopped_by = "stp"
                        break
                    continue
                fill = have if not qty or have <= left else left
                if capped:
                    fill = min(fill, budget // price)
                    if not fill:
                        stopped_by = "market_remainder"
                        break
                    budget -= fill * price
                if qty:
                    left -= fill
                taker_done = bool(qty and not left) or (capped and budget < price)
                maker.remaining = have - fill
                level.total -= fill
                trade_id += 1
                seq += 1
                events.append(Trade(seq, ts, trade_id, price, fill, side, maker.order_id,
                                    maker.account_id, taker_id, taker_account, fill == have,
                                    taker_done))
                if fill == have:
                    level.popleft()
                    del orders[maker.order_id]
                if taker_done:
                    stopped_by = "filled"
                    break
            if trade_id >= first_trade:
                self.last_price = price
                if self.stops:
                    self._collect_triggers(price)
            changed[price] = total = level.total
            if not total:
                self._drop_level(buying, price)
        self.last_seq, self.last_trade_id = seq, trade_id
        return left, stopped_by

    def _add_level(self, buying: bool, price: int) -> Level:
        """A new, empty level at `price`, with its side's heap and best price kept right."""
        level = Level()
        level.total = level.dead = 0
        if buying:
            levels, heap, key = self.bids, self._bid_heap, -price
            if self.best_bid is None or price > self.best_bid:
                self.best_bid = price
        else:
            levels, heap, key = self.asks, self._ask_heap, price
            if self.best_ask is None or price < self.best_ask:
                self.best_ask = price
        levels[price] = level
        heappush(heap, key)
        if len(heap) > 2 * len(levels) + 64:
            # Too many stale prices of levels dropped deep in the book: rebuild.
            heap[:] = [-p for p in levels] if buying else list(levels)
            heapify(heap)
        return level

    def _drop_level(self, from_asks: bool, price: int) -> None:
        """Remove an empty level and keep the cached best price right."""
        if from_asks:
            levels = self.asks
            del levels[price]
            if price == self.best_ask:
                heap = self._ask_heap
                while heap and heap[0] not in levels:
                    heappop(heap)
                self.best_ask = heap[0] if heap else None
        else:
            levels = self.bids
            del levels[price]
            if price == self.best_bid:
                heap = self._bid_heap
                while heap and -heap[0] not in levels:
                    heappop(heap)
                self.best_bid = -heap[0] if heap else None

    def _fillable(self, cmd: PlaceOrder, limit: int, qty: int) -> bool:
        """Would `qty` fill completely within `limit`, given self-trade prevention?"""
        buying = cmd.side == "buy"
        book = self.asks if buying else self.bids
        if buying:
            prices = sorted(p for p in book if p <= limit)
        else:
            prices = sorted((p for p in book if p >= limit), reverse=True)
        for price in prices:
            for maker in book[price]:
                if not maker.remaining:
                    continue
                if cmd.stp != "none" and maker.account_id == cmd.account_id:
                    if cmd.stp == "cancel_oldest":
                        continue
                    return False
                qty -= maker.remaining
                if qty <= 0:
                    return True
        return False

    def _would_take(self, side: str, price: int) -> bool:
        best = self.best_ask if side == "buy" else self.best_bid
        return best is not None and (best <= price if side == "buy" else best >= price)

    def _enqueue(self, order: RestingOrder) -> None:
        """Put an order at the back of its level's queue."""
        price, buying = order.price, order.side == "buy"
        level = (self.bids if buying else self.asks).get(price)
        if level is None:
            level = self._add_level(buying, price)
        level.append(order)
        level.total += order.remaining
        (self._changed_bids if buying else self._changed_asks)[price] = level.total
        self.orders[order.order_id] = order

    def _side(self, side: str) -> tuple[dict[int, Level], dict[int, int]]:
        if side == "buy":
            return self.bids, self._changed_bids
        return self.asks, self._changed_asks

    # ---- stops ----------------------------------------------------------------------

    def _park_stop(self, cmd: PlaceOrder, arrival: int) -> None:
        self.stops[cmd.order_id] = (cmd, arrival)
        if cmd.side == "buy":
            self._buy_stops.add((cmd.stop_price, arrival, cmd.order_id))
        else:
            self._sell_stops.add((-cmd.stop_price, arrival, cmd.order_id))

    def _collect_triggers(self, price: int) -> None:
        """Queue the stops a trade at `price` triggers, in the order it crossed them."""
        buys, sells = self._buy_stops, self._sell_stops
        while buys and buys[0][0] <= price:
            self._triggered.append(buys.pop(0)[2])
        while sells and -sells[0][0] >= price:
            self._triggered.append(sells.pop(0)[2])

    def _fire(self, order_id: str) -> None:
        entry = self.stops.pop(order_id, None)
        if entry is None:  # cancelled after it was queued
            return
        cmd = entry[0]
        assert self.last_price is not None
        self._events.append(OrderTriggered(self._seq(), self._ts, order_id, cmd.account_id,
                                           self.last_price))
        self._execute(cmd, cmd.qty)

    def _drop_stop(self, cmd: PlaceOrder, arrival: int) -> None:
        if cmd.side == "buy":
            self._buy_stops.remove((cmd.stop_price, arrival, cmd.order_id))
        else:
            self._sell_stops.remove((-cmd.stop_price, arrival, cmd.order_id))
        del self.stops[cmd.order_id]

    # ---- cancel and amend -----------------------------------------------------------

    def _cancel(self, cmd: CancelOrder) -> None:
        if not self._cancel_one(cmd.order_id, cmd.account_id, "user"):
            # Someone else's order is reported exactly like a missing one: no oracle.
            self._events.append(CancelRejected(self._seq(), self._ts, cmd.order_id,
                                               cmd.account_id, "ORDER_NOT_OPEN"))

    def _cancel_one(self, order_id: str, account_id: str, reason: str) -> bool:
        order = self.orders.get(order_id)
        if order is not None and order.account_id == account_id:
            price, remaining, buying = order.price, order.remaining, order.side == "buy"
            level = (self.bids if buying else self.asks)[price]
            del self.orders[order_id]
            order.remaining = 0
            self._events.append(OrderCancelled(self._seq(), self._ts, order_id, account_id,
                                               remaining, reason))  # type: ignore[arg-type]
            level.total -= remaining
            level.dead += 1
            (self._changed_bids if buying else self._changed_asks)[price] = level.total
            if not level.total:
                self._drop_level(not buying, price)
            elif level.dead > COMPACT_DEAD and 2 * level.dead > len(level):
                level.compact()
            return True
        stop = self.stops.get(order_id)
        if stop is not None and stop[0].account_id == account_id:
            cmd = stop[0]
            self._drop_stop(cmd, stop[1])
            self._events.append(OrderCancelled(self._seq(), self._ts, order_id, account_id,
                                               cmd.qty, reason))  # type: ignore[arg-type]
            return True
        return False

    def _cancel_all(self, cmd: CancelAll) -> None:
        """Oldest first. A scan of the book: rare enough not to index orders by account."""
        account = cmd.account_id
        mine = [(o.arrival, o.order_id) for o in self.orders.values() if o.account_id == account]
        mine += [(arrival, stop.order_id) for stop, arrival in self.stops.values()
                 if stop.account_id == account]
        for _, order_id in sorted(mine):
            self._cancel_one(order_id, account, "cancel_all")

    def _amend(self, cmd: AmendOrder) -> None:
        order = self.orders.get(cmd.order_id)
        reason = None
        if order is None or order.account_id != cmd.account_id:
            reason = "ORDER_NOT_OPEN"
        else:
            filled = order.qty - order.remaining
            new_qty = cmd.qty or order.qty
            new_price = cmd.price or order.price
            if cmd.qty < 0 or cmd.price < 0:
                reason = "INVALID_AMEND"
            elif new_qty <= filled:
                reason = "QTY_NOT_ABOVE_FILLED"
            elif new_qty == order.qty and new_price == order.price:
                reason = "NO_CHANGE"
            elif order.post_only and new_price != order.price and \
                    self._would_take(order.side, new_price):
                reason = "POST_ONLY_WOULD_TAKE"
        if reason:
            self._events.append(AmendRejected(self._seq(), self._ts, cmd.order_id,
                                              cmd.account_id, reason))
            return
        assert order is not None
        side, changed = self._side(order.side)
        level = side[order.price]
        new_remaining = new_qty - filled
        if new_price == order.price and new_remaining < order.remaining:
            # Smaller at the same price: keeps its place in the queue.
            level.total -= order.remaining - new_remaining
            order.remaining, order.qty = new_remaining, new_qty
            changed[order.price] = level.total
            self._events.append(OrderAmended(self._seq(), self._ts, order.order_id,
                                             order.account_id, new_price, new_qty,
                                             new_remaining, False))
            return
        # Anything else re-queues: out of the book, then in again as if new (it may trade).
        level.total -= order.remaining
        level.dead += 1
        order.remaining = 0
        changed[order.price] = level.total
        if not level.total:
            self._drop_level(order.side == "sell", order.price)
        del self.orders[order.order_id]
        self._events.append(OrderAmended(self._seq(), self._ts, order.order_id,
                                         order.account_id, new_price, new_qty, new_remaining,
                                         True))
        requeued = PlaceOrder(order.order_id, order.account_id, order.side,  # type: ignore[arg-type]
                              new_price, new_qty, post_only=order.post_only)
        self._execute(requeued, new_remaining)

    # ---- views ----------------------------------------------------------------------

    def take_level_changes(self) -> tuple[dict[int, int], dict[int, int]]:
        """Levels changed since the last call, as price -> total lots (0 = gone)."""
        bids, asks = self._changed_bids, self._changed_asks
        self._changed_bids, self._changed_asks = {}, {}
        return bids, asks

    def depth(self, side: str) -> list[tuple[int, int]]:
        """(price, total lots) from the best level outward."""
        levels = self.bids if side == "buy" else self.asks
        return [(p, levels[p].total) for p in sorted(levels, reverse=side == "buy")]

    # ---- restoring from a snapshot --------------------------------------------------

    def restore_order(self, order: RestingOrder) -> None:
        """Put back a resting order a snapshot recorded; call in arrival order."""
        self._enqueue(order)

    def restore_stop(self, cmd: PlaceOrder, arrival: int) -> None:
        """Put back a waiting stop a snapshot recorded."""
        self._park_stop(cmd, arrival)
