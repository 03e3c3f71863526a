"""A small, obviously-correct order book to check the real one against.

Everything is a scan over one list of orders; nothing is indexed or incremental. It
produces the same events as `services.engine.book.OrderBook`, reduced to tuples of the
fields that carry meaning, so a property test can compare whole event streams.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.messages import AmendOrder, CancelAll, CancelOrder, Command, PlaceOrder


@dataclass
class Resting:
    cmd: PlaceOrder  # the order as placed (or as amended)
    remaining: int
    arrival: int


@dataclass
class Stop:
    cmd: PlaceOrder
    arrival: int


class ReferenceBook:
    def __init__(self, band_bps: int = 500) -> None:
        self.band_bps = band_bps
        self.resting: list[Resting] = []
        self.stops: list[Stop] = []
        self.arrivals = 0
        self.last_price: int | None = None
        self.events: list[tuple] = []
        self.queue: list[str] = []  # triggered stop ids, in trigger order
        self.fired_pending: dict[str, Stop] = {}
        self.used_ids: set[str] = set()

    # ---- helpers ----------------------------------------------------------------------

    def _next_arrival(self) -> int:
        self.arrivals += 1
        return self.arrivals

    def _opposite(self, side: str) -> list[Resting]:
        """Opposite orders in priority order: best price, then arrival."""
        others = [r for r in self.resting if r.cmd.side != side]
        return sorted(others, key=lambda r: (r.cmd.price if side == "buy" else -r.cmd.price,
                                             r.arrival))

    def depth(self, side: str) -> list[tuple[int, int]]:
        totals: dict[int, int] = {}
        for r in self.resting:
            if r.cmd.side == side:
                totals[r.cmd.price] = totals.get(r.cmd.price, 0) + r.remaining
        return sorted(totals.items(), reverse=(side == "buy"))

    # ---- commands ---------------------------------------------------------------------

    def apply(self, command: Command) -> None:
        if isinstance(command, PlaceOrder):
            self.place(command)
        elif isinstance(command, CancelOrder):
            if not self.cancel(command.order_id, command.account_id, "user"):
                self.events.append(("cancel_rejected", command.order_id))
        elif isinstance(command, CancelAll):
            opened = sorted(
                [(r.arrival, r.cmd.order_id) for r in self.resting
                 if r.cmd.account_id == command.account_id]
                + [(s.arrival, s.cmd.order_id) for s in self.stops
                   if s.cmd.account_id == command.account_id])
            for _, order_id in opened:
                self.cancel(order_id, command.account_id, "cancel_all")
        else:
            self.amend(command)
        while self.queue:
            self.fire(self.queue.pop(0))

    def valid(self, c: PlaceOrder) -> str | None:
        priced = c.type in ("limit", "stop_limit")
        if (priced and c.price <= 0) or (not priced and c.price):
            return "INVALID_PRICE"
        if c.quote_qty:
            if c.quote_qty < 0 or c.side != "buy" or c.type not in ("market", "stop_market"):
                return "INVALID_QUOTE_QTY"
            if c.qty < 0:
                return "INVALID_QTY"
        elif c.qty <= 0:
            return "INVALID_QTY"
        stop = c.type.startswith("stop")
        if (stop and c.stop_price <= 0) or (not stop and c.stop_price):
            return "INVALID_STOP_PRICE"
        if c.post_only and (c.type != "limit" or c.tif != "GTC"):
            return "INVALID_POST_ONLY"
        if c.type in ("market", "stop_market") and c.tif == "FOK" and c.quote_qty:
            return "INVALID_TIME_IN_FORCE"
        return None

    def crosses(self, side: str, price: int) -> bool:
        opposite = self._opposite(side)
        return bool(opposite) and (opposite[0].cmd.price <= price if side == "buy"
                                   else opposite[0].cmd.price >= price)

    def place(self, c: PlaceOrder) -> None:
        if c.order_id in self.used_ids:
            self.events.append(("duplicate", c.order_id))
            return
        self.used_ids.add(c.order_id)
        reason = self.valid(c)
        if reason is None and c.post_only and self.crosses(c.side, c.price):
            reason = "POST_ONLY_WOULD_TAKE"
        if reason is None and c.type.startswith("stop") and self.last_price is not None and (
                self.last_price >= c.stop_price if c.side == "buy"
                else self.last_price <= c.stop_price):
            reason = "STOP_WOULD_TRIGGER"
        if reason:
            self.events.append(("rejected", c.order_id, reason))
            return
        self.events.append(("accepted", c.order_id))
        if c.type.startswith("stop"):
            self.stops.append(Stop(c, self._next_arrival()))
            return
        self.execute(c, c.qty)

    def execute(self, c: PlaceOrder, qty: int) -> None:
        market = c.type in ("market", "stop_market")
        if market:
            opposite = self._opposite(c.side)
            ref = self.last_price if self.last_price is not None else (
                opposite[0].cmd.price if opposite else None)
            if ref is None:
                self.events.append(("expired", c.order_id, qty, "no_liquidity"))
                return
            move = ref * self.band_bps // 10_000
            limit = ref + move if c.side == "buy" else ref - move
        else:
            limit = c.price

        def in_limit(r: Resting) -> bool:
            return r.cmd.price <= limit if c.side == "buy" else r.cmd.price >= limit

        if c.tif == "FOK":
            available = 0
            for r in self._opposite(c.side):
                if not in_limit(r):
                    break
                if c.stp != "none" and r.cmd.account_id == c.account_id:
                    if c.stp == "cancel_oldest":
                        continue
                    break
                available += r.remaining
            if available < qty:
                self.events.append(("expired", c.order_id, qty, "fok_unfilled"))
                return
        budget = c.quote_qty  # 0 = no budget
        left = qty  # 0 with a budget = as many lots as the budget buys
        stopped = "no_liquidity"
        while True:
            opposite = self._opposite(c.side)
            if not opposite:
                stopped = "no_liquidity"
                break
            maker = opposite[0]
            if not in_limit(maker):
                stopped = "price_band"
                break
            if c.stp != "none" and maker.cmd.account_id == c.account_id:
                if c.stp in ("cancel_oldest", "cancel_both"):
                    self.resting.remove(maker)
                    self.events.append(("cancelled", maker.cmd.order_id, maker.remaining, "stp"))
                if c.stp in ("cancel_newest", "cancel_both"):
                    stopped = "stp"
                    break
                continue
            price = maker.cmd.price
            fill = maker.remaining if not qty else min(left, maker.remaining)
            if budget:
                fill = min(fill, budget // price)
                if fill == 0:
                    stopped = "market_remainder"
                    break
                budget -= fill * price
            if qty:
                left -= fill
            maker.remaining -= fill
            self.last_price = price
            done = (qty and left == 0) or (c.quote_qty and budget < price)
            self.events.append(("trade", price, fill, maker.cmd.order_id, c.order_id,
                                maker.remaining == 0, bool(done)))
            if maker.remaining == 0:
                self.resting.remove(maker)
            self.collect_triggers(price)
            if done:
                return
        if stopped == "stp":
            self.events.append(("expired", c.order_id, left, "stp"))
        elif market:
            self.events.append(("expired", c.order_id, left, stopped))
        elif c.tif == "GTC":
            self.resting.append(Resting(c, left, self._next_arrival()))
        else:
            self.events.append(("expired", c.order_id, left, "ioc_remainder"))

    def collect_triggers(self, price: int) -> None:
        buys = sorted((s for s in self.stops if s.cmd.side == "buy"
                       and s.cmd.stop_price <= price),
                      key=lambda s: (s.cmd.stop_price, s.arrival))
        sells = sorted((s for s in self.stops if s.cmd.side == "sell"
                        and s.cmd.stop_price >= price),
                       key=lambda s: (-s.cmd.stop_price, s.arrival))
        for stop in buys + sells:
            if stop.cmd.order_id not in self.queue:
                self.queue.append(stop.cmd.order_id)
                self.stops.remove(stop)
                self.fired_pending[stop.cmd.order_id] = stop

    def fire(self, order_id: str) -> None:
        stop = self.fired_pending.pop(order_id)
        self.events.append(("triggered", order_id, self.last_price))
        self.execute(stop.cmd, stop.cmd.qty)

    def cancel(self, order_id: str, account_id: str, reason: str) -> bool:
        for r in self.resting:
            if r.cmd.order_id == order_id and r.cmd.account_id == account_id:
                self.resting.remove(r)
                self.events.append(("cancelled", order_id, r.remaining, reason))
                return True
        for s in self.stops:
            if s.cmd.order_id == order_id and s.cmd.account_id == account_id:
                self.stops.remove(s)
                self.events.append(("cancelled", order_id, s.cmd.qty, reason))
                return True
        return False

    def amend(self, a: AmendOrder) -> None:
        found = [r for r in self.resting
                 if r.cmd.order_id == a.order_id and r.cmd.account_id == a.account_id]
        if not found:
            self.events.append(("amend_rejected", a.order_id, "ORDER_NOT_OPEN"))
            return
        r = found[0]
        filled = r.cmd.qty - r.remaining
        new_qty, new_price = a.qty or r.cmd.qty, a.price or r.cmd.price
        reason = None
        if a.qty < 0 or a.price < 0:
            reason = "INVALID_AMEND"
        elif new_qty <= filled:
            reason = "QTY_NOT_ABOVE_FILLED"
        elif (new_qty, new_price) == (r.cmd.qty, r.cmd.price):
            reason = "NO_CHANGE"
        elif r.cmd.post_only and new_price != r.cmd.price and self.crosses(r.cmd.side,
                                                                           new_price):
            reason = "POST_ONLY_WOULD_TAKE"
        if reason:
            self.events.append(("amend_rejected", a.order_id, reason))
            return
        new_remaining = new_qty - filled
        keeps_place = new_price == r.cmd.price and new_remaining < r.remaining
        self.events.append(("amended", a.order_id, new_price, new_qty, new_remaining,
                            not keeps_place))
        if keeps_place:
            r.remaining = new_remaining
            r.cmd = PlaceOrder(r.cmd.order_id, r.cmd.account_id, r.cmd.side, new_price,
                               new_qty, post_only=r.cmd.post_only)
            return
        self.resting.remove(r)
        self.execute(PlaceOrder(r.cmd.order_id, r.cmd.account_id, r.cmd.side, new_price,
                                new_qty, post_only=r.cmd.post_only), new_remaining)


def reduce_events(events: list) -> list[tuple]:
    """The real book's events as the reference writes them."""
    out: list[tuple] = []
    for e in events:
        kind = type(e).__name__
        if kind == "OrderAccepted":
            out.append(("accepted", e.order_id))
        elif kind == "OrderRejected":
            out.append(("rejected", e.order_id, e.reason))
        elif kind == "Trade":
            out.append(("trade", e.price, e.qty, e.maker_order_id, e.taker_order_id,
                        e.maker_done, e.taker_done))
        elif kind == "OrderCancelled":
            out.append(("cancelled", e.order_id, e.remaining, e.reason))
        elif kind == "OrderExpired":
            out.append(("expired", e.order_id, e.remaining, e.reason))
        elif kind == "OrderAmended":
            out.append(("amended", e.order_id, e.price, e.qty, e.remaining, e.requeued))
        elif kind == "OrderTriggered":
            out.append(("triggered", e.order_id, e.last_price))
        elif kind == "CancelRejected":
            out.append(("cancel_rejected", e.order_id))
        elif kind == "DuplicateIgnored":
            out.append(("duplicate", e.order_id))
        elif kind == "AmendRejected":
            out.append(("amend_rejected", e.order_id, e.reason))
        else:
            raise AssertionError(f"unknown event {e!r}")
    return out
