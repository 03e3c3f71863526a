"""Settlement applies each fill exactly once, even when an entry is read again."""

from __future__ import annotations

from services.api.accounts import AccountStore
from services.api.orders import OrderService
from services.api.schemas import OrderRequest
from services.common import keys
from services.common.messages import Trade, encode, events_decoder
from services.common.pairs import parse_markets
from services.common.secrets_box import SecretBox, new_key
from services.settlement.worker import PairSettler
from tests.support.pipeline import match_queued

# A pair of its own, so no engine of the shared test stack touches its slot.
MARKETS = parse_markets({
    "assets": {"SETL": {"decimals": 8}, "USD": {"decimals": 6}},
    "pairs": [{"symbol": "SETL-USD", "tick_size": "0.01", "lot_size": "0.001",
               "min_qty": "0.001", "max_qty": "1000", "min_notional": "1",
               "price_decimals": 2, "qty_decimals": 3}],
})
PAIR = MARKETS.pair("SETL-USD")


async def seller_of_two_at_90(redis):
    """Fresh accounts: a seller of 2 SETL resting at 90, a buyer with 1000 USD."""
    accounts = AccountStore(redis, MARKETS, SecretBox(new_key()))
    orders = OrderService(redis, MARKETS)
    seller, buyer = await accounts.create(), await accounts.create()
    await accounts.deposit(seller.account_id, "SETL", "10")
    await accounts.deposit(buyer.account_id, "USD", "1000")
    await orders.place(seller.account_id, OrderRequest(
        symbol="SETL-USD", side="sell", price="90.00", qty="2.000"))
    return accounts, orders, seller, buyer


async def assert_two_traded_at_90_once(accounts: AccountStore, seller, buyer) -> None:
    """Both sides hold exactly what one trade of 2 at 90 (no fees) leaves them."""
    assert await accounts.balances(buyer.account_id) == [
        {"asset": "SETL", "available": "2.00000000", "held": "0.00000000"},
        {"asset": "USD", "available": "820.000000", "held": "0.000000"},
    ]
    assert await accounts.balances(seller.account_id) == [
        {"asset": "SETL", "available": "8.00000000", "held": "0.00000000"},
        {"asset": "USD", "available": "180.000000", "held": "0.000000"},
    ]


async def test_replayed_entry_settles_once_and_releases_price_improvement(redis) -> None:
    accounts, orders, seller, buyer = await seller_of_two_at_90(redis)
    # The buyer bids 100 but trades at the resting 90: the 10 * 2 difference comes back.
    await orders.place(buyer.account_id, OrderRequest(
        symbol="SETL-USD", side="buy", price="100.00", qty="2.000"))

    await match_queued(redis, PAIR)
    pair_keys = keys.PairKeys(PAIR.symbol)
    settler = PairSettler(redis, PAIR)
    (_, fields), = await redis.xrange(pair_keys.events)
    for _ in range(3):  # a worker that crashed before XACK reads the entry again
        await settler.settle_entry(fields)

    await assert_two_traded_at_90_once(accounts, seller, buyer)
    assert await redis.scard(keys.AccountKeys(buyer.account_id).open_orders) == 0


async def test_a_lost_commit_made_again_in_other_batches_settles_each_fill_once(redis) -> None:
    """A failover can lose an engine commit that settlement had already applied; the
    engine then makes the same events again, cut into other batches. Each fill still
    counts once: an account applies only the legs past the last seq it settled."""
    accounts, orders, seller, buyer = await seller_of_two_at_90(redis)
    for _ in range(2):  # two fills of the one sell
        await orders.place(buyer.account_id, OrderRequest(
            symbol="SETL-USD", side="buy", price="90.00", qty="1.000"))
    await match_queued(redis, PAIR)
    (_, fields), = await redis.xrevrange(keys.PairKeys(PAIR.symbol).events, count=1)
    events = events_decoder.decode(fields[b"e"])
    first_fill = next(i for i, e in enumerate(events) if isinstance(e, Trade))

    def entry(part: list) -> dict[bytes, bytes]:
        return {b"e": encode(part), b"seq": str(part[-1].seq).encode()}

    settler = PairSettler(redis, PAIR)
    await settler.settle_entry(entry(events[:first_fill + 1]))  # the commit later lost
    for part in (events[:first_fill], events[first_fill:]):  # the same events, re-cut
        await settler.settle_entry(entry(part))

    await assert_two_traded_at_90_once(accounts, seller, buyer)
