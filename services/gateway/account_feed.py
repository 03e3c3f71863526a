"""One logged-in account inside a gateway: its private update stream and its sessions.

The API and settlement scripts publish every change of an account, in the same atomic
step as the change, on the sharded channel `{acct:ID}:updates`:
`{"seq": N, "orders": [order record...], "fills": [wire fill...],
"balances": {ASSET: [available units, held units]}}`, where `seq` (also kept in
`{acct:ID}:useq`) rises by exactly one per update, so a gap is a lost message. Any part
may be missing or empty (Lua's cjson writes an empty list as `{}`).

Sync, as for a pair's book (feed.py): SSUBSCRIBE first and buffer, then read `useq` and
the balances hash in one MULTI (the scripts change both atomically, so they agree), drop
buffered updates with seq <= useq, and require the rest to continue it. Live, each
update must be seq + 1; on a gap, an update that cannot be read, or a broken
subscription, the same sync runs again and then every session of the account gets
`{"ch":"system","type":"resync","channels":[...]}` for its orders/fills (refetch them
over REST: what was lost cannot be replayed) and a fresh balances snapshot.

Fan-out: an update is rendered once (one frame per order, per fill, one for the touched
balances, all carrying the update's seq) and the same bytes queued to every session of
the account watching that channel. The gateway keeps a copy of the account's balances
(absolute values, applied in seq order), so a new `balances` watcher gets a snapshot at
the current seq without a Redis round trip, and the updates after it continue it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from services.common.errors import ExchangeError
from services.common.keys import AccountKeys
from services.common.order_record import order_to_wire
from services.common.pairs import Markets
from services.common.redis_conn import AnyRedis
from services.gateway import frames
from services.gateway.client import Client
from services.gateway.subscriber import LINK_ERRORS, ShardedSubscriber

log = logging.getLogger("exchange.gateway.account")

MAX_BUFFERED = 10_000  # updates kept while a snapshot is read; beyond, read another one
SYNC_BACKOFF_S = 0.05
SYNC_MAX_BACKOFF_S = 2.0
RESYNCED_CHANNELS = ("orders", "fills")  # what a client refetches after lost updates

_decode = msgspec.json.decode
Balance = tuple[int, int]  # (available, held) units


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    """One published update, rendered: its frames and the balances it sets."""

    seq: int
    orders: list[bytes]
    fills: list[bytes]
    balances_frame: bytes | None
    balances: dict[str, Balance]  # configured assets only


def _units(value: object) -> int:
    """A units value as the scripts write it: an integer, or its decimal string."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"not a units value: {value!r}")


def _items(doc: dict, name: str) -> list:
    value = doc.get(name)
    if value is None or value == {}:  # absent, or an empty Lua table
        return []
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list")
    return value


def balances_data(markets: Markets, balances: dict[str, Balance],
                  only: set[str] | None = None) -> list[dict[str, str]]:
    """`[{asset, available, held}]` in the markets' asset order (as REST /balances):
    every configured asset, or those in `only`."""
    data = []
    for symbol, asset in markets.assets.items():
        if only is not None and symbol not in only:
            continue
        available, held = balances.get(symbol, (0, 0))
        data.append({"asset": symbol, "available": asset.format(available),
                     "held": asset.format(held)})
    return data


def render_update(data: bytes, markets: Markets) -> AccountUpdate:
    """Decode and render one published update; ValueError (or another exception from the
    records) if it is not one."""
    doc = _decode(data)
    if not isinstance(doc, dict):
        raise ValueError("an update must be a JSON object")
    seq = doc.get("seq")
    if type(seq) is not int or seq < 1:
        raise ValueError(f"bad seq {seq!r}")
    orders = []
    for record in _items(doc, "orders"):
        if not isinstance(record, dict):
            raise ValueError("an order record must be an object")
        fields = {k: v if isinstance(v, str) else str(v) for k, v in record.items()}
        wire = order_to_wire(markets.pair(fields.get("symbol")), fields)
        orders.append(frames.private("orders", seq, wire))
    fills = []
    for fill in _items(doc, "fills"):
        if not isinstance(fill, dict):
            raise ValueError("a fill must be an object")
        fills.append(frames.private("fills", seq, fill))
    raw = doc.get("balances")
    if raw is None or raw == []:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError("balances must be an object")
    balances: dict[str, Balance] = {}
    for symbol, value in raw.items():
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"balance of {symbol!r} must be [available, held]")
        if symbol not in markets.assets:
            log.warning("update %d has a balance of unknown asset %r; skipped", seq, symbol)
            continue
        balances[symbol] = (_units(value[0]), _units(value[1]))
    balances_frame = None
    if balances:
        balances_frame = frames.private(
            "balances", seq, balances_data(markets, balances, set(balances)))
    return AccountUpdate(seq, orders, fills, balances_frame, balances)


class PrivateWatch:
    """A session's subscription to one of its account's channels."""

    __slots__ = ("channel", "feed")

    def __init__(self, feed: AccountFeed, channel: str) -> None:
        self.feed = feed
        self.channel = channel

    def position(self) -> int | None:
        return None  # the heartbeat's `pos` is about books


class AccountFeed:
    """The gateway's subscription to one account's updates and the sessions watching them.

    Implements `subscriber.ChannelHandler` for `{acct:ID}:updates`. Every session here is
    logged in as this account: no other account's frame can reach it.
    """

    def __init__(self, account_id: str, redis: AnyRedis, subscriber: ShardedSubscriber,
                 markets: Markets, on_lost: Callable[[AccountFeed], None],
                 after: Awaitable[None] | None = None) -> None:
        self.account_id = account_id
        self.keys = AccountKeys(account_id)
        self.redis = redis
        self.subscriber = subscriber
        self.markets = markets
        self._on_lost = on_lost
        self.watchers: dict[str, set[Client]] = {"orders": set(), "fills": set(),
                                                 "balances": set()}
        self.live = False  # synced: updates are applied as they come
        self.seq = 0  # the last update applied (or the snapshot's)
        self.balances: dict[str, Balance] = {}
        self._snapshot: bytes | None = None  # balances frame at `seq`, built on demand
        self._buffer: list[AccountUpdate] = []
        self._overflowed = False
        self._resync_wanted = False
        self._lost_updates = False  # tell the sessions once synced again
        self._stopped = False
        self._after = after  # the previous feed of this account, still unsubscribing
        self._task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """No watcher left: the owner stops the feed."""
        return not any(self.watchers.values())

    def clients(self) -> set[Client]:
        found: set[Client] = set()
        for watchers in self.watchers.values():
            found |= watchers
        return found

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe and sync in the background; balances watchers get snapshots once
        synced."""
        self._task = asyncio.create_task(self._start(), name=f"account-{self.account_id}")
        self._task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        """Stop syncing and drop the Redis subscription."""
        self._stopped = True
        self.live = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.subscriber.unsubscribe(self.keys.updates, self)

    async def _start(self) -> None:
        if self._after is not None:
            # Its SUNSUBSCRIBE must not land after (and undo) our SSUBSCRIBE.
            await asyncio.gather(self._after, return_exceptions=True)
            self._after = None
        await self.subscriber.subscribe(self.keys.updates, self)
        await self._sync()

    # ---- watchers -----------------------------------------------------------------------

    def watch(self, client: Client, channel: str) -> PrivateWatch:
        """Add a watcher; a balances watcher gets a snapshot now if synced, else once
        synced."""
        self.watchers[channel].add(client)
        if channel == "balances" and self.live:
            client.send(self._balances_snapshot())
        return PrivateWatch(self, channel)

    def unwatch(self, client: Client, watch: PrivateWatch) -> None:
        """Remove one watcher; nothing more is sent to it for this channel."""
        self.watchers[watch.channel].discard(client)

    # ---- ChannelHandler -----------------------------------------------------------------

    def on_message(self, data: bytes) -> None:
        """One published update of the account, from the subscriber's reader task."""
        if self._stopped:
            return
        try:
            update = render_update(data, self.markets)
        except (ValueError, KeyError, TypeError, ArithmeticError, ExchangeError,
                msgspec.DecodeError) as exc:
            # Its effects are unknowable: re-read the state and have clients refetch.
            log.error("account %s: unreadable update (%r); resyncing", self.account_id, exc)
            self._lost()
            return
        if not self.live:
            if len(self._buffer) < MAX_BUFFERED:
                self._buffer.append(update)
            else:
                self._overflowed = True
            return
        if update.seq != self.seq + 1:
            log.info("account %s: gap (have seq %d, got %d); resyncing", self.account_id,
                     self.seq, update.seq)
            self._lost()
            self._buffer.append(update)
            return
        self._apply(update)

    def on_resync(self) -> None:
        """Updates may have been lost (the subscription broke): sync again."""
        self._lost()

    def on_lost(self) -> None:
        """The subscription cannot be restored: the owner tells the sessions."""
        self._stopped = True
        self.live = False
        if self._task is not None:
            self._task.cancel()
        self._on_lost(self)

    # ---- sync ---------------------------------------------------------------------------

    def _lost(self) -> None:
        self._lost_updates = True
        self._begin_sync()

    def _begin_sync(self) -> None:
        if self._stopped:
            return
        self.live = False
        self._buffer.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._sync(),
                                             name=f"account-sync-{self.account_id}")
            self._task.add_done_callback(_log_failure)
        else:
            self._resync_wanted = True  # the running sync reads another snapshot

    async def _read(self) -> tuple[int, dict[str, Balance]]:
        """The account's update seq and balances, as of one instant."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(self.keys.updates_seq)
        pipe.hgetall(self.keys.balances)
        useq, raw = await pipe.execute()
        values: dict[str, list[int]] = {}
        for field, value in raw.items():
            kind, _, asset = field.decode().partition(":")
            if kind in ("avail", "held") and asset in self.markets.assets:
                values.setdefault(asset, [0, 0])[kind == "held"] = int(value)
        return int(useq or 0), {asset: (v[0], v[1]) for asset, v in values.items()}

    async def _sync(self) -> None:
        delay = SYNC_BACKOFF_S
        attempt = 0
        while True:
            if attempt:
                await asyncio.sleep(delay)
                delay = min(delay * 2, SYNC_MAX_BACKOFF_S)
            attempt += 1
            self._resync_wanted = self._overflowed = False
            try:
                seq, balances = await self._read()
            except LINK_ERRORS as exc:
                log.warning("account %s: reading balances failed: %r", self.account_id, exc)
                continue
            buffered, self._buffer = [u for u in self._buffer if u.seq > seq], []
            if self._resync_wanted or self._overflowed:
                continue
            if all(u.seq == seq + i for i, u in enumerate(buffered, 1)):
                break
            log.info("account %s: buffered updates do not continue seq %d; again",
                     self.account_id, seq)
            self._lost_updates = True
        # No await from here on: no update can slip in between the sync and going live.
        self.live = True
        self.seq, self.balances, self._snapshot = seq, balances, None
        if self._lost_updates:
            self._lost_updates = False
            self._send_resync()
        if self.watchers["balances"]:
            frame = self._balances_snapshot()
            for client in self.watchers["balances"]:
                client.send(frame)
        for update in buffered:
            self._apply(update)
        log.info("account %s: synced at update seq %d", self.account_id, self.seq)

    # ---- fan-out ------------------------------------------------------------------------

    def _apply(self, update: AccountUpdate) -> None:
        self.seq = update.seq
        if update.balances:
            self.balances.update(update.balances)
        self._snapshot = None
        watchers = self.watchers
        for channel, frames_ in (("orders", update.orders), ("fills", update.fills)):
            if frames_ and watchers[channel]:
                for frame in frames_:
                    for client in watchers[channel]:
                        client.send(frame)
        if update.balances_frame is not None:
            for client in watchers["balances"]:
                client.send(update.balances_frame)

    def _balances_snapshot(self) -> bytes:
        """Every configured asset's balance at `seq`."""
        if self._snapshot is None:
            self._snapshot = frames.private(
                "balances", self.seq, balances_data(self.markets, self.balances))
        return self._snapshot

    def _send_resync(self) -> None:
        """Tell each orders/fills watcher which of its channels to refetch."""
        encoded: dict[tuple[str, ...], bytes] = {}
        for client in self.watchers["orders"] | self.watchers["fills"]:
            channels = tuple(ch for ch in RESYNCED_CHANNELS if client in self.watchers[ch])
            frame = encoded.get(channels)
            if frame is None:
                frame = encoded[channels] = frames.private_resync(list(channels))
            client.send(frame)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=exc)
