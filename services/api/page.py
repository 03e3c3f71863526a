"""What the trading page needs beyond the public API: the browser modules it loads from
npm (installed by the set-up into `node_modules/`, never copied into the repository) and,
in local demo mode only, a faucet that creates and funds a demo account on first visit.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from services.api.settings import ApiSettings
from services.common.errors import ExchangeError

# Where the page's npm modules are found, first match wins: copied into the package by
# an image build (static/vendor/, so an installed package carries them), else the
# checkout's node_modules/, where `make up` / `make test` run `npm ci`.
PACKAGED = Path(__file__).resolve().parent / "static" / "vendor"
NODE_MODULES = Path(__file__).resolve().parents[2] / "node_modules"
# Browser ES modules the page imports, by the name it imports them under.
VENDOR_MODULES = {
    "lightweight-charts.mjs":
        "lightweight-charts/dist/lightweight-charts.standalone.production.mjs",
}
# What a demo account starts with, per asset (an asset not listed gets DEMO_OTHER).
DEMO_FUNDS = {"USD": "100000", "BTC": "2", "ETH": "40"}
DEMO_OTHER = "1000"


def page_router(settings: ApiSettings) -> APIRouter:
    """`/vendor/<module>` always; `POST /api/v1/demo/accounts` only with the local demo
    faucet on (`EXCHANGE_DEMO_FAUCET=1`): without it the route does not exist (404)."""
    router = APIRouter()

    @router.get("/vendor/{name}", include_in_schema=False)
    async def vendor(name: str) -> FileResponse:
        path = VENDOR_MODULES.get(name)
        if path is None:
            raise ExchangeError("NOT_FOUND", f"no browser module {name!r}", 404)
        for file in (PACKAGED / name, NODE_MODULES / path):
            if file.is_file():
                return FileResponse(file, media_type="text/javascript",
                                    headers={"Cache-Control": "public, max-age=3600"})
        # The page still shows the book and trades; only the charts need this file.
        raise ExchangeError("NOT_INSTALLED", f"{path} is not installed: run `npm ci` in the "
                            "project directory (make up / make test do)", 404)

    if settings.demo_faucet:
        @router.post("/api/v1/demo/accounts", status_code=201, include_in_schema=False)
        async def demo_account(request: Request) -> JSONResponse:
            """A new account funded with demo money, and its API key and secret: the page
            stores them in the browser and trades with them at once."""
            state = request.app.state
            account = await state.accounts.create()
            funds = {}
            for symbol in state.markets.assets:
                amount = DEMO_FUNDS.get(symbol, DEMO_OTHER)
                await state.accounts.deposit(account.account_id, symbol, amount,
                                             f"demo-{symbol}")
                funds[symbol] = amount
            return JSONResponse({"account_id": account.account_id, "api_key": account.api_key,
                                 "api_secret": account.api_secret, "deposited": funds},
                                status_code=201)

    return router
