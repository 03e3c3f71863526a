"""One gateway process fanning out a busy pair's book to many WebSocket connections.

Processes, all on this machine: a 6-node local Redis Cluster; the real gateway
(`python -m services.gateway`) and, for the baseline, a minimal `websockets` server that
`broadcast()`s each update (this file, `baseline` mode), each on its own port; receivers
(this file, `receive` mode: raw asyncio sockets parsing WebSocket frame headers, no
WebSocket library), each holding a share of the connections; and this process, which
seeds the pair's book with the real engine and publishes market-data updates with
SPUBLISH on the pair's channel, as the engine does.

Every connection of the gateway subscribes to the pair's `book` at depth 10; every update
published changes a level of the top 10, so each is one delta frame (~200 B) to every
connection. The baseline gets the same updates on its own channel and sends a JSON frame
of about the same size to every connection, built once per update.

Two measures per server and connection count, in rounds (the order of the servers
alternating), figures the median of the rounds:
- throughput: a burst of updates published as fast as Redis takes them; delivered
  frames/s = frames received by all connections / (first publish -> last frame);
- latency: 20k deliveries/s (20 updates/s to 1k connections, 4/s to 5k), publish ->
  receive per delivery (CLOCK_MONOTONIC is one clock for every process here), p50/p99.
  It is timed on every 10th connection (`--latency-sample`); the others' frames wait in
  the kernel and are read after the run. The server writes to every connection all the same, but a
  receiving process reading 500 sockets one after the other would add a queueing delay
  of its own that a thousand separate clients do not have.
The CPU time of the server and of the receivers over each run is kept, to tell which
side saturates (1.0 = one core busy).

    .venv/bin/python bench/ws_fanout.py [--connections 1000,5000] [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py

from common import ROOT, machine, median, percentile, source_digest, write_results

SYMBOL = "BTC-USD"
DEPTH = 10
BASELINE_CHANNEL = "{bench-baseline}:md"
LATENCY_DELIVERIES = 20_000  # per second in the latency runs (20 updates/s to 1k connections)
GOAL_DELIVERIES_PER_S = 500_000
GOAL_P99_MS = 10.0
GOAL_BASELINE_RATIO = 2.0
CONNECT_BATCH = 200  # handshakes in flight per receiver
QUIET_S = 2.0  # a receiver waiting for frames gives up after this long without any


# ---- receive mode: lean WebSocket clients -------------------------------------------------


class Receiver:
    """Many connections' counters; commands on stdin, one JSON reply per line on stdout."""

    def __init__(self, host: str, port: int, subscribe: bytes | None) -> None:
        self.host, self.port = host, port
        self.subscribe = subscribe  # the masked subscribe frame, or None (baseline)
        self.conns: list[Conn] = []
        self.expected = 0  # connections this receiver opens
        self.total = 0  # data frames since the last mark
        self.bytes = 0
        self.last_ns = 0
        self.target = 0  # frames per connection awaited
        self.reached = 0  # connections that have `target` frames
        self.done = asyncio.Event()
        self.latency = False
        self.seqs: list[int] = []
        self.times: list[int] = []

    def mark(self, target: int, sample: int = 0) -> None:
        """Count from now until each connection has `target` frames. `sample` > 0: time
        every `sample`-th connection's frames and leave the others unread until
        `catch_up` (their frames wait in the kernel)."""
        self.total = self.bytes = self.last_ns = self.reached = 0
        self.target, self.latency = target, sample > 0
        self.seqs, self.times = [], []
        self.done.clear()
        self.expected = 0
        for i, conn in enumerate(self.conns):
            conn.frames = 0
            conn.timed = self.latency and i % sample == 0
            if self.latency and not conn.timed:
                assert conn.transport is not None
                conn.transport.pause_reading()
            else:
                self.expected += 1

    async def catch_up(self, timeout: float) -> None:
        """Read the connections left unread by a sampled `mark` up to the target."""
        if not self.latency:
            return
        self.latency = False
        self.expected = len(self.conns)
        self.done.clear()
        for conn in self.conns:
            if not conn.timed:
                assert conn.transport is not None
                conn.transport.resume_reading()
        if self.reached < self.expected:
            await self.wait(timeout)

    def reached_target(self) -> None:
        self.reached += 1
        if self.reached == self.expected:
            self.done.set()

    async def connect(self, count: int) -> None:
        loop = asyncio.get_running_loop()
        self.expected = count
        for start in range(0, count, CONNECT_BATCH):
            batch = [Conn(self) for _ in range(min(CONNECT_BATCH, count - start))]
            await asyncio.gather(*(loop.create_connection(lambda c=c: c, self.host, self.port)
                                   for c in batch))
            await asyncio.gather(*(c.opened for c in batch))
            self.conns += batch

    async def wait(self, timeout: float) -> None:
        """Until every connection has `target` frames, or none came for QUIET_S since the
        first one (a server still busy with earlier work may take long to start)."""
        deadline = time.monotonic() + timeout
        while not self.done.is_set() and time.monotonic() < deadline:
            seen = self.total
            try:
                await asyncio.wait_for(self.done.wait(), QUIET_S)
            except TimeoutError:
                if seen and self.total == seen:
                    return

    def report(self) -> dict[str, object]:
        counts = [c.frames for c in self.conns]
        return {"frames": self.total, "bytes": self.bytes, "last_ns": self.last_ns,
                "min_frames": min(counts), "max_frames": max(counts),
                "open": sum(1 for c in self.conns if c.close_code is None),
                "timed": sum(1 for c in self.conns if c.timed),
                "cpu_s": time.process_time(), "seqs": self.seqs, "times": self.times}


class Conn(asyncio.Protocol):
    """One WebSocket connection that counts data frames (and, when asked, records each
    frame's `seq` with its arrival time); answers pings."""

    def __init__(self, owner: Receiver) -> None:
        self.owner = owner
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.head = b""  # the handshake response, until complete
        self.rest = b""  # an incomplete frame carried to the next read
        self.frames = 0
        self.timed = False  # its frames' arrival times are recorded
        self.close_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        self.transport.write(
            f"GET /ws HTTP/1.1\r\nHost: {self.owner.host}:{self.owner.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = 1006
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc}"))

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(self.head[:200].decode()))
                return
            data, self.head = self.head[end + 4:], b""
            if self.owner.subscribe is not None:
                assert self.transport is not None
                self.transport.write(self.owner.subscribe)
            self.opened.set_result(None)
        owner = self.owner
        buf = self.rest + data if self.rest else data
        n = len(buf)
        i = count = 0
        latency = owner.latency and self.timed
        while i + 2 <= n:
            size = buf[i + 1]
            if size < 126:
                start = i + 2
            elif size == 126:
                if i + 4 > n:
                    break
                size = (buf[i + 2] << 8) | buf[i + 3]
                start = i + 4
            else:
                if i + 10 > n:
                    break
                size = int.from_bytes(buf[i + 2:i + 10], "big")
                start = i + 10
            end = start + size
            if end > n:
                break
            if buf[i] == 0x81:
                # `{"ch":"book"...`: the 8th byte tells book frames from heartbeats and replies.
                if size > 8 and buf[start + 7] == 0x62:
                    count += 1
                    if latency:
                        at = buf.find(b'"seq":', start, end) + 6
                        owner.seqs.append(int(buf[at:buf.find(b",", at, end)]))
            else:
                self.control(buf[i] & 0x0F, buf[start:end])
            i = end
        self.rest = buf[i:] if i < n else b""
        if count:
            now = time.monotonic_ns()
            if latency:
                owner.times.extend([now] * count)
            owner.total += count
            owner.bytes += len(data)
            owner.last_ns = now
            before = self.frames
            self.frames = before + count
            if before < owner.target <= self.frames:
                owner.reached_target()

    def control(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == 0x9:  # ping: pong with the same payload
            self.transport.write(masked(0x8A, payload))
        elif opcode == 0x8:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.transport.close()


def masked(first: int, payload: bytes) -> bytes:
    """A client frame (clients must mask, RFC 6455 §5.3); small payloads only."""
    assert len(payload) < 126
    mask = secrets.token_bytes(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((first, 0x80 | len(payload))) + mask + body


async def receive_main(args: argparse.Namespace) -> None:
    subscribe = None
    if args.subscribe:
        subscribe = masked(0x81, args.subscribe.encode())
    receiver = Receiver("127.0.0.1", args.port, subscribe)
    receiver.expected = args.connections
    receiver.target = args.initial
    await receiver.connect(args.connections)
    if args.initial:  # the snapshot
        await receiver.wait(60)
    print(json.dumps({"ready": len(receiver.conns)}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = json.loads(line)
        if command["op"] == "mark":
            receiver.mark(command["target"], command["sample"])
            reply: dict[str, object] = {"ok": True}
        elif command["op"] == "wait":
            await receiver.wait(command["timeout"])
            reply = receiver.report()
            await receiver.catch_up(command["timeout"])
        else:
            return
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


# ---- baseline mode: a minimal websockets broadcast() server ------------------------------


async def baseline_main(args: argparse.Namespace) -> None:
    """Every connection gets every update, sent with `websockets.broadcast()`."""
    import msgspec
    from redis.asyncio import Redis
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    from services.common.messages import md_decoder
    from services.common.pairs import load_markets

    pair = load_markets().pair(SYMBOL)
    connections: set[ServerConnection] = set()
    encode = msgspec.json.Encoder().encode

    async def handler(ws: ServerConnection) -> None:
        connections.add(ws)
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass  # receivers just drop their connections at the end
        finally:
            connections.discard(ws)

    host, port = args.redis_node.rsplit(":", 1)
    redis = Redis(host=host, port=int(port))
    pubsub = redis.pubsub()
    await pubsub.ssubscribe(BASELINE_CHANNEL)
    async with serve(handler, "127.0.0.1", args.port):
        print(json.dumps({"ready": True}), flush=True)
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message["type"] != "smessage":
                continue
            update = md_decoder.decode(message["data"])
            text = encode({
                "ch": "book", "symbol": SYMBOL, "type": "delta", "epoch": update.epoch,
                "seq": update.seq, "prev_seq": update.prev_seq, "ts": update.ts,
                "bids": [[pair.format_price(p), pair.format_qty(q)] for p, q in update.bids],
                "asks": [[pair.format_price(p), pair.format_qty(q)] for p, q in update.asks],
            }).decode()
            broadcast(connections, text)


# ---- the run ------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process speaking JSON lines."""

    name: str
    process: asyncio.subprocess.Process

    @classmethod
    async def start(cls, name: str, argv: list[str], env: dict[str, str] | None = None,
                    ready_timeout: float = 120.0) -> Proc:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=env, cwd=ROOT, limit=1 << 28)
        proc = cls(name, process)
        ready = await proc.read(ready_timeout)
        if "ready" not in ready:
            raise RuntimeError(f"{name}: {ready}")
        return proc

    async def read(self, timeout: float) -> dict:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"{self.name} exited with {await self.process.wait()}")
        return json.loads(line)

    async def ask(self, command: dict, timeout: float = 120.0) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        return await self.read(timeout)

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@dataclass
class Server:
    """A server under test, its receivers and how updates reach it."""

    name: str
    process: subprocess.Popen[bytes] | Proc
    channel: str
    receivers: list[Proc] = field(default_factory=list)

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.process.pid if isinstance(self.process, subprocess.Popen)
                               else self.process.process.pid).cpu_times()
        return times.user + times.system


class Publisher:
    """Publishes valid, continuing market-data updates of the pair, as its engine would:
    each changes the quantity of one of the top levels (bids and asks in turn)."""

    def __init__(self, nodes: dict[str, str], seq: int, epoch: str, bids: list[int],
                 asks: list[int]) -> None:
        from redis.asyncio import Redis

        # server -> a connection to the node that owns its channel's slot
        self.redis = {server: Redis(host=node.rsplit(":", 1)[0], port=int(node.rsplit(":", 1)[1]))
                      for server, node in nodes.items()}
        self.seq = {"gateway": seq, "baseline": 0}
        self.epoch = epoch
        self.levels = (bids[:3], asks[:3])
        self.sent_ns: dict[str, dict[int, int]] = {"gateway": {}, "baseline": {}}

    def update(self, server: str) -> bytes:
        from services.common.messages import MarketDataUpdate, encode

        seq = self.seq[server] = self.seq[server] + 1
        price = self.levels[seq % 2][seq // 2 % 3]
        level = [(price, 1000 + seq % 5000)]
        bids, asks = (level, []) if seq % 2 == 0 else ([], level)
        return encode(MarketDataUpdate(seq, seq - 1, int(time.time() * 1000), self.epoch,
                                       bids, asks, []))

    async def burst(self, server: Server, count: int) -> int:
        """`count` updates pipelined as fast as Redis takes them; the first one's time."""
        key = server.name
        payloads = [self.update(key) for _ in range(count)]
        start = time.monotonic_ns()
        for i in range(0, count, 500):
            pipe = self.redis[key].pipeline(transaction=False)
            for payload in payloads[i:i + 500]:
                pipe.spublish(server.channel, payload)
            await pipe.execute()
        return start

    async def paced(self, server: Server, rate: float, count: int) -> None:
        """`count` updates at `rate`/s, each one's publish time kept by seq."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = self.sent_ns[server.name]
        sent.clear()
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            payload = self.update(server.name)
            sent[self.seq[server.name]] = time.monotonic_ns()
            await self.redis[server.name].spublish(server.channel, payload)


async def seed_book(redis_url: str) -> tuple[int, str, list[int], list[int]]:
    """A resting book of the pair, matched and committed by the real engine: returns the
    md seq and epoch that published updates must continue, and the top prices."""
    from services.common.keys import PairKeys
    from services.common.messages import PlaceOrder, encode
    from services.common.pairs import load_markets
    from services.common.redis_conn import connect
    from services.engine.runner import Engine

    pair = load_markets().pair(SYMBOL)
    keys = PairKeys(SYMBOL)
    redis = await connect(redis_url)
    engine = Engine(redis, pair)
    await engine.recover()
    bids = [pair.price_to_ticks(f"{67000 - i}.00") for i in range(20)]
    asks = [pair.price_to_ticks(f"{67010 + i}.00") for i in range(20)]
    orders = [("buy", p) for p in bids] + [("sell", p) for p in asks]
    for i, (side, price) in enumerate(orders):
        command = PlaceOrder(order_id=f"seed{i}", account_id="bench", side=side, price=price,
                             qty=pair.qty_to_lots("0.2500"))
        await redis.xadd(keys.inbox, {"c": encode(command)})
    await engine.process_batch(await engine.read_batch())
    await redis.aclose()
    return engine.md_seq, engine.epoch, bids, asks


async def start_receivers(server: Server, port: int, connections: int, processes: int,
                          subscribe: str | None, initial: int) -> None:
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    argv = [sys.executable, str(Path(__file__).resolve()), "receive", "--port", str(port)]
    if subscribe:
        argv += ["--subscribe", subscribe, "--initial", str(initial)]
    server.receivers = list(await asyncio.gather(*(
        Proc.start(f"{server.name}-receiver{i}", [*argv, "--connections", str(share)])
        for i, share in enumerate(shares) if share)))


async def stop_receivers(server: Server) -> None:
    await asyncio.gather(*(r.stop() for r in server.receivers))
    server.receivers = []


async def measure_throughput(server: Server, publisher: Publisher, count: int,
                             connections: int) -> dict[str, float]:
    await asyncio.gather(*(r.ask({"op": "mark", "target": count, "sample": 0})
                           for r in server.receivers))
    cpu_server, cpu_receivers = server.cpu_s(), sum(r.cpu_s() for r in server.receivers)
    start = await publisher.burst(server, count)
    reports = await asyncio.gather(*(r.ask({"op": "wait", "timeout": 300}, 330)
                                     for r in server.receivers))
    frames = sum(r["frames"] for r in reports)
    elapsed = (max(r["last_ns"] for r in reports) - start) / 1e9
    cpu_server = server.cpu_s() - cpu_server
    cpu_receivers = sum(r.cpu_s() for r in server.receivers) - cpu_receivers
    return {
        "msgs_per_s": frames / elapsed, "seconds": elapsed,
        "complete": float(frames == count * connections),
        "delivered_share": frames / (count * connections),
        "frame_bytes": sum(r["bytes"] for r in reports) / max(1, frames),
        "server_cpu": cpu_server / elapsed, "receivers_cpu": cpu_receivers / elapsed,
        "open": sum(r["open"] for r in reports),
    }


async def measure_latency(server: Server, publisher: Publisher, seconds: float,
                          connections: int, sample: int) -> dict[str, float]:
    rate = LATENCY_DELIVERIES / connections
    count = max(10, int(rate * seconds))
    await asyncio.gather(*(r.ask({"op": "mark", "target": count, "sample": sample})
                           for r in server.receivers))
    await publisher.paced(server, rate, count)
    reports = await asyncio.gather(*(r.ask({"op": "wait", "timeout": 60}, 90)
                                     for r in server.receivers))
    sent = publisher.sent_ns[server.name]
    samples = [(t - sent[s]) / 1e6 for r in reports
               for s, t in zip(r["seqs"], r["times"], strict=True) if s in sent]
    if not samples:
        raise RuntimeError(f"{server.name}: no update reached the timed connections")
    return {"p50_ms": percentile(samples, 0.50), "p99_ms": percentile(samples, 0.99),
            "max_ms": max(samples), "samples": len(samples),
            "latency_complete": float(len(samples) == count * sum(r["timed"] for r in reports))}


async def run(args: argparse.Namespace) -> dict[str, object]:
    from redis.asyncio.cluster import RedisCluster

    from services.local.redis_cluster import ClusterSpec, LocalRedisCluster, free_ports

    root = Path(tempfile.mkdtemp(prefix="bench-ws-fanout-"))
    spec = ClusterSpec(root / "redis", tuple(free_ports(6)))
    gateway_port, baseline_port = free_ports(2)
    load_at_start = os.getloadavg()[0]
    figures: dict[str, object] = {}
    with LocalRedisCluster(spec) as cluster:
        cluster_client = RedisCluster.from_url(cluster.url)
        await cluster_client.initialize()
        seq, epoch, bids, asks = await seed_book(cluster.url)

        def node_of(channel: str) -> str:
            node = cluster_client.get_node_from_key(channel)
            return f"{node.host}:{node.port}"

        env = {**os.environ, "EXCHANGE_WS_MAX_CONNECTIONS": "100000"}
        gateway_log = (root / "gateway.log").open("wb")
        gateway_process = subprocess.Popen(
            [sys.executable, "-m", "services.gateway", "--port", str(gateway_port),
             "--redis-url", cluster.url], cwd=ROOT, env=env, stdout=gateway_log,
            stderr=subprocess.STDOUT)
        baseline_process = await Proc.start("baseline", [
            sys.executable, str(Path(__file__).resolve()), "baseline",
            "--port", str(baseline_port), "--redis-node", node_of(BASELINE_CHANNEL)])
        gateway = Server("gateway", gateway_process, f"{{{SYMBOL}}}:md")
        baseline = Server("baseline", baseline_process, BASELINE_CHANNEL)
        publisher = Publisher({"gateway": node_of(gateway.channel),
                               "baseline": node_of(BASELINE_CHANNEL)}, seq, epoch, bids, asks)
        subscribe = json.dumps({"op": "subscribe", "id": 1,
                                "args": [{"ch": "book", "symbol": SYMBOL, "depth": DEPTH}]})
        await wait_healthy(gateway_port)
        try:
            for connections in args.connections:
                per_run = max(50, args.deliveries // connections)
                # The gateway dropped the pair with its last watcher: the new ones make it
                # read the book afresh, at the seeded seq, which updates must continue.
                publisher.seq["gateway"] = seq
                await start_receivers(gateway, gateway_port, connections, args.receivers,
                                      subscribe, initial=1)  # the snapshot
                await start_receivers(baseline, baseline_port, connections, args.receivers,
                                      None, initial=0)
                results: dict[str, dict[str, list[float]]] = {"gateway": {}, "baseline": {}}
                for server in (gateway, baseline):  # warm-up: every connection gets one
                    await measure_throughput(server, publisher, 20, connections)
                for round_ in range(args.runs):
                    order = (gateway, baseline) if round_ % 2 == 0 else (baseline, gateway)
                    for server in order:
                        got = await measure_throughput(server, publisher, per_run, connections)
                        got |= await measure_latency(server, publisher, args.latency_seconds,
                                                     connections, args.latency_sample)
                        print(f"  {connections:>5} conns {server.name:>8} round {round_ + 1}: "
                              f"{got['msgs_per_s']:>9,.0f} msgs/s (delivered "
                              f"{got['delivered_share']:.1%}, server cpu "
                              f"{got['server_cpu']:.0%}, receivers cpu "
                              f"{got['receivers_cpu']:.0%}), p50 {got['p50_ms']:.2f} ms, "
                              f"p99 {got['p99_ms']:.2f} ms", flush=True)
                        for key, value in got.items():
                            results[server.name].setdefault(key, []).append(value)
                await stop_receivers(gateway)
                await stop_receivers(baseline)
                figures.update(summarise(connections, results, args.connections[0]))
        finally:
            await stop_receivers(gateway)
            await stop_receivers(baseline)
            await baseline_process.stop()
            gateway_process.terminate()
            try:
                gateway_process.wait(10)
            except subprocess.TimeoutExpired:
                gateway_process.kill()
            for redis in publisher.redis.values():
                await redis.aclose()
            await cluster_client.aclose()
    # A resync (gap, lost subscription) would mean snapshots were counted as deliveries.
    resyncs = (root / "gateway.log").read_text().count("resyncing")
    head = args.connections[0]
    figures_first = {
        "benchmark": "ws_fanout", "connections": head,
        "msgs_per_s": figures[f"msgs_per_s_{head}"], "p50_ms": figures[f"p50_ms_{head}"],
        "p99_ms": figures[f"p99_ms_{head}"],
        "baseline_msgs_per_s": figures[f"baseline_msgs_per_s_{head}"],
        "baseline_p50_ms": figures[f"baseline_p50_ms_{head}"],
        "baseline_p99_ms": figures[f"baseline_p99_ms_{head}"],
    }
    ratio = figures_first["msgs_per_s"] / figures_first["baseline_msgs_per_s"]
    meets = (figures_first["msgs_per_s"] >= GOAL_DELIVERIES_PER_S
             and ratio >= GOAL_BASELINE_RATIO and figures_first["p99_ms"] <= GOAL_P99_MS)
    return {**figures_first, "ratio_vs_baseline": round(ratio, 2), "meets_goal": meets,
            "goal": f">= {GOAL_DELIVERIES_PER_S:,} deliveries/s and >= "
                    f"{GOAL_BASELINE_RATIO:g}x baseline, p99 <= {GOAL_P99_MS:g} ms at "
                    f"{head} connections",
            **figures, "gateway_resyncs": resyncs, "runs": args.runs,
            "latency_deliveries_per_s": LATENCY_DELIVERIES,
            "latency_seconds": args.latency_seconds,
            "latency_sample_every": args.latency_sample, "depth": DEPTH,
            "receiver_processes": args.receivers, **machine(),
            "machine_load1_at_start": round(load_at_start, 2),
            "source_digest": source_digest("services/gateway/client.py",
                                           "services/gateway/frames.py",
                                           "services/gateway/feed.py",
                                           "services/gateway/server.py", "bench/ws_fanout.py"),
            "notes": "receivers are raw asyncio sockets parsing frame headers (no WebSocket "
                     "library) in separate processes; server_cpu/receivers_cpu are CPU "
                     "seconds per wall second over the throughput run (1.0 = one core); "
                     "the baseline gets the same updates on its own channel and sends one "
                     "JSON frame of the same shape per update with websockets.broadcast()"}


def summarise(connections: int, results: dict[str, dict[str, list[float]]],
              head: int) -> dict[str, object]:
    """Medians (and min/max of the throughput) of the rounds, keyed by connection count."""
    out: dict[str, object] = {}
    for name, prefix in (("gateway", ""), ("baseline", "baseline_")):
        r = results[name]
        rates = r["msgs_per_s"]
        out |= {
            f"{prefix}msgs_per_s_{connections}": round(median(rates)),
            f"{prefix}msgs_per_s_min_{connections}": round(min(rates)),
            f"{prefix}msgs_per_s_max_{connections}": round(max(rates)),
            f"{prefix}p50_ms_{connections}": round(median(r["p50_ms"]), 3),
            f"{prefix}p99_ms_{connections}": round(median(r["p99_ms"]), 3),
            f"{prefix}max_ms_{connections}": round(median(r["max_ms"]), 3),
            f"{prefix}delivered_share_{connections}": round(min(r["delivered_share"]), 4),
            f"{prefix}frame_bytes_{connections}": round(median(r["frame_bytes"]), 1),
            f"{prefix}server_cpu_{connections}": round(median(r["server_cpu"]), 2),
            f"{prefix}receivers_cpu_{connections}": round(median(r["receivers_cpu"]), 2),
        }
    return out


async def wait_healthy(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
            if answer.startswith(b"HTTP/1.1 200"):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway did not start")
        await asyncio.sleep(0.1)


def print_table(report: dict[str, object], counts: Sequence[int]) -> None:
    print(f"\n{'connections':>11} {'server':>9} {'msgs/s':>10} {'min':>10} {'max':>10} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'delivered':>9} {'srv cpu':>7} {'rcv cpu':>7}")
    for n in counts:
        for name, prefix in (("gateway", ""), ("baseline", "baseline_")):
            print(f"{n:>11} {name:>9} {report[f'{prefix}msgs_per_s_{n}']:>10,} "
                  f"{report[f'{prefix}msgs_per_s_min_{n}']:>10,} "
                  f"{report[f'{prefix}msgs_per_s_max_{n}']:>10,} "
                  f"{report[f'{prefix}p50_ms_{n}']:>7.2f} {report[f'{prefix}p99_ms_{n}']:>7.2f} "
                  f"{report[f'{prefix}delivered_share_{n}']:>9.1%} "
                  f"{report[f'{prefix}server_cpu_{n}']:>7.2f} "
                  f"{report[f'{prefix}receivers_cpu_{n}']:>7.2f}")
    print(f"\nat {report['connections']} connections: {report['ratio_vs_baseline']}x the "
          f"baseline; goal ({report['goal']}) met: {report['meets_goal']}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    receive = sub.add_parser("receive", help="(internal) hold connections and count frames")
    receive.add_argument("--port", type=int, required=True)
    receive.add_argument("--connections", type=int, required=True)
    receive.add_argument("--subscribe", default="")
    receive.add_argument("--initial", type=int, default=0)
    baseline = sub.add_parser("baseline", help="(internal) the websockets broadcast() server")
    baseline.add_argument("--port", type=int, required=True)
    baseline.add_argument("--redis-node", required=True)
    parser.add_argument("--connections", default="1000,5000",
                        help="connection counts, comma-separated; the first is the headline")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deliveries", type=int, default=2_000_000,
                        help="deliveries per throughput run (updates = this / connections)")
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--latency-sample", type=int, default=10,
                        help="latency is timed on every N-th connection (1: all)")
    parser.add_argument("--receivers", type=int, default=2, help="receiver processes")
    parser.add_argument("--quick", action="store_true", help="a smoke-sized run")
    args = parser.parse_args(argv)

    import uvloop

    if args.mode == "receive":
        uvloop.run(receive_main(args))
        return
    if args.mode == "baseline":
        uvloop.run(baseline_main(args))
        return
    args.connections = [int(n) for n in args.connections.split(",")]
    if args.quick:
        args.connections, args.runs = [200], 1
        args.deliveries, args.latency_seconds = 100_000, 1.0
    report = uvloop.run(run(args))
    print_table(report, args.connections)
    print(f"wrote {write_results('ws_fanout', report)}")


if __name__ == "__main__":
    main()
