"""Prometheus metrics: every name the services export, and how each service serves them.

Every service answers `GET /metrics` (Prometheus text): the API and the gateway on their
own port, the engine and settlement on `EXCHANGE_METRICS_PORT` (a small HTTP server
thread; 0 = none). Names follow Prometheus' conventions: an `exchange_` prefix, the base
unit in the name (`_seconds`, `_bytes`), `_total` on counters. The dashboards and alert
rules in observability/ use only these names (a test parses their PromQL and scrapes
every service of a running exchange). Each service also exports prometheus_client's
`process_*` figures (CPU, memory, open files).

Each metric's help text (below, or where it is collected) says what it counts. By service:

- api: exchange_http_requests_total{method,route,status},
  exchange_http_request_duration_seconds{method,route}, exchange_orders_accepted_total{pair},
  exchange_order_rejects_total{pair,reason,stage="api"}; and, read from Redis at each
  scrape (services/api/ops.py, the ops page's reading): exchange_engine_leader{pair},
  exchange_engine_input_backlog{pair}, exchange_settlement_backlog{pair},
  exchange_settlement_lag_seconds{pair}, exchange_redis_node_up{node,role},
  exchange_redis_slots{node}.
- engine: exchange_engine_leading{pair}, exchange_engine_commands_total{pair},
  exchange_engine_trades_total{pair}, exchange_engine_batch_size{pair},
  exchange_engine_commit_seconds{pair}, exchange_order_commit_latency_seconds{pair},
  exchange_engine_lease_takeovers_total{pair}, exchange_order_rejects_total{...,stage="engine"}.
- settlement: exchange_settlement_batches_total{pair}, exchange_settlement_legs_total{pair},
  exchange_settlement_seconds{pair}.
- gateway: exchange_ws_connections, exchange_ws_subscriptions, exchange_ws_pairs,
  exchange_ws_messages_out_total, exchange_ws_bytes_out_total,
  exchange_ws_slow_consumer_closes_total (read at scrape time: services/gateway/server.py),
  exchange_ws_resyncs_total{pair}, exchange_ws_delivery_latency_seconds{pair}.
- every service: exchange_redis_errors_total{error}.

Latencies that span services (accepted -> committed, accepted -> written) subtract
clocks of two machines: Redis's (the input entry's id) and the measuring process's. On
one machine or NTP-synchronised nodes that is good to about a millisecond.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

METRICS_PORT_ENV = "EXCHANGE_METRICS_PORT"
# No `_created` series: a second series per counter that no dashboard reads.
disable_created_metrics()
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what every Prometheus 2.x scrapes

# Sub-millisecond to seconds: the real-time path lives in the first buckets.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class BatchedHistogram(Collector):
    """A histogram that takes many equal observations in one call.

    prometheus_client's Histogram observes one value per call (a lock and a loop over
    the buckets: about a microsecond); per order at 100k orders/s that is a tenth of the
    engine. A batch's orders share a handful of distinct latencies (entry times are in
    milliseconds), so the engine counts them and observes each once with its count.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 buckets: Iterable[float], registry: CollectorRegistry | None = REGISTRY) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = tuple(buckets)
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()  # the scrape runs on another thread
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> _Series:
        series = self._series.get(values)
        if series is None:
            with self._lock:
                series = self._series.setdefault(values, _Series(self.bounds))
        return series

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation,
                                      labels=list(self.labelnames))]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation,
                                       labels=list(self.labelnames))
        with self._lock:
            series = list(self._series.items())
        for values, one in series:
            counts, total = list(one.counts), one.sum
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((_bound_text(bound), cumulative))
            family.add_metric(list(values), buckets, total)
        return [family]


class _Series:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        # Counts only grow, one int store each: a concurrent scrape reads a consistent
        # enough view (as prometheus_client's own does without a global lock).
        self.counts[bisect_left(self.bounds, value)] += count
        self.sum += value * count


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


# ---- the API ------------------------------------------------------------------------

HTTP_REQUESTS = Counter("exchange_http_requests", "HTTP requests answered by the API",
                        ["method", "route", "status"])
HTTP_DURATION = Histogram("exchange_http_request_duration_seconds",
                          "API request received -> response sent", ["method", "route"],
                          buckets=LATENCY_BUCKETS)
ORDERS_ACCEPTED = Counter("exchange_orders_accepted",
                          "Orders the API acknowledged (enqueued for the engine)", ["pair"])
ORDER_REJECTS = Counter("exchange_order_rejects",
                        "Orders refused, by reason: stage=api (error code) or engine (book)",
                        ["pair", "reason", "stage"])

# ---- the engine ---------------------------------------------------------------------

ENGINE_LEADING = Gauge("exchange_engine_leading",
                       "1 while this engine process holds its pair's lease (0: standby)",
                       ["pair"])
ENGINE_COMMANDS = Counter("exchange_engine_commands", "Commands committed by the engine",
                          ["pair"])
ENGINE_TRADES = Counter("exchange_engine_trades", "Trades committed by the engine", ["pair"])
ENGINE_BATCH_SIZE = Histogram("exchange_engine_batch_size", "Commands per committed batch",
                              ["pair"], buckets=BATCH_BUCKETS)
ENGINE_COMMIT = Histogram("exchange_engine_commit_seconds",
                          "The commit script's round trip, per batch", ["pair"],
                          buckets=LATENCY_BUCKETS)
ORDER_COMMIT_LATENCY = BatchedHistogram(
    "exchange_order_commit_latency_seconds",
    "Each command from its acceptance (its input entry's time) to its batch committed",
    ("pair",), LATENCY_BUCKETS)
LEASE_TAKEOVERS = Counter("exchange_engine_lease_takeovers",
                          "Times this engine process became its pair's writer", ["pair"])

# ---- settlement ---------------------------------------------------------------------

SETTLED_BATCHES = Counter("exchange_settlement_batches", "Event batches settled", ["pair"])
SETTLED_LEGS = Counter("exchange_settlement_legs", "Account legs applied", ["pair"])
SETTLE_SECONDS = Histogram("exchange_settlement_seconds",
                           "An event batch read -> every account settled and durable",
                           ["pair"], buckets=LATENCY_BUCKETS)

# ---- the gateway (event-driven; its state is read at scrape time: gateway/server.py) --

WS_RESYNCS = Counter("exchange_ws_resyncs", "Book resyncs after a gap in the pair's updates",
                     ["pair"])
WS_DELIVERY_LATENCY = Histogram(
    "exchange_ws_delivery_latency_seconds",
    "An update's newest order accepted -> the update's frames written to watchers",
    ["pair"], buckets=LATENCY_BUCKETS)

# ---- every service ------------------------------------------------------------------

REDIS_ERRORS = Counter("exchange_redis_errors", "Redis commands that failed (each retry counts)",
                       ["error"])
for _error in ("ConnectionError", "TimeoutError", "ClusterDownError"):
    REDIS_ERRORS.labels(_error)  # exported at 0 from the start, so rate() sees the first


class _Registry(Collector):
    """Another registry's metrics, as one collector of a new registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


def process_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry with the shared one's metrics and `collectors` (a service object's own,
    of which a test process may hold several)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Registry(REGISTRY))
    for collector in collectors:
        registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """Prometheus text of `registry`."""
    return generate_latest(registry)


def serve_metrics(port: int, registry: CollectorRegistry = REGISTRY,
                  host: str = "0.0.0.0") -> Callable[[], None] | None:
    """Serve `/metrics` on `port` from a thread (0: don't); returns a stopper."""
    if not port:
        return None
    server, thread = start_http_server(port, host, registry)
    assert isinstance(server, WSGIServer)

    def stop() -> None:
        server.shutdown()
        thread.join(timeout=5)

    return stop
