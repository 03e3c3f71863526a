"""The error responses of each route group, for the OpenAPI description (`/docs`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _response(description: str, code: str, message: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description,
            "content": {"application/json": {"example": {
                "error": {"code": code, "message": message}}}}}


_BAD_REQUEST = _response(
    "Refused input; nothing was done. Codes: INVALID_JSON, INVALID_REQUEST, INVALID_NUMBER, "
    "INVALID_PRICE, INVALID_PRICE_TICK, INVALID_QTY, INVALID_QTY_LOT, QTY_TOO_SMALL, "
    "QTY_TOO_LARGE, MIN_NOTIONAL, PRICE_OUT_OF_BAND, INVALID_QUOTE_QTY, INVALID_POST_ONLY, "
    "INVALID_TIME_IN_FORCE, POST_ONLY_WOULD_TAKE, NO_LIQUIDITY, INSUFFICIENT_FUNDS, "
    "ORDER_NOT_OPEN, ORDER_NOT_AMENDABLE, QTY_NOT_ABOVE_FILLED, INVALID_INTERVAL, "
    "UNKNOWN_ASSET, INVALID_AMOUNT",
    "INSUFFICIENT_FUNDS", "not enough USD available for this order")
_UNAUTHORIZED = _response(
    "Not authenticated; nothing was done. Codes: UNAUTHORIZED, INVALID_API_KEY, "
    "INVALID_SIGNATURE, INVALID_TIMESTAMP, TIMESTAMP_OUT_OF_WINDOW, REPLAYED_SIGNATURE",
    "INVALID_SIGNATURE", "signature does not match the request")
_NOT_FOUND = _response("UNKNOWN_SYMBOL, UNKNOWN_ORDER or UNKNOWN_ACCOUNT",
                       "UNKNOWN_SYMBOL", "unknown symbol 'DOGE-USD'")
_HALTED = _response("MARKET_HALTED: the pair takes no new orders", "MARKET_HALTED",
                    "BTC-USD is halted")
_TOO_LARGE = _response("PAYLOAD_TOO_LARGE: bodies are limited to 64 KiB",
                       "PAYLOAD_TOO_LARGE", "bodies are limited to 65536 bytes")
_RATE_LIMITED = _response("RATE_LIMITED: the key is over its request rate; see Retry-After",
                          "RATE_LIMITED", "over 100 requests/s (burst 200); retry in 40 ms")
_UNAVAILABLE = _response(
    "Try again shortly. Codes: NOT_DURABLE (the write did not reach a replica in time; "
    "its outcome is unknown: retry with the same client_order_id to learn it), BACKLOG "
    "(a new order on a pair whose engine or settlement has fallen behind past its limit; "
    "nothing was done; see Retry-After), UNAVAILABLE (the exchange's storage is not "
    "answering, e.g. during a failover; see Retry-After)", "BACKLOG",
    "BTC-USD is behind: 10000 orders wait for its engine (limit 10000); nothing was done, "
    "retry shortly")

_STORAGE = _response("UNAVAILABLE: the exchange's storage is not answering (e.g. during a "
                     "failover); see Retry-After", "UNAVAILABLE",
                     "the exchange's storage is not answering; retry shortly")

_REFERENCE_REUSED = _response(
    "REFERENCE_REUSED: the transfer's reference already names another transfer of the "
    "account; nothing was done", "REFERENCE_REUSED",
    "this reference names another transfer of this account")
_OPERATOR_UNAVAILABLE = _response(
    "Try again shortly. Codes: NOT_DURABLE (a deposit or withdrawal a replica did not "
    "confirm in time: its outcome is unknown; send it again with the same reference, which "
    "applies it once), UNAVAILABLE (the exchange's storage is not answering; see "
    "Retry-After)", "NOT_DURABLE", "the write was not confirmed by a replica in time")

RESPONSES_BY_TAG: dict[str, dict[int | str, dict[str, Any]]] = {
    "public": {400: _BAD_REQUEST, 404: _NOT_FOUND, 503: _STORAGE},
    "trading": {400: _BAD_REQUEST, 401: _UNAUTHORIZED, 404: _NOT_FOUND, 409: _HALTED,
                413: _TOO_LARGE, 429: _RATE_LIMITED, 503: _UNAVAILABLE},
    "operator": {400: _BAD_REQUEST, 401: _UNAUTHORIZED, 404: _NOT_FOUND,
                 409: _REFERENCE_REUSED, 413: _TOO_LARGE, 503: _OPERATOR_UNAVAILABLE},
}


def document_errors(app: FastAPI) -> None:
    """Attach the error responses of its group to every route (and drop FastAPI's
    default 422, which this API answers as 400 INVALID_REQUEST)."""
    for route in app.routes:
        if isinstance(route, APIRoute) and route.tags:
            responses = RESPONSES_BY_TAG.get(str(route.tags[0]), {})
            route.responses = {**responses, **route.responses}
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
