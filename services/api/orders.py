"""Placing, reading and cancelling orders: hold on the account's slot, then enqueue.

An order is acknowledged only after its funds are held (stage R1) and its command is
in the pair's input stream; from there the engine matches it and settlement moves
the money, updating the order record this module reads.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass

from opentelemetry import trace
from redis.asyncio.client import Pipeline

from services.api.order_rules import MAX_EXACT_UNITS, MarketRef, plan_order, price_ticks
from services.api.schemas import AmendRequest, OrderRequest
from services.api.settings import BacklogLimits
from services.common import keys
from services.common.durable import DurableWriter
from services.common.errors import ExchangeError
from services.common.messages import AmendOrder, CancelAll, CancelOrder, Command, encode
from services.common.order_record import order_to_wire, place_command
from services.common.pairs import Markets, Pair
from services.common.redis_conn import AnyRedis
from services.common.scripts import lua
from services.common.tracing import ACCOUNT_ID, ORDER_ID, PAIR, current_traceparent

_HOLD_LUA = lua("services.api", "hold.lua", publishes=True)
_AMEND_HOLD_LUA = lua("services.api", "amend_hold.lua", publishes=True)
TERMINAL = frozenset({"filled", "cancelled", "rejected"})
_tracer = trace.get_tracer("exchange-api")  # span names: services/common/tracing.py
BACKLOG_RETRY_AFTER_S = 1

# The pair as an order needs it, in ONE read of the pair's slot (the round trip an order
# already made for the price band): its last commit's price, touch and halt flag, and how
# far its engine and its settlement are behind, each O(1): the engine, by the inputs ever
# added to its stream less those it committed (state "inputs"); settlement, by its
# consumer group's own counters (pending = read, not settled; lag = not read yet).
# KEYS: 1 state, 2 input stream, 3 event stream; ARGV: 1 settlement group
_PAIR_VIEW_LUA = """#!lua flags=no-writes
local function added(stream)
  if redis.call('EXISTS', stream) == 0 then return 0 end
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then return info[i + 1] end
  end
  return redis.call('XLEN', stream)
end
local function behind(stream, group)
  if redis.call('EXISTS', stream) == 0 then return 0 end
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local f = {}
    for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
    -- lag is unknown (nil) only after an XDEL in the unread range; nothing deletes so.
    if f['name'] == group then return f['pending'] + (f['lag'] or 0) end
  end
  return redis.call('XLEN', stream)  -- its reader never started: everything waits
end
local s = redis.call('HMGET', KEYS[1], 'last_price', 'best_bid', 'best_ask', 'status', 'inputs')
return {s[1], s[2], s[3], s[4], added(KEYS[2]) - tonumber(s[5] or 0), behind(KEYS[3], ARGV[1])}
"""


def _ticks(raw: bytes | None) -> int | None:
    return int(raw) if raw and int(raw) else None


def new_order_id() -> str:
    """Unique without coordination: time-ordered prefix, 40 random bits."""
    return f"{int(time.time() * 1000):x}{secrets.token_hex(5)}"


@dataclass(frozen=True)
class PairView:
    """What the order path reads of a pair: its market as of the last commit, and its
    backlog (entries its engine has not committed, and not yet settled)."""

    ref: MarketRef
    engine_backlog: int
    settlement_backlog: int


def backlog_refusal(symbol: str, view: PairView, limits: BacklogLimits) -> ExchangeError | None:
    """The 503 BACKLOG for a new order on a pair that has fallen too far behind (so a
    stalled stage makes clients back off instead of queueing without bound), or None."""
    for waiting, limit, stage in (
            (view.engine_backlog, limits.engine, "orders wait for its engine"),
            (view.settlement_backlog, limits.settlement, "engine batches wait for settlement")):
        if limit and waiting >= limit:
            return ExchangeError(
                "BACKLOG", f"{symbol} is behind: {waiting} {stage} (limit {limit}); "
                "nothing was done, retry shortly", 503,
                {"Retry-After": str(BACKLOG_RETRY_AFTER_S)})
    return None


class OrderService:
    def __init__(self, redis: AnyRedis, markets: Markets,
                 durable: DurableWriter | None = None,
                 backlog: BacklogLimits | None = None) -> None:
        self.redis = redis
        self.markets = markets
        # Holds and commands are acknowledged only once on a replica (0 replicas: as is).
        self.durable = durable or DurableWriter(redis, replicas=0)
        self.backlog = backlog or BacklogLimits.from_env()
        self._hold = redis.register_script(_HOLD_LUA)
        self._amend_hold = redis.register_script(_AMEND_HOLD_LUA)
        self._pair_view = redis.register_script(_PAIR_VIEW_LUA)

    async def pair_view(self, pair: Pair) -> PairView:
        """The pair's last price, touch and halt flag as of its last commit, and its
        backlog, in one round trip."""
        k = keys.PairKeys(pair.symbol)
        last, bid, ask, status, engine, settlement = await self._pair_view(
            keys=[k.state, k.inbox, k.events], args=[keys.SETTLEMENT_GROUP])
        return PairView(MarketRef(_ticks(last), _ticks(bid), _ticks(ask), status == b"halted"),
                        int(engine), int(settlement))

    async def place(self, account_id: str, req: OrderRequest) -> tuple[dict[str, object], bool]:
        """Validate, check the pair's backlog, hold, enqueue. Returns (order, created);
        created is False when a repeated client_order_id returned the first order."""
        handler = trace.get_current_span()  # the request's handler span (FastAPI's)
        handler.set_attributes({ACCOUNT_ID: account_id, PAIR: req.symbol})
        with _tracer.start_as_current_span("order.validate", attributes={PAIR: req.symbol}):
            pair = self.markets.pair(req.symbol)
            view = await self.pair_view(pair)
            plan = plan_order(pair, req, view.ref)
        account = keys.AccountKeys(account_id)
        refusal = backlog_refusal(pair.symbol, view, self.backlog)
        if refusal is not None:
            # A retry of an order placed before the backlog built up still learns it.
            first = (await self.redis.hget(account.client_ids, req.client_order_id)
                     if req.client_order_id else None)
            if first is None:
                raise refusal
            return await self.get(account_id, first.decode()), False
        order_id = new_order_id()
        handler.set_attribute(ORDER_ID, order_id)
        now = int(time.time() * 1000)
        record = {
            "order_id": order_id, "client_order_id": req.client_order_id or "",
            "account_id": account_id, "symbol": pair.symbol, "base": pair.base.symbol,
            "quote": pair.quote.symbol, "side": plan.side, "type": plan.type,
            "tif": plan.tif, "price": plan.price, "qty": plan.qty,
            "quote_qty": req.quote_qty or "", "quote_cap": plan.quote_qty,
            "stop_price": plan.stop_price,
            "post_only": int(plan.post_only), "stp": plan.stp, "filled": 0, "quote_filled": 0,
            "status": "new", "reason": "", "created_ts": now, "updated_ts": now,
            "hold_asset": plan.hold_asset.symbol, "hold_left": plan.hold,
        }

        async def hold(pipe: Pipeline) -> None:
            await self._hold(
                keys=[account.balances, account.order(order_id), account.open_orders,
                      account.client_ids, account.unconfirmed, account.updates_seq,
                      account.updates],
                args=[plan.hold_asset.symbol, plan.hold, order_id, req.client_order_id or "",
                      now, *(x for item in record.items() for x in item)],
                client=pipe)

        with _tracer.start_as_current_span("order.hold", attributes={ACCOUNT_ID: account_id}):
            [(outcome, detail)] = await self.durable.run(account.balances, hold)
        if outcome == -1:
            raise ExchangeError("INSUFFICIENT_FUNDS",
                                f"not enough {plan.hold_asset.symbol} available for this order")
        if outcome == 0:
            return await self.get(account_id, detail.decode()), False
        await self._enqueue(pair, place_command(record))
        return order_to_wire(pair, record), True

    async def _enqueue(self, pair: Pair, command: Command) -> None:
        inbox = keys.PairKeys(pair.symbol).inbox
        with _tracer.start_as_current_span("order.enqueue", attributes={PAIR: pair.symbol}):
            # The enqueue span's context travels in the entry: the engine's spans of the
            # order are its children.
            entry = {"c": encode(command), "tp": current_traceparent()}

            async def append(pipe: Pipeline) -> None:
                pipe.xadd(inbox, entry)

            await self.durable.run(inbox, append)

    async def amend(self, account_id: str, order_id: str,
                    req: AmendRequest) -> dict[str, object]:
        """Hold whatever more the amended order could spend, then ask the engine.

        The engine decides (it may refuse, e.g. if the order filled meanwhile); the
        outcome shows on the order. A hold added for a refused amend is released when
        the order ends."""
        record = await self._record(account_id, order_id)
        pair = self.markets.pair(record["symbol"])
        trace.get_current_span().set_attributes(
            {ORDER_ID: order_id, ACCOUNT_ID: account_id, PAIR: pair.symbol})
        if record["type"] != "limit":
            raise ExchangeError("ORDER_NOT_AMENDABLE", "only limit orders can be amended")
        if req.qty is None and req.price is None:
            raise ExchangeError("INVALID_REQUEST", "give qty, price or both")
        lots = pair.qty_to_lots(req.qty) if req.qty is not None else 0
        ticks = price_ticks(pair, req.price) if req.price is not None else 0
        if ticks:
            pair.check_price_band(ticks, (await self.pair_view(pair)).ref.last_price)
        new_qty, new_price = lots or int(record["qty"]), ticks or int(record["price"])
        if record["side"] == "buy":
            notional = new_price * pair.quote_units_per_tick_lot
            # Rounded up per lot, so the hold covers the fee on any number of lots.
            per_lot = notional + -(-notional * pair.hold_fee_bps // 10_000)
            asset = pair.quote
        else:
            per_lot, asset = pair.base_units_per_lot, pair.base
        if max(new_qty * per_lot, pair.notional_units(new_price, new_qty)) >= MAX_EXACT_UNITS:
            raise ExchangeError("QTY_TOO_LARGE", "order value is too large")
        account = keys.AccountKeys(account_id)

        async def hold_more(pipe: Pipeline) -> None:
            await self._amend_hold(
                keys=[account.balances, account.order(order_id), account.updates_seq,
                      account.updates],
                args=[asset.symbol, new_qty, per_lot], client=pipe)

        # On a replica before the amend is queued, like a new order's hold: a hold lost
        # with its master must not leave the engine a larger order than was paid for.
        [outcome] = await self.durable.run(account.balances, hold_more)
        if outcome != b"OK":
            code = outcome.decode()
            messages = {"ORDER_NOT_OPEN": f"order {order_id} is not open",
                        "QTY_NOT_ABOVE_FILLED": "qty must be above what already filled",
                        "INSUFFICIENT_FUNDS": f"not enough {asset.symbol} for the new size"}
            raise ExchangeError(code, messages.get(code, code))
        await self._enqueue(pair, AmendOrder(order_id, account_id, lots, ticks))
        return await self.get(account_id, order_id)

    async def cancel_all(self, account_id: str, symbol: str,
                         wait_s: float = 2.0) -> list[dict[str, object]]:
        """Cancel every open order of the account on `symbol`; returns them as they
        stand once the engine has ended them (or the wait is over)."""
        pair = self.markets.pair(symbol)
        open_ids = [oid.decode() for oid in
                    await self.redis.smembers(keys.AccountKeys(account_id).open_orders)]
        records = [await self._record(account_id, oid) for oid in sorted(open_ids)]
        mine = [r["order_id"] for r in records if r["symbol"] == pair.symbol]
        await self._enqueue(pair, CancelAll(account_id))
        deadline = time.monotonic() + wait_s
        pause = 0.001
        while mine and time.monotonic() < deadline:
            orders = [await self.get(account_id, oid) for oid in mine]
            if all(o["status"] in TERMINAL for o in orders):
                return orders
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        return [await self.get(account_id, oid) for oid in mine]

    async def get(self, account_id: str, order_id: str) -> dict[str, object]:
        record = await self._record(account_id, order_id)
        return order_to_wire(self.markets.pair(record["symbol"]), record)

    async def cancel(self, account_id: str, order_id: str,
                     wait_s: float = 2.0) -> tuple[dict[str, object], bool]:
        """Ask the engine to cancel; wait up to `wait_s` for the outcome to settle.

        Returns (order, settled): settled is False if the order was still open when
        the wait ended (the cancel stays queued and its outcome follows)."""
        record = await self._record(account_id, order_id)
        if record["status"] in TERMINAL:
            raise ExchangeError("ORDER_NOT_OPEN", f"order {order_id} is {record['status']}")
        pair = self.markets.pair(record["symbol"])
        trace.get_current_span().set_attributes(
            {ORDER_ID: order_id, ACCOUNT_ID: account_id, PAIR: pair.symbol})
        await self._enqueue(pair, CancelOrder(order_id, account_id))
        order_key = keys.AccountKeys(account_id).order(order_id)
        deadline = time.monotonic() + wait_s
        pause = 0.001
        while time.monotonic() < deadline:
            status = await self.redis.hget(order_key, "status")
            if status is not None and status.decode() in TERMINAL:
                return await self.get(account_id, order_id), True
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        return await self.get(account_id, order_id), False

    async def list_orders(self, account_id: str, symbol: str | None, status: str,
                          limit: int, after: str | None = None) -> list[dict[str, object]]:
        """Open orders (oldest first) or the most recently ended ones (newest first);
        `after` = the last order_id of the previous page."""
        pair = self.markets.pair(symbol) if symbol else None
        account = keys.AccountKeys(account_id)
        if status == "open":
            ids = sorted(oid.decode() for oid in await self.redis.smembers(account.open_orders))
        else:
            ids = [oid.decode() for oid in await self.redis.lrange(account.closed_orders, 0, -1)]
        if after is not None:
            ids = ids[ids.index(after) + 1:] if after in ids else []
        found: list[dict[str, object]] = []
        for order_id in ids:  # ids are time-ordered, so sorting them sorts by creation
            order = await self.get(account_id, order_id)
            if pair is None or order["symbol"] == pair.symbol:
                found.append(order)
                if len(found) == limit:
                    break
        return found

    async def fills(self, account_id: str, symbol: str | None, limit: int,
                    before: str | None = None) -> list[object]:
        """The account's fills, newest first (the last 1000 are kept); `before` = the
        (trade_id, order_id) cursor `TRADE:ORDER` of the last fill of the previous page."""
        pair = self.markets.pair(symbol) if symbol else None
        raw = await self.redis.lrange(keys.AccountKeys(account_id).fills, 0, -1)
        found = []
        passed = before is None
        for item in raw:
            fill = json.loads(item)
            if not passed:
                passed = f"{fill['trade_id']}:{fill['order_id']}" == before
                continue
            if pair is None or fill["symbol"] == pair.symbol:
                found.append(fill)
                if len(found) == limit:
                    break
        return found

    async def _record(self, account_id: str, order_id: str) -> dict[str, str]:
        if not order_id or len(order_id) > 64:
            raise ExchangeError("UNKNOWN_ORDER", "no such order", 404)
        raw = await self.redis.hgetall(keys.AccountKeys(account_id).order(order_id))
        if not raw:
            raise ExchangeError("UNKNOWN_ORDER", "no such order", 404)
        return {k.decode(): v.decode() for k, v in raw.items()}
