"""The WebSocket gateway: public market data over `/ws` (API.md), fed by Redis pub/sub.

HTTP: `/ws` upgrades to WebSocket (HTTP 503 when the process is at `max_connections`),
`/healthz` answers 200 "ok", `/metrics` Prometheus text, anything else 404. Client ops:
`subscribe` / `unsubscribe` with `{"ch":"book","symbol":S,"depth":10|50|200}` (depth
defaults to 50),
`{"ch":"trades","symbol":S}`, `{"ch":"candles","symbol":S,"interval":I}` or
`{"ch":"ticker","symbol":S}`, `ping`, `login` (HMAC, see login.py) and, once logged in,
the account's `{"ch":"orders"}`, `{"ch":"fills"}` and `{"ch":"balances"}` (see
account_feed.py; before login: LOGIN_REQUIRED). Each op gets `{"op","id","ok":true}` or
`ok:false` with `{"error":{"code","message"}}`. Limits and their codes: frames over
64 KiB -> close 1009; more than 200 subscriptions -> error TOO_MANY_SUBSCRIPTIONS; over 10
frames/s (burst 20) -> error RATE_LIMITED per refused frame, and close 4029 "too many
requests" past 50 of them; over 256 KiB of unsent frames -> book deltas conflated; over
1 MiB -> close 4008 "slow consumer"; no subscription 5 s after connecting -> close 4001
"no subscription". On shutdown every client gets
`{"ch":"system","type":"reconnect","reason":"server_shutdown"}`, then close 1001.

Writes: see client.py (frames framed once, one write per connection per loop pass).

Run: `python -m services.gateway --port P [--host H] [--reuse-port] [--redis-url URL]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from http import HTTPStatus

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.common import keys
from services.common.api_keys import ApiKeyStore
from services.common.errors import ExchangeError
from services.common.metrics import CONTENT_TYPE, exposition, process_registry, serve_metrics
from services.common.pairs import load_markets
from services.common.process import run_service
from services.common.redis_conn import AnyRedis, connect
from services.common.secrets_box import SECRETS_KEY_ENV, SecretBox
from services.gateway import frames
from services.gateway.client import SHUTDOWN_CLOSE, Client, Outbox
from services.gateway.hub import MarketHub
from services.gateway.login import LoginVerifier
from services.gateway.protocol import FrameRateLimit, RequestError, parse_request
from services.gateway.protocol import Request as ClientRequest
from services.gateway.settings import GatewaySettings
from services.gateway.subscriber import ShardedSubscriber

__all__ = ["Gateway", "GatewaySettings", "GatewayStatus", "main", "serve_gateway"]

log = logging.getLogger("exchange.gateway")

WS_PATH = "/ws"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
TOO_MANY_REQUESTS = (4029, "too many requests")
NO_SUBSCRIPTION = (4001, "no subscription")
REPORT_EVERY_S = 1.0  # status reports to the gateway registry


@dataclass(frozen=True)
class GatewayStatus:
    """A point-in-time view for metrics."""

    connections: int
    pairs: int  # pairs subscribed in Redis
    subscriptions: int  # client subscriptions across all pairs and accounts
    accounts: int = 0  # accounts whose private updates are subscribed in Redis
    slow_consumer_closes: int = 0  # connections closed 4008 since it started


class _GatewayCollector(Collector):
    """The gateway's state at each scrape. Read on the gateway's event loop: a scrape
    from the metrics port's thread must not walk the watchers while the loop changes
    them."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.loop: asyncio.AbstractEventLoop | None = None  # the gateway's, once started
        self.loop_thread = 0

    def started(self) -> None:
        self.loop, self.loop_thread = asyncio.get_running_loop(), threading.get_ident()

    def collect(self) -> Iterable[Metric]:
        if self.loop is None or threading.get_ident() == self.loop_thread:
            return self._families()
        return asyncio.run_coroutine_threadsafe(self._read(), self.loop).result(timeout=5)

    async def _read(self) -> list[Metric]:
        return self._families()

    def _families(self) -> list[Metric]:
        status = self.gateway.status()
        outbox = self.gateway._outbox
        frames_out, bytes_out = (outbox.frames_out, outbox.bytes_out) if outbox else (0, 0)
        return [
            GaugeMetricFamily("exchange_ws_connections", "Open WebSocket connections",
                              status.connections),
            GaugeMetricFamily("exchange_ws_subscriptions",
                              "Client subscriptions, across pairs and accounts",
                              status.subscriptions),
            GaugeMetricFamily("exchange_ws_pairs", "Pairs subscribed in Redis", status.pairs),
            CounterMetricFamily("exchange_ws_messages_out", "Frames written to clients",
                                frames_out),
            CounterMetricFamily("exchange_ws_bytes_out", "Bytes written to clients",
                                bytes_out),
            CounterMetricFamily("exchange_ws_slow_consumer_closes",
                                "Connections closed 4008 (slow consumer)",
                                status.slow_consumer_closes),
        ]


class Gateway:
    """One gateway process's server. `start()`, then `aclose()` (graceful)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.markets = load_markets(settings.pairs_file)
        self.redis: AnyRedis | None = None
        self.subscriber: ShardedSubscriber | None = None
        self.hub: MarketHub | None = None
        self.login: LoginVerifier | None = None
        self._server: Server | None = None
        self._clients: set[Client] = set()
        self._outbox: Outbox | None = None
        self._shutting_down = False
        self._drained = asyncio.Event()
        self._reporter: asyncio.Task[None] | None = None
        self._report_id = ""
        # This gateway's state, read at each scrape: nothing to keep up to date.
        self._collector = _GatewayCollector(self)
        self.metrics = process_registry(self._collector)
        self._rate_limited = frames.reply(None, None, ExchangeError(
            "RATE_LIMITED", f"more than {settings.frames_per_s:g} frames per second (burst "
            f"{settings.frames_burst}): frame ignored"))

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None, "not started"
        return self._server.sockets[0].getsockname()[1]

    def status(self) -> GatewayStatus:
        hub = self.hub
        return GatewayStatus(connections=len(self._clients),
                             pairs=len(hub.feeds) if hub else 0,
                             subscriptions=hub.subscriptions if hub else 0,
                             accounts=len(hub.accounts) if hub else 0,
                             slow_consumer_closes=self._outbox.slow_closes if self._outbox else 0)

    async def start(self) -> None:
        """Connect to Redis and start listening."""
        box = self._secret_box()  # a bad key fails here, before anything is opened
        self._collector.started()
        self.redis = await connect(self.settings.redis_url)
        self.subscriber = ShardedSubscriber(self.redis)
        self.hub = MarketHub(self.redis, self.subscriber, self.markets)
        self.login = LoginVerifier(
            ApiKeyStore(self.redis, box) if box is not None else None)
        self._outbox = Outbox(self._clients, self.settings.heartbeat_s)
        self._outbox.start()
        self._server = await serve(
            self._handle, self.settings.host, self.settings.port,
            process_request=self._route,
            max_size=self.settings.max_frame_bytes,
            # permessage-deflate compresses per connection: it would undo encode-once
            # fan-out and cost more CPU than the whole rest of the path.
            compression=None,
            reuse_port=self.settings.reuse_port,
        )
        self._report_id = f"{socket.gethostname()}:{os.getpid()}@{self.port}"
        self._reporter = asyncio.create_task(self._report_status())
        log.info("gateway listening on %s:%d%s", self.settings.host, self.port, WS_PATH)

    async def _report_status(self) -> None:
        """Once a second, what the ops page shows of this gateway, in the registry."""
        assert self.redis is not None
        while True:
            report = {**asdict(self.status()), "ts": int(time.time() * 1000)}
            try:
                await self.redis.hset(keys.GATEWAY_REGISTRY, self._report_id,
                                      json.dumps(report))
            except (RedisError, OSError) as exc:  # the next report will do
                log.debug("status not reported: %s", exc)
            await asyncio.sleep(REPORT_EVERY_S)

    async def aclose(self) -> None:
        """Tell every client to reconnect, give them `shutdown_grace_s` to go, then close
        the rest, the subscriptions and the Redis connections."""
        self._shutting_down = True
        if self._reporter is not None:
            self._reporter.cancel()
            try:
                assert self.redis is not None
                await self.redis.hdel(keys.GATEWAY_REGISTRY, self._report_id)
            except (RedisError, OSError) as exc:
                log.warning("report not withdrawn: %s", exc)
        for client in list(self._clients):
            client.close_after(frames.SHUTDOWN, *SHUTDOWN_CLOSE)
        if self._clients:
            try:
                async with asyncio.timeout(self.settings.shutdown_grace_s):
                    await self._drained.wait()
            except TimeoutError:
                log.warning("%d clients still connected at shutdown", len(self._clients))
        if self._server is not None:
            self._server.close(code=SHUTDOWN_CLOSE[0], reason=SHUTDOWN_CLOSE[1])
            await self._server.wait_closed()
        if self._outbox is not None:
            self._outbox.stop()
        if self.hub is not None:
            await self.hub.aclose()
        if self.subscriber is not None:
            await self.subscriber.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        log.info("gateway stopped")

    def _secret_box(self) -> SecretBox | None:
        """The box that opens API secrets, for logins; None (logged) if not configured."""
        key = self.settings.secrets_key or os.environ.get(SECRETS_KEY_ENV, "")
        if not key:
            log.warning("%s is not set: login (private channels) is unavailable",
                        SECRETS_KEY_ENV)
            return None
        return SecretBox(key)  # ValueError if it is not a valid key

    # ---- HTTP routing -------------------------------------------------------------------

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == WS_PATH:
            if len(self._clients) >= self.settings.max_connections:
                # Refused before the upgrade, so it costs no connection state; a reconnect
                # storm backs off (or goes to another replica) on Retry-After.
                response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                              "too many connections\n")
                response.headers["Retry-After"] = "1"
                return response
            return None  # go on with the WebSocket handshake
        if path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "ok")
        if path == METRICS_PATH:
            body = exposition(self.metrics)
            response = replace(connection.respond(HTTPStatus.OK, ""), body=body)
            response.headers["Content-Type"] = CONTENT_TYPE
            response.headers["Content-Length"] = str(len(body))
            return response
        return connection.respond(HTTPStatus.NOT_FOUND, "not found")

    # ---- one connection -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        settings = self.settings
        assert self._outbox is not None
        client = Client(ws, self._outbox, max_pending=settings.max_pending_bytes,
                        conflate_at=settings.conflate_bytes)
        limit = FrameRateLimit(settings.frames_per_s, settings.frames_burst,
                               settings.max_excess_frames, time.monotonic())
        self._clients.add(client)
        # An idle connection holds a slot (and a file descriptor) that a watcher could use.
        deadline = asyncio.get_running_loop().call_later(
            settings.subscribe_timeout_s, self._require_subscription, client)
        if self._shutting_down:
            client.close_after(frames.SHUTDOWN, *SHUTDOWN_CLOSE)
        try:
            async for frame in ws:
                if client.closing:
                    continue  # read on: the peer's close frame completes the handshake
                verdict = limit.check(time.monotonic())
                if verdict == "ok":
                    await self._on_frame(client, frame)
                elif verdict == "refused":
                    client.send(self._rate_limited)  # not even parsed
                else:
                    log.info("closing flooding client %s", ws.remote_address)
                    client.close(*TOO_MANY_REQUESTS)
        except ConnectionClosed:
            pass  # 1009 (frame too big), network errors: the client is gone either way
        finally:
            deadline.cancel()
            self._clients.discard(client)
            client.detach()
            assert self.hub is not None
            await self.hub.drop(client)
            if self._shutting_down and not self._clients:
                self._drained.set()

    def _require_subscription(self, client: Client) -> None:
        if not client.subs and not client.closing:
            log.info("closing %s: no subscription %gs after connecting",
                     client.ws.remote_address, self.settings.subscribe_timeout_s)
            client.close(*NO_SUBSCRIPTION)

    async def _on_frame(self, client: Client, frame: str | bytes) -> None:
        try:
            request = parse_request(frame, self.markets)
        except RequestError as exc:
            client.send(frames.reply(exc.op, exc.request_id, exc))
            return
        if request.op == "subscribe":
            self._subscribe(client, request)
        elif request.op == "unsubscribe":
            assert self.hub is not None
            for topic in request.topics:
                await self.hub.unwatch(client, topic.key)
            # After this reply the client gets no more frames of these topics.
            client.send(frames.reply(request.op, request.id))
        elif request.op == "login":
            await self._login(client, request)
        else:
            client.send(frames.reply(request.op, request.id))

    async def _login(self, client: Client, request: ClientRequest) -> None:
        """Bind the connection to the account the credentials prove (once: a session
        never changes account)."""
        assert self.login is not None and request.credentials is not None
        try:
            account_id = await self.login.verify(request.credentials, client.account_id)
        except ExchangeError as exc:
            client.send(frames.reply(request.op, request.id, exc))
            return
        client.account_id = account_id
        client.send(frames.reply(request.op, request.id))

    def _subscribe(self, client: Client, request: ClientRequest) -> None:
        assert self.hub is not None
        if client.account_id is None and any(topic.private for topic in request.topics):
            error = ExchangeError("LOGIN_REQUIRED", "orders, fills and balances need a login")
            client.send(frames.reply(request.op, request.id, error))
            return
        added = sum(1 for topic in request.topics if topic.key not in client.subs)
        limit = self.settings.max_subscriptions
        if len(client.subs) + added > limit:
            error = ExchangeError("TOO_MANY_SUBSCRIPTIONS",
                                  f"at most {limit} subscriptions per connection")
            client.send(frames.reply(request.op, request.id, error))
            return
        # The reply goes first, so it precedes the snapshots the watches may send at once.
        client.send(frames.reply(request.op, request.id))
        for topic in request.topics:
            self.hub.watch(client, topic)


async def serve_gateway(settings: GatewaySettings, ready: asyncio.Event | None = None,
                        stop: asyncio.Event | None = None, metrics_port: int = 0) -> None:
    """Run a gateway until `stop` is set or this task is cancelled, then shut it down
    gracefully. `ready` is set once it listens. `metrics_port`: also serve /metrics there."""
    gateway = Gateway(settings)
    await gateway.start()
    # Replicas sharing a port (SO_REUSEPORT) are scraped each on a port of its own.
    stop_metrics = serve_metrics(metrics_port, gateway.metrics)
    try:
        if ready is not None:
            ready.set()
        if stop is None:
            await asyncio.Future()  # until cancelled
        else:
            await stop.wait()
    finally:
        if stop_metrics:
            stop_metrics()
        await gateway.aclose()


def _parse_args(argv: Sequence[str] | None) -> tuple[GatewaySettings, int]:
    env = GatewaySettings.from_env()
    parser = argparse.ArgumentParser(prog="python -m services.gateway",
                                     description="The exchange's WebSocket market-data gateway.")
    parser.add_argument("--host", default=env.host, help=f"listen address (default {env.host})")
    parser.add_argument("--port", type=int, default=env.port,
                        help=f"listen port (default {env.port})")
    parser.add_argument("--reuse-port", action="store_true", default=env.reuse_port,
                        help="SO_REUSEPORT: several gateway processes share the port")
    parser.add_argument("--redis-url", default=env.redis_url,
                        help=f"a node of the Redis Cluster, or one Redis (default {env.redis_url})")
    parser.add_argument("--pairs-file", default=env.pairs_file, help="pairs TOML file")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="also serve /metrics on this port (replicas sharing --port)")
    args = parser.parse_args(argv)
    return replace(env, host=args.host, port=args.port, reuse_port=args.reuse_port,
                   redis_url=args.redis_url, pairs_file=args.pairs_file), args.metrics_port


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; SIGINT/SIGTERM stop it cleanly. Returns the exit code."""
    settings, metrics_port = _parse_args(argv)

    async def body(stop: asyncio.Event) -> None:
        await serve_gateway(settings, stop=stop, metrics_port=metrics_port)

    try:
        return run_service("gateway", body)
    except (OSError, RedisError, ExchangeError, ValueError) as exc:
        log.error("gateway failed: %s", exc)
        return 1
