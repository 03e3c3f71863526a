"""Accounts, API keys and balances, each on its own account's slot."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from services.api.order_rules import MAX_EXACT_UNITS
from services.common import keys
from services.common.api_keys import ApiKeyStore
from services.common.durable import DurableWriter
from services.common.errors import ExchangeError
from services.common.pairs import Asset, Markets
from services.common.redis_conn import AnyRedis
from services.common.scripts import lua
from services.common.secrets_box import SecretBox

_DEPOSIT_LUA = lua("services.api", "deposit.lua", publishes=True)
_WITHDRAW_LUA = lua("services.api", "withdraw.lua", publishes=True)


def _amount_units(asset: Asset, amount: str) -> int:
    """An operator amount in units, small enough for Redis integers and exact Lua math."""
    units = asset.to_units(amount)
    if units <= 0:  # positive, but so small it rounded to nothing
        raise ExchangeError("INVALID_AMOUNT", f"amount has more than {asset.decimals} decimals")
    if units >= MAX_EXACT_UNITS:
        raise ExchangeError("INVALID_AMOUNT", "amount is too large")
    return units


@dataclass(frozen=True)
class Transfer:
    available: str  # the asset's available balance after it, as a wire decimal
    applied: bool  # False: its reference was applied before, nothing changed now
    reference: str


_TRANSFER_ERRORS: dict[str, Callable[[str, str], ExchangeError]] = {
    "UNKNOWN_ACCOUNT": lambda account, _: ExchangeError(
        "UNKNOWN_ACCOUNT", f"no account {account}", 404),
    "BALANCE_TOO_LARGE": lambda _, asset: ExchangeError(
        "INVALID_AMOUNT", "the balance would grow too large"),
    "INSUFFICIENT_FUNDS": lambda _, asset: ExchangeError(
        "INSUFFICIENT_FUNDS", f"not enough {asset} available"),
    "REFERENCE_REUSED": lambda _, asset: ExchangeError(
        "REFERENCE_REUSED", "this reference names another transfer of this account", 409),
}


@dataclass(frozen=True)
class NewAccount:
    account_id: str
    api_key: str
    api_secret: str


class AccountStore:
    def __init__(self, redis: AnyRedis, markets: Markets, box: SecretBox,
                 durable: DurableWriter | None = None, *, rate_per_s: float = 100.0,
                 burst: int = 200) -> None:
        self.redis = redis
        # Transfers are acknowledged only once on a replica (0 replicas: as is).
        self.durable = durable or DurableWriter(redis, replicas=0)
        self.markets = markets
        self.box = box
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.api_keys = ApiKeyStore(redis, box)
        self.lookup_key = self.api_keys.lookup_key
        self._deposit = redis.register_script(_DEPOSIT_LUA)
        self._withdraw = redis.register_script(_WITHDRAW_LUA)

    async def create(self, rate_per_s: float | None = None,
                     burst: int | None = None) -> NewAccount:
        """A new account with one API key; the secret is returned once and stored sealed."""
        account_id = str(await self.redis.incr(keys.ACCOUNT_ID_SEQ))
        api_key = secrets.token_hex(16)
        api_secret = secrets.token_hex(32)
        account = keys.AccountKeys(account_id)
        await self.redis.hset(account.profile, mapping={
            "created_ts": int(time.time() * 1000), "api_key": api_key,
        })
        await self.redis.hset(keys.api_key(api_key), mapping={
            "account_id": account_id, "secret_sealed": self.box.seal(api_secret, api_key),
            "rate_per_s": rate_per_s or self.rate_per_s, "burst": burst or self.burst,
        })
        return NewAccount(account_id, api_key, api_secret)

    async def deposit(self, account_id: str, asset_symbol: str, amount: str,
                      reference: str | None = None) -> Transfer:
        """Credit `amount`, once per `reference`; acknowledged once on a replica."""
        return await self._transfer(self._deposit, account_id, asset_symbol, amount,
                                    reference)

    async def withdraw(self, account_id: str, asset_symbol: str, amount: str,
                       reference: str | None = None) -> Transfer:
        """Debit `amount` from available (never held funds), once per `reference`;
        acknowledged once on a replica."""
        return await self._transfer(self._withdraw, account_id, asset_symbol, amount,
                                    reference)

    async def _transfer(self, script: AsyncScript, account_id: str, asset_symbol: str,
                        amount: str, reference: str | None) -> Transfer:
        """Apply a transfer once per reference. Without one it gets its own, which makes
        the writer's resends after a failover safe (but not a client's)."""
        asset = self.markets.asset(asset_symbol)
        units = _amount_units(asset, amount)
        account = keys.AccountKeys(account_id)
        reference = reference or f"api-{secrets.token_hex(12)}"

        async def apply(pipe: Pipeline) -> None:
            # Idempotent by its reference: the writer may send it again.
            await script(keys=[account.profile, account.balances, account.updates_seq,
                               account.updates, account.transfers],
                         args=[asset.symbol, units, reference], client=pipe)

        try:
            [(available, applied)] = await self.durable.run(account.balances, apply)
        except ResponseError as exc:
            for code, error in _TRANSFER_ERRORS.items():
                if code in str(exc):
                    raise error(account_id, asset.symbol) from None
            raise
        return Transfer(asset.format(int(available)), bool(applied), reference)

    async def balances(self, account_id: str) -> list[dict[str, str]]:
        """Every configured asset with available and held, as wire decimals."""
        raw = await self.redis.hgetall(keys.AccountKeys(account_id).balances)
        values = {k.decode(): int(v) for k, v in raw.items()}
        return [
            {
                "asset": asset.symbol,
                "available": asset.format(values.get(f"avail:{asset.symbol}", 0)),
                "held": asset.format(values.get(f"held:{asset.symbol}", 0)),
            }
            for asset in self.markets.assets.values()
        ]
