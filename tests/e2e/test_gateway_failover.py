"""kill -9 of one WebSocket gateway replica while the book moves (DESIGN §9 fault tests).

Two replicas share one port with SO_REUSEPORT, as `make up` and a Kubernetes Service run
them, so a client that reconnects to the same URL lands on a live one. The replicas
here are started on the session's exchange (its engines, its Redis) and killed or
restarted by this module alone; `make up`'s supervisor would restart the killed one the
same way, after which it takes new connections again.

What users see: the clients of the killed replica lose their connection, reconnect to
the same URL and get a fresh snapshot, after which their book follows deltas and ends
equal to the REST book; the clients of the other replica notice nothing: one snapshot,
an unbroken seq chain, consecutive trade ids, the same final book.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from services.common.client import ExchangeClient
from services.common.pairs import load_markets
from services.local.redis_cluster import free_ports
from services.local.up import Child, LocalExchange, _exchange_command
from tests.support.faults import TradingLoad
from tests.support.waiting import eventually
from tests.support.watcher import BookWatcher

SYMBOL = "BTC-USD"
CLIENTS = 8


@dataclass
class Replicas:
    url: str
    children: list[Child]

    def pids(self) -> set[int]:
        return {c.process.pid for c in self.children if c.process and c.process.poll() is None}


def _wait_healthy(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


@pytest.fixture(scope="module")
def replicas(stack: LocalExchange) -> Iterator[Replicas]:
    """Two gateway processes on one port, fed by the session's exchange."""
    (port,) = free_ports(1)
    argv = [*_exchange_command(), "gateway", "--host", "127.0.0.1", "--port", str(port),
            "--reuse-port"]
    children = [Child(f"shared-gateway-{n}", argv) for n in (1, 2)]
    for child in children:
        stack._spawn(child)  # the exchange's environment and log directory
    try:
        _wait_healthy(port)
        yield Replicas(f"ws://127.0.0.1:{port}/ws", children)
    finally:
        for child in children:
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in children:
            if child.process:
                try:
                    child.process.wait(10)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()


@dataclass
class Screen:
    """A market-data client that, like a trading screen, reconnects to the same URL when
    its connection drops and starts over from the snapshot it is sent."""

    url: str
    sessions: list[BookWatcher] = field(default_factory=list)
    drops: list[float] = field(default_factory=list)  # monotonic time of each drop
    synced: list[float] = field(default_factory=list)  # ... of each session's snapshot

    @property
    def watcher(self) -> BookWatcher:
        return self.sessions[-1]

    async def connect(self) -> None:
        watcher = BookWatcher(self.url, SYMBOL)
        await watcher.__aenter__()
        self.sessions.append(watcher)
        self.synced.append(time.monotonic())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.watcher.wait_for(lambda _: stop.is_set(), timeout=120,
                                            what="the end of the test")
            except ConnectionClosed:
                self.drops.append(time.monotonic())
                await self.reconnect()

    async def reconnect(self) -> None:
        """As a client should: again, with a short backoff, until a replica answers (a
        connection queued on the killed replica's socket is dropped unanswered)."""
        for attempt in range(1, 21):
            try:
                await self.connect()
                return
            except (OSError, InvalidHandshake):
                await asyncio.sleep(0.05 * attempt)
        raise AssertionError("no replica took the reconnection")

    def gateway_pid(self, pids: set[int]) -> int:
        """The replica serving this client's connection."""
        local = self.watcher.ws.local_address[1]  # type: ignore[union-attr]
        for pid in pids:
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == local:
                    return pid
        raise AssertionError(f"no replica serves the connection from port {local}")

    async def aclose(self) -> None:
        for watcher in self.sessions:
            await watcher.__aexit__()


def consecutive(ids: list[int]) -> bool:
    return ids == list(range(ids[0], ids[0] + len(ids))) if ids else True


async def test_killing_a_gateway_replica_moves_its_clients_to_the_other_with_a_fresh_snapshot(
        stack: LocalExchange, replicas: Replicas, admin: ExchangeClient) -> None:
    pair = load_markets().pair(SYMBOL)
    screens: list[Screen] = []
    pids = replicas.pids()
    assert len(pids) == 2
    # Connect until both replicas serve some clients (the kernel spreads connections).
    while len(screens) < CLIENTS or len({s.gateway_pid(pids) for s in screens}) < 2:
        screen = Screen(replicas.url)
        await screen.connect()
        screens.append(screen)
        assert len(screens) < 40, "every connection landed on the same replica"
    serving = {id(s): s.gateway_pid(pids) for s in screens}
    victim = next(iter(serving.values()))
    moved = [s for s in screens if serving[id(s)] == victim]
    stayed = [s for s in screens if serving[id(s)] != victim]

    buyer, seller = await admin.create_account(), await admin.create_account()
    await admin.deposit(buyer.account_id, "USD", "1000000")
    await admin.deposit(seller.account_id, "BTC", "100")
    last = (await admin.call("GET", f"/api/v1/markets/{SYMBOL}/ticker"))["last"]
    load = TradingLoad(stack.api_url, pair, buyer, seller, rate=20, tag="gateway-kill",
                       mid=pair.price_to_ticks(last or "60000.00"))
    stop = asyncio.Event()
    readers = [asyncio.create_task(s.run(stop)) for s in screens]
    running = asyncio.create_task(load.run(stop))
    try:
        await eventually(lambda: all(len(s.watcher.trades) >= 5 for s in screens),
                         "every client to see trades before the kill", timeout=30)
        victim_child = next(c for c in replicas.children if c.process.pid == victim)
        victim_child.process.kill()
        killed_at = time.monotonic()
        await eventually(lambda: all(len(s.sessions) == 2 for s in moved),
                         "the killed replica's clients to reconnect", timeout=10)
        reconnected_s = max(s.synced[1] for s in moved) - killed_at
        trades_at_reconnect = {id(s): len(s.watcher.trades) for s in screens}
        await eventually(lambda: all(len(s.watcher.trades) >= trades_at_reconnect[id(s)] + 5
                                     for s in screens),
                         "every client to see trades after the kill", timeout=30)
    finally:
        stop.set()
        await running
        await asyncio.gather(*readers)

    try:
        # The killed replica's clients: one drop, a new session that began with a snapshot.
        survivor = (pids - {victim}).pop()
        for screen in moved:
            assert len(screen.drops) == 1 and len(screen.sessions) == 2
            assert screen.gateway_pid(replicas.pids()) == survivor
            assert screen.watcher.book_messages[0]["type"] == "snapshot"
        # The other replica's clients: nothing happened to them.
        for screen in stayed:
            assert screen.drops == [] and len(screen.sessions) == 1
            kinds = [m["type"] for m in screen.watcher.book_messages]
            assert kinds[0] == "snapshot" and "snapshot" not in kinds[1:]
        for screen in screens:
            for session in screen.sessions:
                assert session.violations == []  # every delta followed its seq, checksums ok
                assert consecutive([int(t["id"]) for t in session.trades])
        # Every client's book is the exchange's.
        rest = await admin.book(SYMBOL, depth=50)
        for screen in screens:
            await screen.watcher.wait_for(lambda w: w.seq >= rest["seq"],
                                          what="the REST book's seq")
            assert (screen.watcher.seq, screen.watcher.top("bids"),
                    screen.watcher.top("asks")) == (rest["seq"], rest["bids"], rest["asks"])

        # As `make up`'s supervisor does: the killed replica starts again and serves.
        stack._spawn(victim_child)
        await asyncio.to_thread(_wait_healthy, int(replicas.url.split(":")[2].split("/")[0]))
        await eventually(lambda: len(replicas.pids()) == 2, "both replicas to run again")
        async with BookWatcher(replicas.url, SYMBOL) as fresh:
            assert fresh.book_messages[0]["type"] == "snapshot"
    finally:
        for screen in screens:
            await screen.aclose()
    assert load.tally.unanswered == [] and set(load.tally.refused) <= {"ORDER_NOT_OPEN"}
    print(f"\nkilled a gateway serving {len(moved)} of {len(screens)} clients; all had a "
          f"fresh snapshot from the other replica {reconnected_s * 1000:.0f} ms after the "
          f"kill; "
          f"{len(load.tally.acked)} orders placed during the test")
