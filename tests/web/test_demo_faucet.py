"""The local demo faucet: a funded account for a newcomer to the trading page, in local
mode only (`EXCHANGE_DEMO_FAUCET=1`, which `make up` sets); elsewhere the route does not
exist."""

from __future__ import annotations

import httpx

from services.api.app import create_app
from services.api.page import DEMO_FUNDS
from services.api.settings import ApiSettings
from services.common.client import Credentials, ExchangeClient
from services.common.secrets_box import new_key
from tests.web.conftest import WebExchange


async def test_in_local_mode_the_faucet_gives_a_new_account_demo_funds_it_can_trade_with(
        web: WebExchange) -> None:
    async with httpx.AsyncClient(base_url=web.api_url) as http:
        assert (await http.get("/config.json")).json()["demo_faucet"] is True
        answer = await http.post("/api/v1/demo/accounts")
    assert answer.status_code == 201
    given = answer.json()
    account = ExchangeClient(web.api_url, credentials=Credentials(
        given["account_id"], given["api_key"], given["api_secret"]))
    try:
        balances = await account.balances()  # the key works: signed as the new account
        for asset, amount in DEMO_FUNDS.items():
            assert (balances[asset]["available"].rstrip("0").rstrip(".")) == amount
            assert given["deposited"][asset] == amount
    finally:
        await account.aclose()


async def test_without_local_mode_there_is_no_faucet_route() -> None:
    app = create_app(ApiSettings(demo_faucet=False, secrets_key=new_key()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://api") as http:
        assert (await http.get("/config.json")).json()["demo_faucet"] is False
        answer = await http.post("/api/v1/demo/accounts")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "NOT_FOUND"
