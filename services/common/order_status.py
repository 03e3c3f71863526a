"""The order state machine, explicit: which event may move an order from which state.

The engine's events drive it; settlement writes the resulting status to the order
record (its Lua script mirrors `apply`), and tests check every event stream against it.
API statuses are these states, with `waiting` shown as `new` and `expired` as
`cancelled` plus the expiry reason (API.md's five statuses).
"""

from __future__ import annotations

from enum import StrEnum

from services.common.messages import (
    Event,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderTriggered,
    Trade,
)


class OrderState(StrEnum):
    RECEIVED = "received"  # enqueued, not yet seen by the engine
    WAITING = "waiting"  # a stop order before its trigger
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"


TERMINAL = frozenset({OrderState.FILLED, OrderState.CANCELLED, OrderState.EXPIRED,
                      OrderState.REJECTED})
_OPEN = (OrderState.NEW, OrderState.PARTIALLY_FILLED)


class IllegalTransition(ValueError):
    pass


def apply(state: OrderState, event: Event, order_id: str) -> OrderState:
    """The state after `event` (which concerns `order_id`), or IllegalTransition."""
    if isinstance(event, OrderAccepted) and state is OrderState.RECEIVED:
        return OrderState.WAITING if event.stop_price else OrderState.NEW
    if isinstance(event, OrderRejected) and state is OrderState.RECEIVED:
        return OrderState.REJECTED
    if isinstance(event, OrderTriggered) and state is OrderState.WAITING:
        return OrderState.NEW
    if isinstance(event, Trade) and state in _OPEN:
        done = event.maker_done if event.maker_order_id == order_id else event.taker_done
        return OrderState.FILLED if done else OrderState.PARTIALLY_FILLED
    if isinstance(event, OrderAmended) and state in _OPEN:
        return state
    if isinstance(event, OrderCancelled) and (state in _OPEN or state is OrderState.WAITING):
        return OrderState.CANCELLED
    if isinstance(event, OrderExpired) and state in _OPEN:
        return OrderState.EXPIRED
    raise IllegalTransition(f"{type(event).__name__} in state {state} for {order_id}")


def orders_of(event: Event) -> tuple[str, ...]:
    """The order ids an event moves (a refused cancel or amend moves none)."""
    if isinstance(event, Trade):
        return (event.maker_order_id, event.taker_order_id)
    if isinstance(event, OrderAccepted | OrderRejected | OrderTriggered | OrderAmended
                  | OrderCancelled | OrderExpired):
        return (event.order_id,)
    return ()
