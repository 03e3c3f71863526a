"""A pure price-time-priority order book: no I/O, no clock, no randomness.

`OrderBook.apply(command, ts)` returns the events the command caused; the same
commands with the same timestamps always give the same events (DESIGN §5), which is
what makes crash recovery by replay exact.

Order types: limit (GTC / IOC / FOK, optionally post-only), market (by quantity, or
for buys by a quote budget) bounded by a price band, stop-market and stop-limit
triggered by the last trade price. Self-trade prevention is decided by the incoming
order. Integers only: prices in ticks, quantities in lots, budgets in tick*lot units.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
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


class RestingOrder(msgspec.Struct, gc=False):
    """An order in the book. A C-level struct: built and read far faster than a Python
    class; never in a reference cycle (strings and ints only), so the GC skips it."""

    order_id: str
    account_id: str
    side: str
    price: int
    qty: int  # total quantity, as amended
    remaining: int  # 0 once it has left the book
    post_only: bool
    arrival: int = 0  # set when it rests: cancel-all goes oldest first


class Level:
    """Orders at one price in arrival order.

    A cancelled order is not searched for in the queue: its `remaining` drops to 0 and it
    stays, dead, until it reaches the front (or the queue is compacted). So a cancel is
    O(1) and the front of the queue is a C-level deque read.
    """

    __slots__ = ("dead", "orders", "total")

    def __init__(self) -> None:
        self.orders: deque[RestingOrder] = deque()
        self.total = 0  # lots of the live orders; 0 = the level is empty
        self.dead = 0  # dead entries in `orders`


# A level's queue is compacted when it holds this many dead entries and more dead than live.
COMPACT_DEAD = 32


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
        self._arrivals = 0
        self._triggered: deque[str] = deque()
        # Two generations of placed ids: sets, not an ordered dict, since a set is the
        # cheapest membership test and a whole generation is forgotten at once.
        self.seen_recent: set[str] = set()
        self.seen_older: set[str] = set()
        # Best prices, cached: looking them up in the sorted dicts costs more than keeping
        # them right where levels appear and disappear.
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

    def apply_batch(self, commands: Iterable[tuple[Command, int]]) -> list[Event]:
        """Apply (command, ts) pairs in order and return all their events in order: what
        the engine does with a batch of inputs, without a call and a list per command."""
        self._events = events = []
        place, cancel, triggered = self._place, self._cancel, self._triggered
        for command, ts in commands:
            self._ts = ts
            kind = type(command)
            if kind is PlaceOrder:
                place(command)  # type: ignore[arg-type]
            elif kind is CancelOrder:
                cancel(command)  # type: ignore[arg-type]
            elif kind is AmendOrder:
                self._amend(command)  # type: ignore[arg-type]
            else:
                self._cancel_all(command)  # type: ignore[arg-type]
            while triggered:
                self._fire(triggered.popleft())
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

    def _place(self, cmd: PlaceOrder) -> None:
        order_id = cmd.order_id
        seen = self.seen_recent
        if order_id in seen or order_id in self.seen_older:
            self._events.append(DuplicateIgnored(self._seq(), self._ts, order_id,
                                                 cmd.account_id))
            return
        seen.add(order_id)
        if len(seen) >= REMEMBERED_IDS:
            self.seen_older, self.seen_recent = seen, set()
        if cmd.type != "limit" or cmd.post_only or cmd.quote_qty or cmd.stop_price:
            self._place_other(cmd)
            return
        # A plain limit order, the common case, kept flat (this is the engine's hottest
        # path): it rests, or crosses and goes to the matcher.
        price, qty = cmd.price, cmd.qty
        if price <= 0 or qty <= 0:
            self._reject(cmd, "INVALID_PRICE" if price <= 0 else "INVALID_QTY")
            return
        self.last_seq = seq = self.last_seq + 1
        account_id, side = cmd.account_id, cmd.side
        self._events.append(OrderAccepted(seq, self._ts, order_id, account_id, side, "limit",
                                          price, qty, cmd.tif))
        if side == "buy":
            best = self.best_ask
            if best is not None and best <= price:
                self._execute(cmd)
                return
        else:
            best = self.best_bid
            if best is not None and best >= price:
                self._execute(cmd)
                return
        if cmd.tif != "GTC":
            self._expire(order_id, account_id, qty,
                         "ioc_remainder" if cmd.tif == "IOC" else "fok_unfilled")
            return
        self._arrivals = arrival = self._arrivals + 1
        self._enqueue(RestingOrder(order_id, account_id, side, price, qty, qty, False, arrival))

    def _place_other(self, cmd: PlaceOrder) -> None:
        """Every placement but a plain limit order: validated, then matched or parked."""
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
            self._arrivals += 1
            self._park_stop(cmd, self._arrivals)
            return
        self._accept(cmd)
        self._execute(cmd)

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

    def _execute(self, cmd: PlaceOrder, qty: int | None = None) -> None:
        """Match an accepted (or triggered) order, then rest or expire what is left."""
        market = cmd.type in ("market", "stop_market")
        qty = cmd.qty if qty is None else qty
        if market:
            reference = self.last_price if self.last_price is not None else self._best(cmd.side)
            if reference is None:
                self._expire(cmd.order_id, cmd.account_id, qty, "no_liquidity")
                return
            band = reference * self.band_bps
            limit = reference + band // 10_000 if cmd.side == "buy" else \
                reference - band // 10_000
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
            self._rest(RestingOrder(cmd.order_id, cmd.account_id, cmd.side, cmd.price,
                                    cmd.qty, remaining, cmd.post_only))
        else:
            self._expire(cmd.order_id, cmd.account_id, remaining, "ioc_remainder")

    def _match(self, cmd: PlaceOrder, limit: int, qty: int) -> tuple[int, str]:
        """Fill against the opposite side up to `limit` (and within the order's budget,
        if it has one). Returns the lots left and why matching stopped."""
        buying = cmd.side == "buy"
        book = self.asks if buying else self.bids
        changed = self._changed_asks if buying else self._changed_bids
        budget = cmd.quote_qty  # tick*lot units still to spend; 0 = no budget
        capped = budget > 0
        remaining = qty if qty else -1  # -1: lots unbounded, only the budget limits
        stp = cmd.stp
        taker_id, taker_account, side, ts = cmd.order_id, cmd.account_id, cmd.side, self._ts
        events = self._events
        resting = self.orders
        while True:
            price = self.best_ask if buying else self.best_bid
            if price is None:
                return remaining, "no_liquidity"
            if (price > limit) if buying else (price < limit):
                return remaining, "price_band"
            level = book[price]
            orders = level.orders
            while level.total:
                maker = orders[0]
                if not maker.remaining:  # cancelled earlier, left in the queue
                    orders.popleft()
                    level.dead -= 1
                    continue
                if stp != "none" and maker.account_id == taker_account:
                    if stp != "cancel_newest":  # cancel_oldest or cancel_both
                        self._remove(maker, level, "stp")
                    if stp != "cancel_oldest":
                        changed[price] = level.total
                        if not level.total:
                            self._drop_level(buying, price)
                        return remaining, "stp"
                    continue
                fill = maker.remaining
                if 0 <= remaining < fill:
                    fill = remaining
                if capped:
                    fill = min(fill, budget // price)
                    if fill == 0:
                        changed[price] = level.total
                        return remaining, "market_remainder"
                    budget -= fill * price
                if remaining > 0:
                    remaining -= fill
                taker_done = remaining == 0 or (capped and budget < price)
                maker.remaining -= fill
                level.total -= fill
                self.last_trade_id = trade_id = self.last_trade_id + 1
                self.last_seq = seq = self.last_seq + 1
                self.last_price = price
                maker_done = maker.remaining == 0
                events.append(Trade(seq, ts, trade_id, price, fill, side, maker.order_id,
                                    maker.account_id, taker_id, taker_account, maker_done,
                                    taker_done))
                if maker_done:
                    orders.popleft()
                    del resting[maker.order_id]
                if self.stops:
                    self._collect_triggers(price)
                if taker_done:
                    changed[price] = level.total
                    if not level.total:
                        self._drop_level(buying, price)
                    return max(remaining, 0), "filled"
            changed[price] = 0
            self._drop_level(buying, price)

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
            for maker in book[price].orders:
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
        best = self._best(side)
        return best is not None and (best <= price if side == "buy" else best >= price)

    def _best(self, side: str) -> int | None:
        """Best opposite price for an order on `side`."""
        return self.best_ask if side == "buy" else self.best_bid

    def _rest(self, order: RestingOrder) -> None:
        self._arrivals = order.arrival = self._arrivals + 1
        self._enqueue(order)

    def _enqueue(self, order: RestingOrder) -> None:
        """Put an order at the back of its level's queue."""
        price = order.price
        if order.side == "buy":
            levels, changed = self.bids, self._changed_bids
            level = levels.get(price)
            if level is None:
                level = levels[price] = Level()
                self._push_price(self._bid_heap, levels, -1, price)
                if self.best_bid is None or price > self.best_bid:
                    self.best_bid = price
        else:
            levels, changed = self.asks, self._changed_asks
            level = levels.get(price)
            if level is None:
                level = levels[price] = Level()
                self._push_price(self._ask_heap, levels, 1, price)
                if self.best_ask is None or price < self.best_ask:
                    self.best_ask = price
        level.orders.append(order)
        level.total += order.remaining
        changed[price] = level.total
        self.orders[order.order_id] = order

    @staticmethod
    def _push_price(heap: list[int], levels: dict[int, Level], sign: int, price: int) -> None:
        """Add a new level's price to its side's heap (keys are `sign * price`)."""
        heappush(heap, sign * price)
        if len(heap) > 2 * len(levels) + 64:
            # Too many stale prices of levels dropped deep in the book: rebuild.
            heap[:] = [sign * p for p in levels]
            heapify(heap)

    def _remove(self, order: RestingOrder, level: Level, reason: str) -> None:
        """Take a resting order out (level totals kept right; caller drops empty levels)."""
        level.total -= order.remaining
        level.dead += 1
        del self.orders[order.order_id]
        self._events.append(OrderCancelled(self._seq(), self._ts, order.order_id,
                                           order.account_id, order.remaining,
                                           reason))  # type: ignore[arg-type]
        order.remaining = 0

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
        self._execute(cmd)

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
            # A resting order, the common case (kept flat: a quarter of all commands).
            price, remaining = order.price, order.remaining
            if order.side == "buy":
                level, changed = self.bids[price], self._changed_bids
            else:
                level, changed = self.asks[price], self._changed_asks
            del self.orders[order_id]
            order.remaining = 0
            self.last_seq = seq = self.last_seq + 1
            self._events.append(OrderCancelled(seq, self._ts, order_id, account_id, remaining,
                                               reason))  # type: ignore[arg-type]
            changed[price] = level.total = total = level.total - remaining
            level.dead += 1
            if not total:
                self._drop_level(order.side == "sell", price)
            elif level.dead > COMPACT_DEAD and 2 * level.dead > len(level.orders):
                level.orders = deque(o for o in level.orders if o.remaining)
                level.dead = 0
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
