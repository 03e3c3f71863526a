"""The exchange's Grafana dashboards, as code (Grafana's own grafana-foundation-sdk).

`python observability/dashboards.py` rewrites observability/dashboards/*.json, the files
Grafana loads (the Helm chart ships them as ConfigMaps for Grafana's dashboard sidecar);
`--check` only says whether they are up to date. A test checks that the committed JSON is
what this module makes, so edit this file, never the JSON.

Queries use only the metric names the services export (services/common/metrics.py) and
the scrape jobs exchange-api, exchange-engine, exchange-settlement and exchange-gateway.
Pair and Redis health is read from Redis by every API replica at scrape time, so it comes
once per replica: the queries fold it with `max by`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
TAG = "exchange"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"  # Grafana's: at least four scrape intervals
PAIR = 'pair="$pair"'
SERVICES = 'job=~"exchange-.*"'
SERVER_ERRORS = 'status=~"5.."'
ALL_SLOTS = 16384

Panel = timeseries.Panel | stat.Panel | bargauge.Panel | statetimeline.Panel
Query = tuple[str, str]  # (PromQL, legend)


# ---- query helpers -----------------------------------------------------------------------

def rate(metric: str, selector: str = "") -> str:
    return f"rate({metric}{{{selector}}}[{RATE}])" if selector else f"rate({metric}[{RATE}])"


def quantile(q: float, histogram: str, by: Iterable[str] = (), selector: str = "") -> str:
    """The q-quantile of a histogram's observations over the rate window, per `by`."""
    labels = ", ".join([*by, "le"])
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(histogram + '_bucket', selector)}))"


def mean(histogram: str, selector: str = "") -> str:
    return (f"sum({rate(histogram + '_sum', selector)})"
            f" / sum({rate(histogram + '_count', selector)})")


# ---- panel helpers -----------------------------------------------------------------------

def _targets(queries: Iterable[Query]) -> list[prometheus.Dataquery]:
    return [prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
            .datasource(DATASOURCE) for i, (expr, legend) in enumerate(queries)]


def _steps(*steps: tuple[float | None, str]) -> builders.ThresholdsConfig:
    return (builders.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=value, color=color) for value, color in steps]))


def graph(title: str, description: str, unit: str, *queries: Query, width: int = 12,
          height: int = 8, stacked: bool = False, minimum: float | None = 0) -> timeseries.Panel:
    """A time series panel, one line per query result."""
    panel = (timeseries.Panel().title(title).description(description).unit(unit)
             .datasource(DATASOURCE).targets(_targets(queries)).span(width).height(height)
             .fill_opacity(10 if not stacked else 40).line_width(1)
             .legend(common_builders.VizLegendOptions().show_legend(True)
                     .display_mode(common.LegendDisplayMode.LIST)
                     .placement(common.LegendPlacement.BOTTOM))
             .tooltip(common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                      .sort(common.SortOrder.DESCENDING)))
    if minimum is not None:
        panel = panel.min(minimum)
    if stacked:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    return panel


def single(title: str, description: str, unit: str, expr: str,
           steps: tuple[tuple[float | None, str], ...] = ((None, "green"),),
           mappings: list[model.ValueMapping] | None = None, width: int = 4,
           height: int = 4) -> stat.Panel:
    """One number, coloured by `steps` (value from which each colour applies)."""
    panel = (stat.Panel().title(title).description(description).unit(unit)
             .datasource(DATASOURCE).targets(_targets([(expr, "")])).span(width).height(height)
             .thresholds(_steps(*steps)).color_mode(common.BigValueColorMode.BACKGROUND)
             .graph_mode(common.BigValueGraphMode.NONE)
             .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"])
                             .values(False)))
    if mappings:
        panel = panel.mappings(mappings)
    return panel


def text_for(values: dict[str, tuple[str, str]]) -> list[model.ValueMapping]:
    """Value mappings: raw value -> (text, colour)."""
    return [model.ValueMap(options={
        value: model.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, (text, color)) in enumerate(values.items())})]


ZERO_IS_GOOD = ((None, "green"), (1, "red"))


# ---- dashboards --------------------------------------------------------------------------

def _dashboard(uid: str, title: str, description: str,
               variables: Iterable[builders.QueryVariable] = ()) -> builders.Dashboard:
    board = (builders.Dashboard(title).uid(uid).description(description).tags([TAG])
             .refresh("30s").time("now-1h", "now").timezone(common.TimeZoneBrowser)
             .tooltip(model.DashboardCursorSync.CROSSHAIR)
             .link(builders.DashboardLink("Exchange").type(model.DashboardLinkType.DASHBOARDS)
                   .tags([TAG]).as_dropdown(True).include_vars(True).keep_time(True))
             .with_variable(builders.DatasourceVariable("datasource").label("Data source")
                            .type("prometheus")))
    for variable in variables:
        board = board.with_variable(variable)
    return board


def _layout(board: builders.Dashboard,
            rows: Iterable[tuple[str, Iterable[Panel]]]) -> model.Dashboard:
    for title, panels in rows:
        board = board.with_row(builders.Row(title))
        for panel in panels:
            board = board.with_panel(panel)
    built = board.build()
    # Stable ids (Grafana links and the JSON diff depend on them), in reading order.
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    return built


def overview() -> model.Dashboard:
    board = _dashboard("exchange-overview", "Exchange / Overview",
                       "Every pair, service and Redis node at a glance.")
    return _layout(board, [
        ("Health", [
            single("Pairs without a leader",
                   "Pairs whose lease no engine holds: their orders queue unmatched.", "none",
                   "count(max by (pair) (exchange_engine_leader) == 0) or vector(0)",
                   ZERO_IS_GOOD),
            single("Targets down", "Service processes Prometheus cannot scrape.", "none",
                   f"count(up{{{SERVICES}}} == 0) or vector(0)", ZERO_IS_GOOD),
            single("Redis nodes down", "Redis nodes not answering or flagged failing.", "none",
                   "count(max by (node) (exchange_redis_node_up) == 0) or vector(0)",
                   ZERO_IS_GOOD),
            single("Orders / s", "Orders the API accepted, all pairs.", "reqps",
                   f"sum({rate('exchange_orders_accepted_total')})"),
            single("Accept -> commit p99", "All pairs, over the rate window.", "s",
                   quantile(0.99, "exchange_order_commit_latency_seconds"),
                   ((None, "green"), (0.05, "orange"), (0.1, "red"))),
            single("WebSocket connections", "Open connections on every gateway.", "none",
                   "sum(exchange_ws_connections)"),
        ]),
        ("Orders", [
            graph("Orders accepted / s", "Orders the API acknowledged, by pair.", "reqps",
                  (f"sum by (pair) ({rate('exchange_orders_accepted_total')})", "{{pair}}"),
                  stacked=True),
            graph("Trades / s", "Trades the engines committed, by pair.", "ops",
                  (f"sum by (pair) ({rate('exchange_engine_trades_total')})", "{{pair}}"),
                  stacked=True),
            graph("Rejects / s by reason",
                  "Orders refused: stage api (an error code) or engine (the book's reason).",
                  "reqps",
                  (f"sum by (stage, reason) ({rate('exchange_order_rejects_total')})",
                   "{{stage}}: {{reason}}")),
            graph("Accept -> commit latency",
                  "Each command from its input entry to its batch committed, all pairs.", "s",
                  (quantile(0.5, "exchange_order_commit_latency_seconds"), "p50"),
                  (quantile(0.99, "exchange_order_commit_latency_seconds"), "p99")),
        ]),
        ("Backlogs", [
            graph("Engine input backlog", "Commands enqueued and not yet committed.", "none",
                  ("max by (pair) (exchange_engine_input_backlog)", "{{pair}}")),
            graph("Settlement lag", "Age of the oldest committed batch not yet settled.", "s",
                  ("max by (pair) (exchange_settlement_lag_seconds)", "{{pair}}")),
            graph("Settlement backlog", "Committed event batches not yet settled.", "none",
                  ("max by (pair) (exchange_settlement_backlog)", "{{pair}}")),
            graph("Lease takeovers", "Times an engine became its pair's writer.", "none",
                  (f"sum by (pair) (increase(exchange_engine_lease_takeovers_total[{RATE}]))",
                   "{{pair}}")),
        ]),
        ("API and delivery", [
            graph("HTTP requests / s by status", "Every API answer.", "reqps",
                  (f"sum by (status) ({rate('exchange_http_requests_total')})", "{{status}}"),
                  stacked=True),
            graph("HTTP error rate", "Share of API answers that are 5xx.", "percentunit",
                  (f"sum({rate('exchange_http_requests_total', SERVER_ERRORS)})"
                   f" / sum({rate('exchange_http_requests_total')})", "5xx")),
            graph("HTTP latency p99 by route", "Request received -> response sent.", "s",
                  (quantile(0.99, "exchange_http_request_duration_seconds", ["method", "route"]),
                   "{{method}} {{route}}")),
            graph("Engine commit round trip p99", "The commit script, per batch, by pair.",
                  "s", (quantile(0.99, "exchange_engine_commit_seconds", ["pair"]), "{{pair}}")),
            graph("Accept -> WebSocket write p99",
                  "An update's newest order accepted -> its frames written, by pair.", "s",
                  (quantile(0.99, "exchange_ws_delivery_latency_seconds", ["pair"]),
                   "{{pair}}")),
            graph("Redis errors / s", "Failed Redis commands by service and error.", "ops",
                  (f"sum by (job, error) ({rate('exchange_redis_errors_total')})",
                   "{{job}}: {{error}}")),
        ]),
        ("Processes", [
            graph("CPU by service", "Cores used by each service's processes.", "none",
                  (f"sum by (job) ({rate('process_cpu_seconds_total', SERVICES)})",
                   "{{job}}")),
            graph("Resident memory", "Each process.", "bytes",
                  (f"process_resident_memory_bytes{{{SERVICES}}}",
                   "{{job}} {{instance}}")),
        ]),
    ])


def pair() -> model.Dashboard:
    variable = (builders.QueryVariable("pair").label("Pair").datasource(DATASOURCE)
                .query("label_values(exchange_engine_leader, pair)")
                .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(model.VariableSort.ALPHABETICAL_ASC))
    board = _dashboard("exchange-pair", "Exchange / Pair",
                       "One trading pair: its engine, orders, latency, backlogs, settlement.",
                       [variable])
    return _layout(board, [
        ("$pair", [
            single("Leader", "Whether an engine holds the pair's lease.", "none",
                   f"max(exchange_engine_leader{{{PAIR}}})", ((None, "red"), (1, "green")),
                   text_for({"0": ("none", "red"), "1": ("leading", "green")})),
            single("Engine processes", "Leader and standbys of the pair that answer scrapes.",
                   "none", f"count(exchange_engine_leading{{{PAIR}}}) or vector(0)",
                   ((None, "red"), (1, "orange"), (2, "green"))),
            single("Input backlog", "Commands waiting for the engine.", "none",
                   f"max(exchange_engine_input_backlog{{{PAIR}}})",
                   ((None, "green"), (1000, "orange"), (5000, "red"))),
            single("Settlement lag", "Oldest committed batch not yet settled.", "s",
                   f"max(exchange_settlement_lag_seconds{{{PAIR}}})",
                   ((None, "green"), (5, "orange"), (10, "red"))),
            single("Accept -> commit p99", "Over the rate window.", "s",
                   quantile(0.99, "exchange_order_commit_latency_seconds", selector=PAIR),
                   ((None, "green"), (0.05, "orange"), (0.1, "red"))),
            single("Delivery p99", "Accept -> update written to watchers, every gateway.",
                   "s", quantile(0.99, "exchange_ws_delivery_latency_seconds", selector=PAIR),
                   ((None, "green"), (0.1, "orange"), (0.25, "red"))),
        ]),
        ("Flow", [
            graph("Orders, commands and trades / s",
                  "Orders the API accepted, commands and trades the engine committed.", "ops",
                  (f"sum({rate('exchange_orders_accepted_total', PAIR)})", "orders accepted"),
                  (f"sum({rate('exchange_engine_commands_total', PAIR)})",
                   "commands committed"),
                  (f"sum({rate('exchange_engine_trades_total', PAIR)})", "trades")),
            graph("Rejects / s by reason", "Stage api (error code) or engine (book).", "reqps",
                  (f"sum by (stage, reason) ({rate('exchange_order_rejects_total', PAIR)})",
                   "{{stage}}: {{reason}}")),
            graph("Lease takeovers", "Times an engine of the pair became its writer.", "none",
                  (f"sum by (instance) (increase(exchange_engine_lease_takeovers_total"
                   f"{{{PAIR}}}[{RATE}]))", "{{instance}}")),
            graph("Book resyncs", "Gateways rebuilding the pair's book after a gap.", "none",
                  (f"sum by (instance) (increase(exchange_ws_resyncs_total{{{PAIR}}}[{RATE}]))",
                   "{{instance}}")),
        ]),
        ("Latency", [
            graph("Accept -> commit", "Each command from its input entry to its batch "
                  "committed.", "s",
                  *[(quantile(q, "exchange_order_commit_latency_seconds", selector=PAIR),
                     f"p{round(q * 100)}") for q in (0.5, 0.9, 0.99)]),
            graph("Commit round trip", "The engine's commit script, per batch.", "s",
                  *[(quantile(q, "exchange_engine_commit_seconds", selector=PAIR),
                     f"p{round(q * 100)}") for q in (0.5, 0.99)]),
            graph("Batch size", "Commands per committed batch.", "none",
                  (quantile(0.5, "exchange_engine_batch_size", selector=PAIR), "p50"),
                  (quantile(0.99, "exchange_engine_batch_size", selector=PAIR), "p99"),
                  (mean("exchange_engine_batch_size", PAIR), "mean")),
            graph("Accept -> WebSocket write", "An update's newest order accepted -> its "
                  "frames written to watchers, every gateway.", "s",
                  *[(quantile(q, "exchange_ws_delivery_latency_seconds", selector=PAIR),
                     f"p{round(q * 100)}") for q in (0.5, 0.99)]),
        ]),
        ("Backlogs and settlement", [
            graph("Engine input backlog", "Commands waiting for the engine.", "none",
                  (f"max(exchange_engine_input_backlog{{{PAIR}}})", "commands")),
            graph("Settlement backlog", "Committed event batches not yet settled.", "none",
                  (f"max(exchange_settlement_backlog{{{PAIR}}})", "batches")),
            graph("Settlement lag", "Age of the oldest committed batch not yet settled.", "s",
                  (f"max(exchange_settlement_lag_seconds{{{PAIR}}})", "lag")),
            graph("Settlement time per batch", "Batch read -> every account settled.", "s",
                  *[(quantile(q, "exchange_settlement_seconds", selector=PAIR),
                     f"p{round(q * 100)}") for q in (0.5, 0.99)]),
            graph("Settled legs and batches / s", "Account legs applied, event batches "
                  "settled.", "ops",
                  (f"sum({rate('exchange_settlement_legs_total', PAIR)})", "legs"),
                  (f"sum({rate('exchange_settlement_batches_total', PAIR)})", "batches"),
                  width=24),
        ]),
    ])


def gateways() -> model.Dashboard:
    job = 'job="exchange-gateway"'
    board = _dashboard("exchange-gateways", "Exchange / Gateways",
                       "WebSocket gateways: connections, fan-out, slow clients, latency.")
    return _layout(board, [
        ("All gateways", [
            single("Connections", "Open WebSocket connections.", "none",
                   "sum(exchange_ws_connections)"),
            single("Subscriptions", "Channel subscriptions of every connection.", "none",
                   "sum(exchange_ws_subscriptions)"),
            single("Messages out / s", "Frames written to clients.", "ops",
                   f"sum({rate('exchange_ws_messages_out_total')})"),
            single("Slow-consumer closes / min", "Connections closed for reading too slowly.",
                   "none", f"sum({rate('exchange_ws_slow_consumer_closes_total')}) * 60",
                   ((None, "green"), (1, "orange"), (10, "red"))),
            single("Delivery p99", "Accept -> written, every pair.", "s",
                   quantile(0.99, "exchange_ws_delivery_latency_seconds"),
                   ((None, "green"), (0.1, "orange"), (0.25, "red"))),
            single("Gateways up", "Gateway processes answering scrapes.", "none",
                   f"sum(up{{{job}}})", ((None, "red"), (1, "orange"), (2, "green"))),
        ]),
        ("By gateway", [
            graph("Connections", "Open connections per gateway.", "none",
                  ("sum by (instance) (exchange_ws_connections)", "{{instance}}")),
            graph("Subscriptions", "Subscriptions per gateway.", "none",
                  ("sum by (instance) (exchange_ws_subscriptions)", "{{instance}}")),
            graph("Pairs watched", "Pairs each gateway subscribes to in Redis.", "none",
                  ("sum by (instance) (exchange_ws_pairs)", "{{instance}}")),
            graph("Messages out / s", "Frames written per gateway.", "ops",
                  (f"sum by (instance) ({rate('exchange_ws_messages_out_total')})",
                   "{{instance}}")),
            graph("Bytes out / s", "Bytes written per gateway.", "Bps",
                  (f"sum by (instance) ({rate('exchange_ws_bytes_out_total')})",
                   "{{instance}}")),
            graph("Slow-consumer closes / min", "Close code 4008 per gateway.", "none",
                  (f"sum by (instance) ({rate('exchange_ws_slow_consumer_closes_total')}) * 60",
                   "{{instance}}")),
        ]),
        ("Latency and book copies", [
            graph("Delivery latency p99 by pair",
                  "An update's newest order accepted -> frames written.", "s",
                  (quantile(0.99, "exchange_ws_delivery_latency_seconds", ["pair"]),
                   "{{pair}}")),
            graph("Delivery latency by gateway", "p50 and p99, every pair.", "s",
                  (quantile(0.5, "exchange_ws_delivery_latency_seconds", ["instance"]),
                   "p50 {{instance}}"),
                  (quantile(0.99, "exchange_ws_delivery_latency_seconds", ["instance"]),
                   "p99 {{instance}}")),
            graph("Book resyncs", "Book copies rebuilt after a gap in a pair's updates.",
                  "none",
                  (f"sum by (pair) (increase(exchange_ws_resyncs_total[{RATE}]))", "{{pair}}")),
            graph("Redis errors / s", "Failed Redis commands of the gateways.", "ops",
                  (f"sum by (error) ({rate('exchange_redis_errors_total', job)})",
                   "{{error}}")),
        ]),
        ("Processes", [
            graph("CPU", "Cores used per gateway.", "none",
                  (f"sum by (instance) ({rate('process_cpu_seconds_total', job)})",
                   "{{instance}}")),
            graph("Resident memory", "Per gateway.", "bytes",
                  (f"process_resident_memory_bytes{{{job}}}", "{{instance}}")),
        ]),
    ])


def redis() -> model.Dashboard:
    healthy_master_slots = ("max by (node) (exchange_redis_slots)"
                            ' * on (node) max by (node) (exchange_redis_node_up{role="master"})')
    board = _dashboard("exchange-redis", "Exchange / Redis",
                       "The Redis Cluster as the exchange sees it: nodes, slots, errors.")
    return _layout(board, [
        ("Cluster", [
            single("Nodes up", "Nodes answering and not flagged failing.", "none",
                   "sum(max by (node) (exchange_redis_node_up))"),
            single("Nodes down", "Nodes not answering or flagged failing.", "none",
                   "count(max by (node) (exchange_redis_node_up) == 0) or vector(0)",
                   ZERO_IS_GOOD),
            single("Masters up", "Healthy masters.", "none",
                   'sum(max by (node) (exchange_redis_node_up{role="master"}))',
                   ((None, "red"), (1, "green"))),
            single("Slots served", f"Slots of healthy masters, of {ALL_SLOTS}.", "none",
                   f"sum({healthy_master_slots})",
                   ((None, "red"), (ALL_SLOTS, "green"))),
            single("Redis errors / s", "Failed commands, every service.", "ops",
                   f"sum({rate('exchange_redis_errors_total')})",
                   ((None, "green"), (0.1, "orange"), (1, "red"))),
            single("Lease takeovers", "Engine handovers over the time range (failovers "
                   "cause them).", "none",
                   "sum(increase(exchange_engine_lease_takeovers_total[$__range]))",
                   ((None, "green"), (1, "orange"))),
        ]),
        ("Nodes", [
            statetimeline.Panel().title("Node health")
            .description("Each node over time, as the API reads CLUSTER NODES.")
            .datasource(DATASOURCE)
            .targets(_targets([("max by (node, role) (exchange_redis_node_up)",
                                "{{node}} ({{role}})")]))
            .mappings(text_for({"0": ("down", "red"), "1": ("up", "green")}))
            .thresholds(_steps((None, "red"), (1, "green"))).span(12).height(8),
            bargauge.Panel().title("Slots per master")
            .description(f"Hash slots each master serves ({ALL_SLOTS} in all).")
            .datasource(DATASOURCE).unit("none").min(0).max(ALL_SLOTS)
            .targets(_targets([("max by (node) (exchange_redis_slots)", "{{node}}")]))
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"])
                            .values(False))
            .orientation(common.VizOrientation.HORIZONTAL)
            .thresholds(_steps((None, "blue"))).span(12).height(8),
        ]),
        ("Errors and effects", [
            graph("Redis errors / s", "Failed Redis commands by service and error.", "ops",
                  (f"sum by (job, error) ({rate('exchange_redis_errors_total')})",
                   "{{job}}: {{error}}")),
            graph("Engine commit round trip p99", "The commit script's round trip per pair: "
                  "how slow the pair's master answers.", "s",
                  (quantile(0.99, "exchange_engine_commit_seconds", ["pair"]), "{{pair}}")),
            graph("Lease takeovers", "Engine handovers by pair.", "none",
                  (f"sum by (pair) (increase(exchange_engine_lease_takeovers_total[{RATE}]))",
                   "{{pair}}")),
            graph("Settlement time per batch p99", "Settlement writes to account slots.", "s",
                  (quantile(0.99, "exchange_settlement_seconds", ["pair"]), "{{pair}}")),
        ]),
    ])


DASHBOARDS: dict[str, Callable[[], model.Dashboard]] = {
    "exchange-overview.json": overview,
    "exchange-pair.json": pair,
    "exchange-gateways.json": gateways,
    "exchange-redis.json": redis,
}


def render() -> dict[str, str]:
    """File name -> the JSON Grafana loads, as committed (sorted keys, stable ids)."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {name: encoder.encode(build()) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the JSON files are out of date")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where the JSON goes")
    args = parser.parse_args(argv)
    wanted = render()
    present = {path.name: path.read_text() for path in args.out.glob("*.json")}
    if args.check:
        stale = sorted(name for name in wanted.keys() | present.keys()
                       if wanted.get(name) != present.get(name))
        for name in stale:
            print(f"out of date: {args.out / name}", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in present.keys() - wanted.keys():
        (args.out / name).unlink()  # a dashboard no longer generated
    for name, text in wanted.items():
        if present.get(name) != text:
            (args.out / name).write_text(text)
            print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
