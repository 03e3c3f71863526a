"""The one place that builds Redis key and channel names (DESIGN §3).

Every key of a pair carries `{PAIR}` as its hash tag and every key of an account
carries `{acct:ID}`, so each atomic step touches exactly one Redis Cluster slot.
"""

from __future__ import annotations

SETTLEMENT_GROUP = "settlement"
# Gateways report here once a second (id -> JSON): what the ops page shows of them.
GATEWAY_REGISTRY = "{ops}:gateways"

# Keys with no hash tag of a pair or account: rare, operator-side writes only.
ACCOUNT_ID_SEQ = "{accounts}:seq"
# The account that collects trading fees (and pays maker rebates).
FEE_ACCOUNT = "fees"


class PairKeys:
    """Keys and the market-data channel of one trading pair, all in one slot."""

    __slots__ = ("asks", "bids", "events", "inbox", "lease", "md", "snapshot", "state", "symbol",
                 "trades")

    def __init__(self, symbol: str) -> None:
        tag = "{" + symbol + "}"
        self.symbol = symbol
        self.inbox = f"{tag}:in"  # commands for the engine (stream)
        self.events = f"{tag}:events"  # committed engine output (stream)
        self.state = f"{tag}:state"  # engine counters: seq, epoch, last input (hash)
        self.bids = f"{tag}:book:bids"  # price ticks -> resting lots (hash)
        self.asks = f"{tag}:book:asks"
        self.trades = f"{tag}:trades"  # newest-first wire trades, capped (list)
        self.md = f"{tag}:md"  # sharded pub/sub channel of market data
        self.lease = f"{tag}:lease"  # the writer's lease and fencing token
        self.snapshot = f"{tag}:snapshot"  # the engine's latest state snapshot (string)

    def candles(self, interval: str) -> str:
        """Bars of one interval: a sorted set scored by bar start, members wire JSON."""
        return "{" + self.symbol + "}:candles:" + interval


class AccountKeys:
    """Keys and the private update channel of one account, all in one slot."""

    __slots__ = ("account_id", "applied", "balances", "client_ids", "closed_orders", "fills",
                 "open_orders", "profile", "tag", "transfers", "unconfirmed", "updates",
                 "updates_seq")

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.tag = "{acct:" + account_id + "}"
        self.balances = f"{self.tag}:balances"  # avail:ASSET / held:ASSET -> units (hash)
        self.profile = f"{self.tag}:profile"  # account facts (hash)
        self.open_orders = f"{self.tag}:open"  # ids of orders not yet terminal (set)
        self.client_ids = f"{self.tag}:cids"  # client_order_id -> order_id (hash)
        self.applied = f"{self.tag}:applied"  # pair -> last settled event seq (hash)
        self.fills = f"{self.tag}:fills"  # wire fills, newest first, capped (list)
        self.closed_orders = f"{self.tag}:closed"  # ended order ids, newest first (list)
        # Orders held but not yet seen by their engine, scored by creation ms (zset).
        self.unconfirmed = f"{self.tag}:unconfirmed"
        self.updates = f"{self.tag}:updates"  # sharded channel of private updates
        self.updates_seq = f"{self.tag}:useq"  # seq of the last update published
        # Operator deposits and withdrawals by reference -> "kind asset units" (hash):
        # a transfer sent again with its reference is applied once.
        self.transfers = f"{self.tag}:transfers"

    def order(self, order_id: str) -> str:
        """One order's record (hash)."""
        return f"{self.tag}:order:{order_id}"


UNCONFIRMED_PATTERN = "{acct:*}:unconfirmed"  # for the stranded-hold reconciler's scan


def api_key(key: str) -> str:
    """An API key's record: account id and secret (hash)."""
    return "{apikey:" + key + "}"


def rate_bucket(key: str) -> str:
    """An API key's token bucket (hash), in the key's slot."""
    return "{apikey:" + key + "}:bucket"


def replay_guard(key: str, signature: str) -> str:
    """Marks a signature as used for its validity window (string with TTL)."""
    return "{apikey:" + key + "}:sig:" + signature
