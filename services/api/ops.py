"""The operators' view: `GET /api/v1/ops/status` (operator token) and the `/ops` page.

Everything comes from Redis, where the services already keep their state, so the view
needs no service to be reachable but Redis itself and works the same with any number of
API replicas: per pair, the engine lease (leader, fencing token) and the standbys that
report in it, the last seq, the engine's input backlog and settlement's lag, commands/s
and the latest commit's latency; per gateway, what it reports in the gateway registry;
the Redis nodes and which master holds each pair's slot.

The parsing is pure (replies in, typed rows out); `read_status` does the I/O.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import RedisError

from services.api.auth import operator
from services.api.error_docs import RESPONSES_BY_TAG
from services.api.orders import OrderService
from services.common import keys
from services.common.metrics import CONTENT_TYPE, exposition, process_registry
from services.common.pairs import Markets
from services.common.redis_conn import AnyRedis

# Where gateways report their figures (a hash: gateway id -> JSON); see `gateway_rows`.
# It belongs in services.common.keys once the gateway writes it.
# A gateway reports every second; one silent for longer than this is shown as silent,
# and one silent for an hour is no longer listed (it was stopped or replaced).
GATEWAY_SILENT_MS = 5_000
GATEWAY_FORGOTTEN_MS = 3_600_000
RATE_WINDOW_MS = 10_000  # commands/s is averaged over about this long
STANDBY_FIELD = "standby:"  # lease hash fields of waiting engines: standby:<id> -> expiry ms

# One step on the pair's slot, no writes. KEYS: state, lease, inbox, events;
# ARGV: settlement group. Entry ids are returned as they are: their
# millisecond part is the Redis server's clock when the entry was added.
_PAIR_OPS_LUA = """#!lua flags=no-writes
local function group(stream, name)
  if redis.call('EXISTS', stream) == 0 then return nil end
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local f = {}
    for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
    if f['name'] == name then return f end
  end
  return nil
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'md_seq', 'event_seq', 'last_input_id', 'epoch', 'inputs')
-- Inputs the engine has committed since the pair began (its state counts them).
local inputs = s[5] or false
local last_commit = false
local newest = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
if #newest > 0 then last_commit = newest[1][1] end
-- The oldest event entry settlement has not acknowledged: delivered and pending, else
-- the first one it has not even read.
local oldest = false
local settle = group(KEYS[4], ARGV[1])
if settle then
  local pending = redis.call('XPENDING', KEYS[4], ARGV[1])
  if pending[1] > 0 then
    oldest = pending[2]
  else
    local unread = redis.call('XRANGE', KEYS[4], '(' .. settle['last-delivered-id'], '+',
                              'COUNT', 1)
    if #unread > 0 then oldest = unread[1][1] end
  end
end
return {now, s[1] or false, s[2] or false, s[3] or false, s[4] or false,
        redis.call('HGETALL', KEYS[2]), inputs, last_commit, oldest}
"""

OPS_PAGE = resources.files("services.api").joinpath("static", "ops.html")


# ---- what the endpoint answers ------------------------------------------------------


@dataclass(frozen=True)
class EngineLeader:
    holder: str  # host:pid of the engine process holding the pair's lease
    token: int  # fencing token: rises by one at every takeover
    lease_left_ms: int  # how long the lease runs unless renewed (renewed every second)


@dataclass(frozen=True)
class PairOps:
    symbol: str
    status: str  # trading | halted
    leader: EngineLeader | None  # None: no live lease (engine down, standby not yet in)
    standbys: list[str]  # engines waiting on the lease that report there (host:pid)
    seq: int  # market-data seq of the last commit (what WebSocket clients see)
    event_seq: int  # seq of the last engine event
    epoch: str
    engine_backlog: int  # commands waiting for the engine
    settlement_backlog: int  # committed batches waiting for settlement
    settlement_lag_ms: int  # age of the oldest batch settlement has not finished; 0 = none
    commands_committed: int | None  # commands the engine has committed since the pair began
    commands_per_s: float | None  # over the last ~10 s as this API has sampled it
    commit_latency_ms: int | None  # enqueue -> commit of the newest command of the last batch
    last_commit_age_ms: int | None
    md_subscribers: int  # gateway processes subscribed to the pair's market data
    slot: int
    redis_node: str  # host:port of the master serving the pair's slot


@dataclass(frozen=True)
class GatewayOps:
    gateway: str  # host:pid@port as the gateway reports itself
    connections: int
    subscriptions: int
    pairs: int  # pairs it subscribes to in Redis
    accounts: int  # logged-in accounts whose updates it subscribes to
    slow_consumer_closes: int  # connections closed 4008 since it started
    age_ms: int  # since its last report
    silent: bool  # no report for GATEWAY_SILENT_MS: stopped, killed or stuck


@dataclass(frozen=True)
class RedisNode:
    node: str  # host:port
    node_id: str
    role: str  # master | replica
    master: str | None  # host:port of its master, for a replica
    healthy: bool  # connected and not flagged failing
    flags: list[str]
    slots: list[list[int]]  # [first, last] ranges it serves (masters)
    pairs: list[str]  # pairs whose slot it serves


@dataclass(frozen=True)
class OpsStatus:
    ts: int  # Redis server time of the reading, Unix ms
    mode: str  # cluster | single
    pairs: list[PairOps]
    gateways: list[GatewayOps]
    redis_nodes: list[RedisNode]


# ---- pure parsing -------------------------------------------------------------------


def entry_ms(entry_id: bytes | str | None) -> int | None:
    """The millisecond part of a stream entry id (the server clock when it was added)."""
    if not entry_id:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def lease_view(flat: list[bytes], now_ms: int) -> tuple[EngineLeader | None, list[str]]:
    """The leader and the reporting standbys from the lease hash (HGETALL, flat): a
    leader only while its lease runs; a standby only while its own report runs."""
    fields = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
    expires = int(fields.get("expires", 0) or 0)
    leader = None
    if fields.get("holder") and expires > now_ms:
        leader = EngineLeader(fields["holder"], int(fields.get("token", 0) or 0),
                              expires - now_ms)
    standbys = sorted(name.removeprefix(STANDBY_FIELD) for name, until in fields.items()
                      if name.startswith(STANDBY_FIELD) and int(until or 0) > now_ms
                      and (leader is None or name.removeprefix(STANDBY_FIELD) != leader.holder))
    return leader, standbys


@dataclass
class RateMeter:
    """Commands/s per pair from successive readings of a running count (pure: the
    caller gives the times). Averaged over the readings of the last RATE_WINDOW_MS."""

    window_ms: int = RATE_WINDOW_MS
    _samples: dict[str, deque[tuple[int, int]]] = field(default_factory=dict)

    def rate(self, symbol: str, ts_ms: int, count: int | None) -> float | None:
        if count is None:
            return None
        samples = self._samples.setdefault(symbol, deque())
        if samples and (count < samples[-1][1] or ts_ms < samples[-1][0]):
            samples.clear()  # the pair started over (or the clock stepped back)
        samples.append((ts_ms, count))
        while len(samples) > 2 and ts_ms - samples[1][0] >= self.window_ms:
            samples.popleft()
        first_ts, first_count = samples[0]
        if ts_ms - first_ts < 1_000:
            return None  # too short to say
        return round((count - first_count) * 1000 / (ts_ms - first_ts), 1)


def cluster_nodes(parsed: Mapping[str, Mapping[str, Any]],
                  pair_slots: Mapping[str, int]) -> list[RedisNode]:
    """Rows of redis-py's parsed CLUSTER NODES (address -> details), masters first, each
    with the pairs whose slot it serves."""
    by_id = {str(d["node_id"]): address.partition("@")[0] for address, d in parsed.items()}
    rows = []
    for address, details in parsed.items():
        flags = str(details["flags"]).split(",")
        role = "master" if "master" in flags else "replica"
        ranges = [[int(r[0]), int(r[-1])] for r in details.get("slots", [])]
        served = sorted(symbol for symbol, slot in pair_slots.items()
                        if any(first <= slot <= last for first, last in ranges))
        master_id = str(details.get("master_id", "-"))
        rows.append(RedisNode(
            node=address.partition("@")[0], node_id=str(details["node_id"]), role=role,
            master=by_id.get(master_id) if role == "replica" else None,
            healthy=bool(details.get("connected", True)) and not {"fail", "fail?"} & set(flags)
            and "noaddr" not in flags,
            flags=[f for f in flags if f != "myself"], slots=ranges, pairs=served))
    rows.sort(key=lambda n: (n.role != "master", n.master or n.node, n.node))
    return rows


def gateway_rows(registry: Mapping[bytes, bytes], now_ms: int) -> list[GatewayOps]:
    """The gateway registry (id -> JSON report with `ts`), newest reports kept, sorted.

    A report: {"connections", "subscriptions", "pairs", "accounts",
    "slow_consumer_closes", "ts"}; an unreadable one is skipped, not fatal."""
    rows = []
    for raw_id, raw in registry.items():
        try:
            report = json.loads(raw)
            age = now_ms - int(report["ts"])
            row = GatewayOps(
                gateway=_text(raw_id), connections=int(report.get("connections", 0)),
                subscriptions=int(report.get("subscriptions", 0)),
                pairs=int(report.get("pairs", 0)), accounts=int(report.get("accounts", 0)),
                slow_consumer_closes=int(report.get("slow_consumer_closes", 0)),
                age_ms=max(0, age), silent=age > GATEWAY_SILENT_MS)
        except (ValueError, KeyError, TypeError):
            continue
        if age <= GATEWAY_FORGOTTEN_MS:
            rows.append(row)
    return sorted(rows, key=lambda g: (g.silent, g.gateway))


# ---- reading it ---------------------------------------------------------------------


def _int(raw: bytes | None) -> int:
    return int(raw) if raw else 0


async def _pair_ops(redis: AnyRedis, script: AsyncScript, orders: OrderService,
                    markets: Markets, symbol: str, rates: RateMeter,
                    node_of_slot: Mapping[int, str]) -> PairOps:
    k = keys.PairKeys(symbol)
    view, reply, subscribers = await asyncio.gather(
        orders.pair_view(markets.pair(symbol)),
        script(keys=[k.state, k.lease, k.inbox, k.events],
               args=[keys.SETTLEMENT_GROUP]),
        _md_subscribers(redis, k.md))
    now, md_seq, event_seq, last_input, epoch, lease, inputs, last_commit, oldest = reply
    leader, standbys = lease_view(lease, int(now))
    commit_ms, input_ms = entry_ms(last_commit), entry_ms(last_input)
    latency = commit_ms - input_ms if commit_ms and input_ms and commit_ms >= input_ms else None
    oldest_ms = entry_ms(oldest)
    slot = key_slot(k.state.encode())
    commands = int(inputs) if inputs is not None else None
    return PairOps(
        symbol=symbol, status="halted" if view.ref.halted else "trading", leader=leader,
        standbys=standbys, seq=_int(md_seq), event_seq=_int(event_seq),
        epoch=epoch.decode() if epoch else "", engine_backlog=view.engine_backlog,
        settlement_backlog=view.settlement_backlog,
        settlement_lag_ms=max(0, int(now) - oldest_ms) if oldest_ms else 0,
        commands_committed=commands, commands_per_s=rates.rate(symbol, int(now), commands),
        commit_latency_ms=latency,
        last_commit_age_ms=max(0, int(now) - commit_ms) if commit_ms else None,
        md_subscribers=subscribers,
        slot=slot, redis_node=node_of_slot.get(slot, ""))


async def _md_subscribers(redis: AnyRedis, channel: str) -> int:
    """Subscribers of a pair's sharded channel: one per gateway process watching the pair.
    On a cluster it is asked of the node serving the channel's slot."""
    if isinstance(redis, RedisCluster):
        reply = await redis.execute_command("PUBSUB SHARDNUMSUB", channel,
                                            target_nodes=redis.get_node_from_key(channel))
    else:
        reply = await redis.pubsub_shardnumsub(channel)
    return int(dict(reply).get(channel.encode(), 0))


async def _redis_nodes(redis: AnyRedis, pair_slots: Mapping[str, int]) -> list[RedisNode]:
    if isinstance(redis, RedisCluster):
        return cluster_nodes(await redis.cluster_nodes(), pair_slots)
    info = await redis.info("replication")
    pool = redis.connection_pool.connection_kwargs
    node = f"{pool.get('host', '?')}:{pool.get('port', '?')}"
    role = "replica" if info.get("role") == "slave" else "master"
    return [RedisNode(node=node, node_id="", role=role, master=None, healthy=True, flags=[],
                      slots=[[0, 16383]], pairs=sorted(pair_slots))]


async def read_status(redis: AnyRedis, markets: Markets, orders: OrderService,
                      script: AsyncScript, rates: RateMeter) -> OpsStatus:
    """One reading of everything the ops page shows."""
    pair_slots = {symbol: key_slot(keys.PairKeys(symbol).state.encode())
                  for symbol in markets.pairs}
    nodes = await _redis_nodes(redis, pair_slots)
    node_of_slot = {slot: n.node for n in nodes if n.role == "master"
                    for slot in pair_slots.values()
                    if any(first <= slot <= last for first, last in n.slots)}
    pairs = await asyncio.gather(*(
        _pair_ops(redis, script, orders, markets, symbol, rates, node_of_slot)
        for symbol in markets.pairs))
    now_ms = await _server_ms(redis)
    registry = await redis.hgetall(keys.GATEWAY_REGISTRY)
    mode = "cluster" if isinstance(redis, RedisCluster) else "single"
    return OpsStatus(ts=now_ms, mode=mode,
                     pairs=list(pairs), gateways=gateway_rows(registry, now_ms),
                     redis_nodes=nodes)


async def _server_ms(redis: AnyRedis) -> int:
    if isinstance(redis, RedisCluster):
        seconds, micros = await redis.time(target_nodes=RedisCluster.RANDOM)
    else:
        seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000


class _StatusCollector(Collector):
    """Exports one OpsStatus reading as gauges (the names: services.common.metrics)."""

    def __init__(self, status: OpsStatus | None) -> None:
        self.status = status

    def collect(self) -> Iterable[Metric]:
        return status_metrics(self.status) if self.status is not None else []


def status_metrics(status: OpsStatus) -> list[Metric]:
    """The pair and Redis gauges of one status reading."""
    leader = GaugeMetricFamily("exchange_engine_leader",
                               "1 while some engine holds the pair's lease", labels=["pair"])
    backlog = GaugeMetricFamily("exchange_engine_input_backlog",
                                "Commands enqueued and not yet committed", labels=["pair"])
    settle_backlog = GaugeMetricFamily("exchange_settlement_backlog",
                                       "Committed event batches not yet settled",
                                       labels=["pair"])
    lag = GaugeMetricFamily("exchange_settlement_lag_seconds",
                            "Age of the oldest batch not yet settled (0: none)",
                            labels=["pair"])
    for pair in status.pairs:
        leader.add_metric([pair.symbol], 1 if pair.leader else 0)
        backlog.add_metric([pair.symbol], pair.engine_backlog)
        settle_backlog.add_metric([pair.symbol], pair.settlement_backlog)
        lag.add_metric([pair.symbol], pair.settlement_lag_ms / 1000)
    node_up = GaugeMetricFamily("exchange_redis_node_up",
                                "1 if the node answers and is not flagged failing",
                                labels=["node", "role"])
    slots = GaugeMetricFamily("exchange_redis_slots", "Hash slots a master serves",
                              labels=["node"])
    for node in status.redis_nodes:
        node_up.add_metric([node.node, node.role], 1 if node.healthy else 0)
        if node.role == "master":
            slots.add_metric([node.node], sum(last - first + 1 for first, last in node.slots))
    return [leader, backlog, settle_backlog, lag, node_up, slots]


def ops_router() -> APIRouter:
    """The status endpoint (operator token) and the page that shows it."""
    router = APIRouter()
    rates = RateMeter()

    # Its error responses are named here: the app's document_errors() sees only its own
    # routes, not those of an included router.
    @router.get("/api/v1/ops/status", tags=["operator"], dependencies=[Depends(operator)],
                responses=RESPONSES_BY_TAG["operator"])
    async def ops_status(request: Request) -> OpsStatus:
        """Per pair: engine leader and standbys, seq, backlogs, settlement lag,
        commands/s, commit latency, the Redis node serving it; per gateway: connections,
        subscriptions, slow-consumer closes; the Redis nodes. Read from Redis."""
        state = request.app.state
        script = state.redis.register_script(_PAIR_OPS_LUA)  # no I/O: a name for the text
        return await read_status(state.redis, state.markets, state.orders, script, rates)

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus text: this process's metrics, and each pair's and Redis node's
        health as read from Redis now (the same reading as the status above)."""
        state = request.app.state
        script = state.redis.register_script(_PAIR_OPS_LUA)
        try:
            status = await read_status(state.redis, state.markets, state.orders, script,
                                       rates)
        except (RedisError, OSError):
            status = None  # Redis down: the process's own figures still answer
        return Response(exposition(process_registry(_StatusCollector(status))),
                        media_type=CONTENT_TYPE)

    @router.get("/ops", include_in_schema=False)
    async def ops_page() -> FileResponse:
        return FileResponse(str(OPS_PAGE))

    return router
