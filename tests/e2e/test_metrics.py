"""What an operator scrapes: every service's `/metrics`, and the Prometheus `make up` runs.

The stack is the one `make up` runs, each service its own process serving Prometheus text;
an order placed through the API must show in the figures of every service it crosses.
"""

from __future__ import annotations

import json
import urllib.request
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from observability.queries import (
    alert_expressions,
    alert_rules,
    dashboard_expressions,
    metric_names_in,
)
from services.common.client import ApiError, ExchangeClient
from services.local.up import LocalExchange
from tests.support.accounts import funded, trade_inside_the_spread
from tests.support.waiting import eventually
from tests.support.watcher import BookWatcher

SYMBOL = "ETH-USD"
# Series Prometheus makes itself, not scraped from a service.
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(target: str) -> Samples:
    """One scrape of host:port/metrics: (sample name, labels) -> value."""
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the series whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def scrape_job(stack: LocalExchange, job: str) -> list[Samples]:
    return [scrape(target) for target in stack.scrape_targets[job]]


def leader_of(stack: LocalExchange, symbol: str) -> Samples:
    """The scrape of the engine process leading `symbol` now."""
    leading = [s for s in scrape_job(stack, "exchange-engine")
               if value(s, "exchange_engine_leading", pair=symbol) == 1]
    assert len(leading) == 1, f"{len(leading)} engines lead {symbol}"
    return leading[0]


async def test_a_crossing_order_shows_in_the_metrics_of_every_service_it_crosses(
        stack: LocalExchange, admin: ExchangeClient) -> None:
    api, engine = scrape_job(stack, "exchange-api")[0], leader_of(stack, SYMBOL)
    (settlement,) = scrape_job(stack, "exchange-settlement")
    gateway = scrape(stack.scrape_targets["exchange-gateway"][0])
    async with BookWatcher(stack.ws_urls[0], SYMBOL) as watcher:
        await trade_inside_the_spread(admin, watcher)
        now: dict[str, Samples] = {}

        def grew(name: str, before: Samples, job: str, at_least: float, **labels: str) -> bool:
            return value(now[job], name, **labels) - value(before, name, **labels) >= at_least

        def every_service_counted_it() -> bool:
            now["api"] = scrape_job(stack, "exchange-api")[0]
            now["engine"] = leader_of(stack, SYMBOL)
            now["settlement"] = scrape_job(stack, "exchange-settlement")[0]
            now["gateway"] = scrape(stack.scrape_targets["exchange-gateway"][0])
            return all((
                grew("exchange_orders_accepted_total", api, "api", 2, pair=SYMBOL),
                grew("exchange_http_requests_total", api, "api", 2, method="POST",
                     route="/api/v1/orders", status="201"),
                grew("exchange_engine_commands_total", engine, "engine", 2, pair=SYMBOL),
                grew("exchange_engine_trades_total", engine, "engine", 1, pair=SYMBOL),
                grew("exchange_order_commit_latency_seconds_count", engine, "engine", 2,
                     pair=SYMBOL),
                grew("exchange_engine_commit_seconds_count", engine, "engine", 1, pair=SYMBOL),
                grew("exchange_settlement_batches_total", settlement, "settlement", 1,
                     pair=SYMBOL),
                grew("exchange_settlement_legs_total", settlement, "settlement", 2,
                     pair=SYMBOL),
                grew("exchange_ws_delivery_latency_seconds_count", gateway, "gateway", 1,
                     pair=SYMBOL),
                grew("exchange_ws_messages_out_total", gateway, "gateway", 1),
            ))

        await eventually(every_service_counted_it, "every service's metrics to count the order",
                         timeout=15)
        assert value(now["gateway"], "exchange_ws_connections") >= 1
        assert value(now["gateway"], "exchange_ws_subscriptions") >= 1
    api_now = now["api"]
    # The API reads each pair's health from Redis at the scrape.
    assert value(api_now, "exchange_engine_leader", pair=SYMBOL) == 1
    assert value(api_now, "exchange_engine_input_backlog", pair=SYMBOL) >= 0
    masters = [dict(labels) for (name, labels), v in api_now.items()
               if name == "exchange_redis_node_up" and dict(labels)["role"] == "master"]
    assert len(masters) == 3
    assert value(api_now, "exchange_redis_slots") == 16384
    # A latency is a duration the order really took: the commit came after acceptance.
    engine_now = now["engine"]
    latency_sum = (value(engine_now, "exchange_order_commit_latency_seconds_sum", pair=SYMBOL)
                   - value(engine, "exchange_order_commit_latency_seconds_sum", pair=SYMBOL))
    assert 0 <= latency_sum < 10


async def test_refused_orders_are_counted_by_their_error_code(
        stack: LocalExchange, admin: ExchangeClient) -> None:
    buyer = await funded(admin, USD="10")
    before = scrape_job(stack, "exchange-api")[0]
    for price, qty, code in (("3000.001", "0.100", "INVALID_PRICE_TICK"),
                             ("3000.00", "0.100", "INSUFFICIENT_FUNDS")):
        try:
            await buyer.place_order(SYMBOL, "buy", price, qty)
        except ApiError as exc:
            assert exc.code == code
        else:
            raise AssertionError(f"{price} x {qty} was accepted")
    after = scrape_job(stack, "exchange-api")[0]
    for code in ("INVALID_PRICE_TICK", "INSUFFICIENT_FUNDS"):
        labels = {"pair": SYMBOL, "reason": code, "stage": "api"}
        assert (value(after, "exchange_order_rejects_total", **labels)
                - value(before, "exchange_order_rejects_total", **labels)) == 1
    assert (value(after, "exchange_orders_accepted_total", pair=SYMBOL)
            == value(before, "exchange_orders_accepted_total", pair=SYMBOL))


def prometheus(stack: LocalExchange, path: str) -> dict:
    assert stack.prometheus_url, "the stack runs no Prometheus (is it installed?)"
    with urllib.request.urlopen(f"{stack.prometheus_url}{path}", timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success"
    return body["data"]


async def test_the_local_prometheus_scrapes_every_service_process_with_the_alert_rules(
        stack: LocalExchange) -> None:
    expected = {job: sorted(targets) for job, targets in stack.scrape_targets.items()}
    assert set(expected) == {"exchange-api", "exchange-engine", "exchange-settlement",
                             "exchange-gateway"}
    assert len(expected["exchange-engine"]) == 2 * len(stack_pairs(stack))  # + standbys
    up: dict[str, list[str]] = {}

    def every_target_up() -> bool:
        up.clear()
        for target in prometheus(stack, "/api/v1/targets")["activeTargets"]:
            if target["health"] == "up":
                up.setdefault(target["labels"]["job"], []).append(target["labels"]["instance"])
        return {job: sorted(instances) for job, instances in up.items()} == expected

    await eventually(every_target_up, f"Prometheus to scrape {expected}", timeout=20)
    # And it can answer a query over what it scraped: every pair has a leading engine.
    leading: dict[str, float] = defaultdict(float)

    def leaders_known() -> bool:
        result = prometheus(stack, "/api/v1/query?query=sum+by+(pair)(exchange_engine_leading)")
        leading.update({r["metric"]["pair"]: float(r["value"][1]) for r in result["result"]})
        return set(leading) == stack_pairs(stack)

    await eventually(leaders_known, "a scrape of every engine", timeout=20)
    assert set(leading.values()) == {1.0}
    # With the alert rules of observability/, evaluated and healthy.
    rules = [rule for group in prometheus(stack, "/api/v1/rules")["groups"]
             for rule in group["rules"]]
    written = {rule["alert"] for rule in alert_rules() if "alert" in rule}
    assert written and {rule["name"] for rule in rules if rule["type"] == "alerting"} == written
    assert {rule["health"] for rule in rules} <= {"ok", "unknown"}


def stack_pairs(stack: LocalExchange) -> set[str]:
    with open(stack.options.data_dir / "endpoints.json") as endpoints:
        return set(json.load(endpoints)["pairs"])


async def test_dashboards_and_alert_rules_use_only_metrics_the_services_export(
        stack: LocalExchange, admin: ExchangeClient) -> None:
    queries = {**{f"alert {name}": expr for name, expr in alert_expressions().items()},
               **{f"dashboard {name} #{i}": expr
                  for name, exprs in dashboard_expressions().items()
                  for i, expr in enumerate(exprs)}}
    assert len(alert_expressions()) >= 6 and len(dashboard_expressions()) >= 4
    used = {where: metric_names_in(expr) for where, expr in queries.items()}
    # Histograms and labelled series appear once something happened: a refusal, a trade.
    with pytest.raises(ApiError):
        await (await funded(admin, USD="10")).place_order(SYMBOL, "buy", "3000.001", "0.100")
    async with BookWatcher(stack.ws_urls[0], SYMBOL) as watcher:
        await trade_inside_the_spread(admin, watcher)
        exported: set[str] = set()

        def every_name_exported() -> bool:
            exported.clear()
            for targets in stack.scrape_targets.values():
                for target in targets:
                    exported.update(name for name, _ in scrape(target))
            return all(names <= exported | PROMETHEUS_OWN for names in used.values())

        try:
            await eventually(every_name_exported, "every metric the queries use", timeout=15)
        except TimeoutError:
            missing = {where: sorted(names - exported - PROMETHEUS_OWN)
                       for where, names in used.items() if names - exported - PROMETHEUS_OWN}
            raise AssertionError(f"not exported by any service: {missing}") from None
    assert all(used.values()), [where for where, names in used.items() if not names]
