"""Every PromQL expression of the dashboards and the alert rules, and the metrics they read.

For tests that hold the dashboards and rules to what the services really export:
`expressions()` gives each query as valid PromQL (Grafana's variables replaced by sample
values), `metric_names()` the metric names they read, from the parsed PromQL, and
`label_matchers_in()` what they ask of a label (the scrape jobs, for one).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from observability import dashboards

ALERTS_DIR = Path(__file__).resolve().parent / "alerts"

# Grafana's variables, each with a value that makes the query plain PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$pair": "BTC-USD",
}
_LABEL_VALUES = re.compile(r"^label_values\((?P<expr>.+),\s*\w+\)$")


def _plain(expr: str) -> str:
    # Longest names first: "$__rate_interval" before "$__range".
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels") or [])


def dashboard_expressions() -> dict[str, list[str]]:
    """Dashboard file -> its queries as PromQL: panel targets, and the series selector of
    each `label_values(...)` template variable."""
    found: dict[str, list[str]] = {}
    for name, text in dashboards.render().items():
        board = yaml.safe_load(text)  # JSON is YAML; no second parser needed
        exprs = [target["expr"] for panel in _walk_panels(board.get("panels", []))
                 for target in panel.get("targets", []) if target.get("expr")]
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                match = _LABEL_VALUES.match(str(variable.get("query", "")))
                if match:
                    exprs.append(match["expr"])
        found[name] = [_plain(expr) for expr in exprs]
    return found


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of the rule files in observability/alerts (alerting and recording)."""
    return [rule for path in sorted(ALERTS_DIR.glob("*.yaml"))
            for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def alert_expressions() -> dict[str, str]:
    """Alert (or recorded series) name -> its PromQL."""
    return {rule.get("alert") or rule["record"]: " ".join(rule["expr"].split())
            for rule in alert_rules()}


def expressions() -> list[str]:
    """Every PromQL expression of the dashboards and rules, each once."""
    every = [e for exprs in dashboard_expressions().values() for e in exprs]
    every += alert_expressions().values()
    return sorted(set(every))


def metric_names_in(expr: str) -> set[str]:
    """The metric names an expression selects (raises on invalid PromQL)."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def label_matchers_in(expr: str, label: str) -> list[tuple[str, str]]:
    """(operator, value) of each matcher on `label` in an expression: ("=", "exchange-api"),
    ("=~", "exchange-.*")..."""
    ops = promql_parser.MatchOp
    # MatchOp values compare but do not hash.
    symbols = [(ops.Equal, "="), (ops.NotEqual, "!="), (ops.Re, "=~"), (ops.NotRe, "!~")]
    found: list[tuple[str, str]] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.extend((next(s for op, s in symbols if op == m.op), m.value)
                         for m in node.matchers.matchers if m.name == label)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def metric_names() -> set[str]:
    """Every metric name the dashboards and rules read (histograms as `_bucket`, `_sum`,
    `_count`; counters with `_total`), as a scrape of /metrics shows them."""
    return set().union(*(metric_names_in(expr) for expr in expressions()))
