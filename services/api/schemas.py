"""Request bodies of the REST API. Strict: numbers travel as decimal strings only."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class OrderRequest(_Strict):
    symbol: StrictStr = Field(examples=["BTC-USD"])
    side: Literal["buy", "sell"]
    type: Literal["limit", "market", "stop_limit", "stop_market"] = "limit"
    price: StrictStr | None = Field(default=None, examples=["67001.50"])
    qty: StrictStr | None = Field(default=None, examples=["0.2500"])
    quote_qty: StrictStr | None = Field(default=None, examples=["100.00"],
                                        description="market buys: quote amount to spend")
    stop_price: StrictStr | None = Field(default=None, description="stop orders: trigger")
    tif: Literal["GTC", "IOC", "FOK"] = "GTC"
    post_only: StrictBool = False
    client_order_id: StrictStr | None = Field(default=None, max_length=64,
                                              pattern=r"^[A-Za-z0-9_.:-]+$")
    stp: Literal["cancel_newest", "cancel_oldest", "cancel_both"] | None = None


class AmendRequest(_Strict):
    qty: StrictStr | None = Field(default=None, description="new total quantity")
    price: StrictStr | None = None


class MarketStatusRequest(_Strict):
    status: Literal["trading", "halted"]


class RateLimit(_Strict):
    # At least one request per 1000 s: slower rates overflow the bucket's arithmetic.
    per_second: float = Field(ge=0.001, le=100_000)
    burst: int = Field(ge=1, le=1_000_000)


class NewAccountRequest(_Strict):
    rate_limit: RateLimit | None = None


class DepositRequest(_Strict):
    account_id: StrictStr
    asset: StrictStr = Field(examples=["USD"])
    amount: StrictStr = Field(examples=["1000.00"])
    # The operator's id of the transfer (a chain transaction, a bank reference): sent
    # again, the transfer is applied once. Without one, each request is a new transfer.
    reference: StrictStr | None = Field(default=None, max_length=128,
                                        pattern=r"^[A-Za-z0-9_.:-]+$",
                                        examples=["tx-8f3a1c"])
