"""The FastAPI application: routes, error shapes, and the web page."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal, DecimalException
from importlib import resources
from typing import Annotated, Literal

import msgspec
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.accounts import AccountStore, Transfer
from services.api.auth import operator, signed_account
from services.api.error_docs import document_errors
from services.api.ops import ops_router
from services.api.orders import OrderService
from services.api.page import page_router
from services.api.schemas import (
    AmendRequest,
    DepositRequest,
    MarketStatusRequest,
    NewAccountRequest,
    OrderRequest,
)
from services.api.settings import ApiSettings
from services.common import keys
from services.common.book_cache import book_checksum, read_book, wire_levels
from services.common.durable import DurableWriter
from services.common.errors import ExchangeError
from services.common.intervals import INTERVALS_MS
from services.common.messages import TradeTick
from services.common.metrics import HTTP_DURATION, HTTP_REQUESTS, ORDER_REJECTS, ORDERS_ACCEPTED
from services.common.pairs import Markets, Pair, load_markets
from services.common.redis_conn import connect
from services.common.secrets_box import SecretBox
from services.common.tracing import setup_tracing

MAX_BODY_BYTES = 64 * 1024
_trade_tick = msgspec.msgpack.Decoder(TradeTick)
_ADMIT_LUA = resources.files("services.api").joinpath("admit.lua").read_text()
STATIC_DIR = resources.files("services.api").joinpath("static")

Account = Annotated[str, Depends(signed_account)]


def _error(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _positive(raw: bytes | None) -> bool:
    return raw is not None and int(raw) > 0


def _price_or_none(pair: Pair, raw: bytes | None) -> str | None:
    return pair.format_price(int(raw)) if _positive(raw) else None


def rolling_24h(pair: Pair, bars: list[dict[str, object]]) -> dict[str, str | None]:
    """open/high/low/volume over the given 1-minute bars (wire dicts, oldest first)."""
    if not bars:
        return {"open_24h": None, "high_24h": None, "low_24h": None,
                "vol_24h": pair.format_qty(0), "quote_vol_24h": pair.quote.format(0)}
    highs = [Decimal(str(bar["h"])) for bar in bars]
    lows = [Decimal(str(bar["l"])) for bar in bars]
    return {
        "open_24h": str(bars[0]["o"]),
        "high_24h": bars[highs.index(max(highs))]["h"],
        "low_24h": bars[lows.index(min(lows))]["l"],
        "vol_24h": f"{sum(Decimal(str(b['v'])) for b in bars):.{pair.qty_decimals}f}",
        "quote_vol_24h": f"{sum(Decimal(str(b['qv'])) for b in bars):.{pair.quote.decimals}f}",
    }  # type: ignore[return-value]


class RequestMetrics:
    """ASGI middleware: each HTTP request's count and duration by route template (not by
    path: an order id in the path would make a series per order)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)


class BodyLimit:
    """ASGI middleware: a declared body over MAX_BODY_BYTES (or a malformed length) gets
    413 before anything reads it. Plain ASGI: Starlette's BaseHTTPMiddleware costs a task
    and a stream per request, a tenth of an order's whole cost here."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = next((value for name, value in scope["headers"]
                           if name == b"content-length"), None)
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                response = _error("PAYLOAD_TOO_LARGE",
                                  f"bodies are limited to {MAX_BODY_BYTES} bytes", 413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: ApiSettings, markets: Markets | None = None) -> FastAPI:
    markets = markets or load_markets()
    box = SecretBox(settings.secrets_key) if settings.secrets_key else SecretBox.from_env()
    # FastAPI's own telemetry makes each request's server span (continuing a caller's
    # traceparent) once a provider is installed; the order path adds its spans under it.
    setup_tracing("exchange-api")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        redis = await connect(settings.redis_url)
        app.state.redis = redis
        app.state.durable = await DurableWriter.for_deployment(redis)
        app.state.accounts = AccountStore(redis, markets, box, app.state.durable,
                                          rate_per_s=settings.rate_per_s, burst=settings.burst)
        app.state.admit = redis.register_script(_ADMIT_LUA)
        app.state.orders = OrderService(redis, markets, app.state.durable, settings.backlog)
        yield
        await app.state.durable.aclose()
        await redis.aclose()

    app = FastAPI(title="Exchange API", version="1", lifespan=lifespan,
                  description="Public market data, signed trading and operator endpoints.")
    app.state.settings = settings
    app.state.markets = markets
    app.add_middleware(BodyLimit)
    app.add_middleware(RequestMetrics)

    @app.exception_handler(ExchangeError)
    async def exchange_error(_: Request, exc: ExchangeError) -> JSONResponse:
        response = _error(exc.code, exc.message, exc.http_status)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(RedisError)
    async def storage_unavailable(_: Request, exc: RedisError) -> JSONResponse:
        # Redis unreachable past the client's retries (a failover that outlasts them):
        # say so in the API's own terms, not as a bare 500.
        response = _error("UNAVAILABLE", "the exchange's storage is not answering; retry "
                          "shortly (an order with the same client_order_id, to learn "
                          "whether it was taken)", 503)
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return _error("INVALID_JSON", "the body is not valid JSON", 400)
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return _error("INVALID_REQUEST", f"{where}: {first.get('msg', 'invalid')}", 400)

    @app.exception_handler(DecimalException)
    async def number_out_of_range(_: Request, exc: DecimalException) -> JSONResponse:
        # A decimal string whose exponent overflows exact arithmetic (e.g. "1e999999999")
        # is refused like any other non-number; it is raised before anything is written.
        return _error("INVALID_NUMBER", "a decimal is out of range", 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's only 400 is a body it cannot decode (e.g. not UTF-8): not JSON.
        code = {400: "INVALID_JSON", 404: "NOT_FOUND",
                405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return _error(code, str(exc.detail), exc.status_code)

    # ---- health and the page ----------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        try:
            await request.app.state.redis.ping()
        except Exception as exc:  # any failure means not ready; say which
            return _error("NOT_READY", f"redis unreachable: {exc}", 503)
        return JSONResponse({"status": "ready"})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC_DIR.joinpath("index.html")))

    @app.get("/config.json", include_in_schema=False)
    async def page_config() -> dict[str, object]:
        return {"ws_url": settings.public_ws_url, "demo_faucet": settings.demo_faucet}

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.include_router(page_router(settings))
    app.include_router(ops_router())

    # ---- public market data -----------------------------------------------------------

    @app.get("/api/v1/time", tags=["public"])
    async def server_time() -> dict[str, int]:
        return {"server_time": int(time.time() * 1000)}

    async def market_statuses(redis) -> dict[str, str]:
        statuses = {}
        for symbol in markets.pairs:
            raw = await redis.hget(keys.PairKeys(symbol).state, "status")
            statuses[symbol] = raw.decode() if raw else "trading"
        return statuses

    @app.get("/api/v1/markets", tags=["public"])
    async def list_markets(request: Request) -> list[dict[str, object]]:
        statuses = await market_statuses(request.app.state.redis)
        return [{**pair.to_wire(), "status": statuses[symbol]}
                for symbol, pair in markets.pairs.items()]

    @app.get("/api/v1/markets/{symbol}/book", tags=["public"])
    async def book(request: Request, symbol: str,
                   depth: Annotated[int, Query(ge=1, le=5000)] = 50) -> dict[str, object]:
        pair = markets.pair(symbol)
        snap = await read_book(request.app.state.redis, keys.PairKeys(pair.symbol))
        bids = wire_levels(pair, snap.bids[:depth])
        asks = wire_levels(pair, snap.asks[:depth])
        return {"symbol": pair.symbol, "seq": snap.seq, "epoch": snap.epoch,
                "ts": int(time.time() * 1000), "bids": bids, "asks": asks,
                "checksum": book_checksum(bids, asks, depth)}

    @app.get("/api/v1/markets/{symbol}/trades", tags=["public"])
    async def trades(request: Request, symbol: str,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
        pair = markets.pair(symbol)
        items = await request.app.state.redis.lrange(keys.PairKeys(pair.symbol).trades, 0,
                                                     limit - 1)
        # Stored newest first as the engine's compact TradeTicks: formatted here, for the
        # few a request asks for, rather than in the engine for every trade.
        ticks = [_trade_tick.decode(item) for item in items]
        return [{"id": str(t.id), "px": pair.format_price(t.price),
                 "qty": pair.format_qty(t.qty), "side": t.side, "ts": t.ts} for t in ticks]

    @app.get("/api/v1/markets/{symbol}/candles", tags=["public"])
    async def candles(request: Request, symbol: str, interval: str = "1m",
                      start: Annotated[int | None, Query(ge=0)] = None,
                      end: Annotated[int | None, Query(ge=0)] = None,
                      limit: Annotated[int, Query(ge=1, le=1500)] = 500) -> Response:
        """Bars oldest first. With `start`, the first `limit` bars from it; without,
        the latest `limit` bars up to `end` (or now)."""
        pair = markets.pair(symbol)
        if interval not in INTERVALS_MS:
            raise ExchangeError("INVALID_INTERVAL", f"interval must be one of "
                                f"{', '.join(INTERVALS_MS)}")
        key = keys.PairKeys(pair.symbol).candles(interval)
        redis = request.app.state.redis
        high = "+inf" if end is None else end
        if start is None:
            items = (await redis.zrevrangebyscore(key, high, "-inf", start=0, num=limit))[::-1]
        else:
            items = await redis.zrangebyscore(key, start, high, start=0, num=limit)
        return Response(b"[" + b",".join(items) + b"]", media_type="application/json")

    @app.get("/api/v1/markets/{symbol}/ticker", tags=["public"])
    async def ticker(request: Request, symbol: str) -> dict[str, object]:
        """Last price and top of book as of the last commit; 24h figures rolled over
        the 1-minute bars of the last 24 hours."""
        pair = markets.pair(symbol)
        pair_keys = keys.PairKeys(pair.symbol)
        now = int(time.time() * 1000)
        window_start = now - now % 60_000 - 1439 * 60_000
        pipe = request.app.state.redis.pipeline(transaction=True)
        pipe.hmget(pair_keys.state, "last_price", "best_bid", "best_bid_qty", "best_ask",
                   "best_ask_qty")
        pipe.zrangebyscore(pair_keys.candles("1m"), window_start, "+inf")
        (last, bid, bid_qty, ask, ask_qty), bars = await pipe.execute()
        return {
            "symbol": pair.symbol,
            "last": _price_or_none(pair, last),
            "bid": _price_or_none(pair, bid),
            "bid_qty": pair.format_qty(int(bid_qty)) if _positive(bid) else None,
            "ask": _price_or_none(pair, ask),
            "ask_qty": pair.format_qty(int(ask_qty)) if _positive(ask) else None,
            **rolling_24h(pair, [json.loads(bar) for bar in bars]),
        }

    # ---- trading (signed) -------------------------------------------------------------

    @app.post("/api/v1/orders", tags=["trading"], status_code=201, responses={
        200: {"description": "A repeated client_order_id: the first order, nothing new"}})
    async def place_order(request: Request, body: OrderRequest,
                          account_id: Account) -> JSONResponse:
        symbol = body.symbol if body.symbol in markets.pairs else "unknown"
        try:
            order, created = await request.app.state.orders.place(account_id, body)
        except ExchangeError as exc:
            ORDER_REJECTS.labels(symbol, exc.code, "api").inc()
            raise
        if created:
            ORDERS_ACCEPTED.labels(symbol).inc()
        return JSONResponse(order, status_code=201 if created else 200)

    @app.patch("/api/v1/orders/{order_id}", tags=["trading"], status_code=202)
    async def amend_order(request: Request, order_id: str, body: AmendRequest,
                          account_id: Account) -> dict[str, object]:
        """Queue an amend; a smaller qty keeps queue priority, anything else re-queues.
        The order as it stands is returned; the outcome follows on the order."""
        return await request.app.state.orders.amend(account_id, order_id, body)

    @app.delete("/api/v1/orders", tags=["trading"])
    async def cancel_all(request: Request, account_id: Account,
                         symbol: str) -> list[dict[str, object]]:
        return await request.app.state.orders.cancel_all(account_id, symbol)

    @app.get("/api/v1/orders", tags=["trading"])
    async def list_orders(request: Request, account_id: Account, symbol: str | None = None,
                          status: Literal["open", "closed"] = "open",
                          limit: Annotated[int, Query(ge=1, le=500)] = 100,
                          after: Annotated[str | None, Query(max_length=64)] = None,
                          ) -> list[dict[str, object]]:
        """Open orders oldest first, or closed ones newest first (the last 1000). Page
        with `after` = the last order_id received."""
        return await request.app.state.orders.list_orders(account_id, symbol, status, limit,
                                                          after)

    @app.get("/api/v1/fills", tags=["trading"])
    async def fills(request: Request, account_id: Account, symbol: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    before: Annotated[str | None, Query(max_length=130)] = None,
                    ) -> list[object]:
        """Fills newest first (the last 1000). Page with `before` = `TRADE_ID:ORDER_ID`
        of the last fill received."""
        return await request.app.state.orders.fills(account_id, symbol, limit, before)

    @app.get("/api/v1/orders/{order_id}", tags=["trading"])
    async def get_order(request: Request, order_id: str,
                        account_id: Account) -> dict[str, object]:
        return await request.app.state.orders.get(account_id, order_id)

    @app.delete("/api/v1/orders/{order_id}", tags=["trading"], responses={
        202: {"description": "The cancel is queued but not settled within 2 s: the order "
                             "as it stands; its outcome follows"}})
    async def cancel_order(request: Request, order_id: str,
                           account_id: Account) -> JSONResponse:
        order, settled = await request.app.state.orders.cancel(account_id, order_id)
        return JSONResponse(order, status_code=200 if settled else 202)

    @app.get("/api/v1/balances", tags=["trading"])
    async def balances(request: Request, account_id: Account) -> list[dict[str, str]]:
        return await request.app.state.accounts.balances(account_id)

    # ---- operator ---------------------------------------------------------------------

    @app.post("/api/v1/admin/accounts", tags=["operator"], status_code=201,
              dependencies=[Depends(operator)])
    async def create_account(request: Request,
                             body: NewAccountRequest | None = None) -> dict[str, str]:
        """A new account and its API key. The secret is shown only here."""
        limits = body.rate_limit if body else None
        account = await request.app.state.accounts.create(
            limits.per_second if limits else None, limits.burst if limits else None)
        return {"account_id": account.account_id, "api_key": account.api_key,
                "api_secret": account.api_secret}

    @app.get("/api/v1/admin/markets", tags=["operator"], dependencies=[Depends(operator)])
    async def admin_markets(request: Request) -> list[dict[str, object]]:
        return await list_markets(request)

    @app.put("/api/v1/admin/markets/{symbol}", tags=["operator"],
             dependencies=[Depends(operator)])
    async def set_market_status(request: Request, symbol: str,
                                body: MarketStatusRequest) -> dict[str, str]:
        """Halt or resume a pair: a halted pair refuses new orders (MARKET_HALTED);
        cancels still go through."""
        pair = markets.pair(symbol)
        await request.app.state.redis.hset(keys.PairKeys(pair.symbol).state, "status",
                                           body.status)
        return {"symbol": pair.symbol, "status": body.status}

    @app.post("/api/v1/admin/withdrawals", tags=["operator"],
              dependencies=[Depends(operator)])
    async def withdraw(request: Request, body: DepositRequest) -> dict[str, object]:
        """Take `amount` out of the account's available balance; held funds are never
        touched (INSUFFICIENT_FUNDS if available is short). Answered once a replica has
        it; sent again with its `reference`, it is applied once (`applied: false`)."""
        return await _transfer(request.app.state.accounts.withdraw, body)

    @app.post("/api/v1/admin/deposits", tags=["operator"], dependencies=[Depends(operator)])
    async def deposit(request: Request, body: DepositRequest) -> dict[str, object]:
        """Credit `amount` to the account's available balance. Answered once a replica
        has it; sent again with its `reference`, it is applied once (`applied: false`)."""
        return await _transfer(request.app.state.accounts.deposit, body)

    async def _transfer(apply: Callable[[str, str, str, str | None], Awaitable[Transfer]],
                        body: DepositRequest) -> dict[str, object]:
        asset = markets.asset(body.asset)
        done = await apply(body.account_id, asset.symbol, body.amount, body.reference)
        return {"account_id": body.account_id, "asset": asset.symbol,
                "available": done.available, "reference": done.reference,
                "applied": done.applied}

    document_errors(app)
    return app
