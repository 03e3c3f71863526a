"""A small async client of the public REST API, signing like any bot author would.

Used by the market simulator, the benchmarks and the end-to-end tests, so all of
them exercise exactly the contract of API.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from services.common.signing import signed_headers


@dataclass(frozen=True)
class Credentials:
    account_id: str
    api_key: str
    api_secret: str


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code


class ExchangeClient:
    def __init__(self, base_url: str, *, admin_token: str | None = None,
                 credentials: Credentials | None = None,
                 http: httpx.AsyncClient | None = None) -> None:
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=10.0)
        self.admin_token = admin_token
        self.credentials = credentials

    async def aclose(self) -> None:
        await self.http.aclose()

    def as_account(self, credentials: Credentials) -> ExchangeClient:
        """A client of the same connection pool signing as `credentials`."""
        return ExchangeClient("", admin_token=self.admin_token, credentials=credentials,
                              http=self.http)

    async def request(self, method: str, path: str, body: dict | None = None, *,
                      signed: bool = False, admin: bool = False) -> httpx.Response:
        """Send a request; `path` includes any query string, exactly as it is signed."""
        content = msgspec.json.encode(body) if body is not None else b""
        headers = {"content-type": "application/json"} if body is not None else {}
        if signed:
            assert self.credentials, "a signed request needs credentials"
            headers |= signed_headers(self.credentials.api_key, self.credentials.api_secret,
                                      method, path, content)
        if admin:
            headers["authorization"] = f"Bearer {self.admin_token}"
        return await self.http.request(method, path, content=content, headers=headers)

    async def call(self, method: str, path: str, body: dict | None = None, *,
                   signed: bool = False, admin: bool = False) -> Any:
        """Like request(), but returns the decoded JSON or raises ApiError."""
        response = await self.request(method, path, body, signed=signed, admin=admin)
        if response.status_code >= 400:
            error = response.json().get("error", {})
            raise ApiError(response.status_code, error.get("code", "?"), error.get("message", ""))
        return response.json()

    # ---- operator ---------------------------------------------------------------------

    async def create_account(self, per_second: float | None = None,
                             burst: int | None = None) -> Credentials:
        """A new account; `per_second`/`burst` override the default request rate limit."""
        body = {"rate_limit": {"per_second": per_second, "burst": burst}} if per_second else None
        data = await self.call("POST", "/api/v1/admin/accounts", body, admin=True)
        return Credentials(data["account_id"], data["api_key"], data["api_secret"])

    async def deposit(self, account_id: str, asset: str, amount: str,
                      reference: str | None = None) -> dict:
        """Credit `amount`; with a `reference`, sending it again credits it once."""
        body = {"account_id": account_id, "asset": asset, "amount": amount}
        if reference is not None:
            body["reference"] = reference
        return await self.call("POST", "/api/v1/admin/deposits", body, admin=True)

    # ---- public -----------------------------------------------------------------------

    async def markets(self) -> list[dict]:
        return await self.call("GET", "/api/v1/markets")

    async def book(self, symbol: str, depth: int = 50) -> dict:
        return await self.call("GET", f"/api/v1/markets/{symbol}/book?depth={depth}")

    async def trades(self, symbol: str, limit: int = 100) -> list[dict]:
        return await self.call("GET", f"/api/v1/markets/{symbol}/trades?limit={limit}")

    # ---- trading ----------------------------------------------------------------------

    async def place_order(self, symbol: str, side: str, price: str, qty: str,
                          tif: str = "GTC", **extra: Any) -> dict:
        body = {"symbol": symbol, "side": side, "type": "limit", "price": price, "qty": qty,
                "tif": tif, **extra}
        return await self.call("POST", "/api/v1/orders", body, signed=True)

    async def cancel_order(self, order_id: str) -> dict:
        return await self.call("DELETE", f"/api/v1/orders/{order_id}", signed=True)

    async def order(self, order_id: str) -> dict:
        return await self.call("GET", f"/api/v1/orders/{order_id}", signed=True)

    async def balances(self) -> dict[str, dict[str, str]]:
        rows = await self.call("GET", "/api/v1/balances", signed=True)
        return {row["asset"]: row for row in rows}
