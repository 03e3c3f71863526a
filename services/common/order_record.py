"""The order record kept on the account's slot, as both the API and settlement read it."""

from __future__ import annotations

from collections.abc import Mapping

from services.common.messages import PlaceOrder


def place_command(record: Mapping[str, str | int]) -> PlaceOrder:
    """The engine command of an order record (also how a stranded order is re-sent)."""
    return PlaceOrder(
        str(record["order_id"]), str(record["account_id"]), record["side"],  # type: ignore[arg-type]
        int(record["price"]), int(record["qty"]), record["tif"],  # type: ignore[arg-type]
        record["type"], bool(int(record["post_only"])), record["stp"],  # type: ignore[arg-type]
        int(record["quote_cap"]), int(record["stop_price"]))
