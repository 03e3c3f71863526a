"""Reading a pair's book cache: the levels and the market-data seq they belong to.

The engine's commit script writes levels and `md_seq` together, and this read takes
both in one MULTI on the pair's slot, so a snapshot's seq always matches its levels.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from services.common.keys import PairKeys
from services.common.pairs import Pair
from services.common.redis_conn import AnyRedis


@dataclass(frozen=True)
class BookSnapshot:
    seq: int
    epoch: str
    bids: list[tuple[int, int]]  # (price ticks, lots), best first
    asks: list[tuple[int, int]]


async def read_book(redis: AnyRedis, pair_keys: PairKeys) -> BookSnapshot:
    """The full book of a pair as of one committed market-data seq."""
    pipe = redis.pipeline(transaction=True)
    pipe.hgetall(pair_keys.bids)
    pipe.hgetall(pair_keys.asks)
    pipe.hmget(pair_keys.state, "md_seq", "epoch")
    raw_bids, raw_asks, (seq, epoch) = await pipe.execute()
    bids = sorted(((int(p), int(q)) for p, q in raw_bids.items()), reverse=True)
    asks = sorted((int(p), int(q)) for p, q in raw_asks.items())
    return BookSnapshot(int(seq or 0), (epoch or b"").decode(), bids, asks)


def wire_levels(pair: Pair, levels: list[tuple[int, int]]) -> list[list[str]]:
    return [[pair.format_price(p), pair.format_qty(q)] for p, q in levels]


CHECKSUM_LEVELS = 25


def book_checksum(bids: list[list[str]], asks: list[list[str]], depth: int) -> int:
    """API.md's checksum: CRC-32 of the top min(25, depth) levels' wire strings.

    Tokens go bid[i].px, bid[i].qty, ask[i].px, ask[i].qty for each i, a side with no
    level i contributing nothing, joined with ':'.
    """
    tokens: list[str] = []
    for i in range(min(CHECKSUM_LEVELS, depth)):
        if i < len(bids):
            tokens += bids[i]
        if i < len(asks):
            tokens += asks[i]
    return zlib.crc32(":".join(tokens).encode("ascii"))
