"""A pure price-time-priority order book: no I/O, no clock, no randomness.

`OrderBook.apply(command, ts)` returns the events the command caused; the same
commands with the same timestamps always give the same events (DESIGN §5), which is
what makes crash recovery by replay exact.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from sortedcontainers import SortedDict

from services.common.messages import (
    CancelOrder,
    CancelRejected,
    Command,
    Event,
    OrderAccepted,
    OrderCancelled,
    OrderRejected,
    PlaceOrder,
    Trade,
)


class RestingOrder:
    __slots__ = ("order_id", "account_id", "side", "price", "remaining")

    def __init__(self, order_id: str, account_id: str, side: str, price: int, remaining: int):
        self.order_id = order_id
        self.account_id = account_id
        self.side = side
        self.price = price
        self.remaining = remaining


class Level:
    """Orders at one price in arrival order; OrderedDict gives O(1) cancel anywhere."""

    __slots__ = ("orders", "total")

    def __init__(self) -> None:
        self.orders: OrderedDict[str, RestingOrder] = OrderedDict()
        self.total = 0


class OrderBook:
    def __init__(self) -> None:
        self.bids: SortedDict[int, Level] = SortedDict()  # best = last
        self.asks: SortedDict[int, Level] = SortedDict()  # best = first
        self.orders: dict[str, RestingOrder] = {}
        self.last_seq = 0  # seq of the last event emitted
        self.last_trade_id = 0
        # Levels touched since the last take_level_changes(): price -> new total lots.
        self._changed_bids: dict[int, int] = {}
        self._changed_asks: dict[int, int] = {}

    # ---- commands -------------------------------------------------------------------

    def apply(self, command: Command, ts: int) -> list[Event]:
        """Apply one command stamped with time `ts` (ms) and return its events in order."""
        if isinstance(command, PlaceOrder):
            return self._place(command, ts)
        return self._cancel(command, ts)

    def _next_seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def _place(self, cmd: PlaceOrder, ts: int) -> list[Event]:
        if cmd.order_id in self.orders:
            return [OrderRejected(self._next_seq(), ts, cmd.order_id, cmd.account_id,
                                  "DUPLICATE_ORDER_ID")]
        if cmd.qty <= 0 or cmd.price <= 0:
            return [OrderRejected(self._next_seq(), ts, cmd.order_id, cmd.account_id,
                                  "INVALID_ORDER")]
        events: list[Event] = [
            OrderAccepted(self._next_seq(), ts, cmd.order_id, cmd.account_id, cmd.side,
                          cmd.price, cmd.qty, cmd.tif)
        ]
        remaining = self._match(cmd, ts, events)
        if remaining == 0:
            return events
        if cmd.tif == "IOC":
            events.append(OrderCancelled(self._next_seq(), ts, cmd.order_id, cmd.account_id,
                                         remaining, "ioc_remainder"))
            return events
        order = RestingOrder(cmd.order_id, cmd.account_id, cmd.side, cmd.price, remaining)
        self._rest(order)
        return events

    def _match(self, cmd: PlaceOrder, ts: int, events: list[Event]) -> int:
        """Fill `cmd` against the opposite side; return the quantity left."""
        remaining = cmd.qty
        buying = cmd.side == "buy"
        opposite = self.asks if buying else self.bids
        changed = self._changed_asks if buying else self._changed_bids
        while remaining and opposite:
            price, level = opposite.peekitem(0 if buying else -1)
            if (price > cmd.price) if buying else (price < cmd.price):
                break
            while remaining and level.orders:
                maker = next(iter(level.orders.values()))
                qty = min(remaining, maker.remaining)
                remaining -= qty
                maker.remaining -= qty
                level.total -= qty
                self.last_trade_id += 1
                events.append(Trade(
                    self._next_seq(), ts, self.last_trade_id, price, qty, cmd.side,
                    maker.order_id, maker.account_id, cmd.order_id, cmd.account_id,
                    maker.remaining == 0, remaining == 0,
                ))
                if maker.remaining == 0:
                    level.orders.popitem(last=False)
                    del self.orders[maker.order_id]
            changed[price] = level.total
            if not level.orders:
                del opposite[price]
        return remaining

    def _rest(self, order: RestingOrder) -> None:
        side, changed = self._side(order.side)
        level = side.get(order.price)
        if level is None:
            level = side[order.price] = Level()
        level.orders[order.order_id] = order
        level.total += order.remaining
        changed[order.price] = level.total
        self.orders[order.order_id] = order

    def _cancel(self, cmd: CancelOrder, ts: int) -> list[Event]:
        order = self.orders.get(cmd.order_id)
        if order is None or order.account_id != cmd.account_id:
            # Someone else's order is reported exactly like a missing one: no oracle.
            return [CancelRejected(self._next_seq(), ts, cmd.order_id, cmd.account_id,
                                   "ORDER_NOT_OPEN")]
        side, changed = self._side(order.side)
        level = side[order.price]
        del level.orders[order.order_id]
        level.total -= order.remaining
        changed[order.price] = level.total
        if not level.orders:
            del side[order.price]
        del self.orders[order.order_id]
        return [OrderCancelled(self._next_seq(), ts, order.order_id, order.account_id,
                               order.remaining, "user")]

    def _side(self, side: str) -> tuple[SortedDict, dict[int, int]]:
        if side == "buy":
            return self.bids, self._changed_bids
        return self.asks, self._changed_asks

    # ---- views ----------------------------------------------------------------------

    def take_level_changes(self) -> tuple[dict[int, int], dict[int, int]]:
        """Levels changed since the last call, as price -> total lots (0 = gone)."""
        bids, asks = self._changed_bids, self._changed_asks
        self._changed_bids, self._changed_asks = {}, {}
        return bids, asks

    def depth(self, side: str) -> Iterator[tuple[int, int]]:
        """(price, total lots) from the best level outward."""
        if side == "buy":
            return ((p, self.bids[p].total) for p in reversed(self.bids))
        return ((p, self.asks[p].total) for p in self.asks)

    def best_bid(self) -> int | None:
        return self.bids.peekitem(-1)[0] if self.bids else None

    def best_ask(self) -> int | None:
        return self.asks.peekitem(0)[0] if self.asks else None
