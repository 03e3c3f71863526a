"""The chart's observability objects come from observability/ itself, never from copies.

The chart reads them through files/observability, a link to the repository's
observability/ (Helm follows links inside a chart; it cannot read files outside it).
Most tests lay out a repository the same way with small files of each kind; the last
ones render the real files. Every service is scraped under the job the alert rules and
dashboards name: exchange-<component>.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from observability import queries
from tests.deploy.chart import (
    CHART,
    KUBE_VERSION,
    ROOT,
    env_values,
    of_kind,
    pods,
    render,
    values_of,
)
from tests.observability.promtool import run as promtool

COLLECTOR = "receivers:\n  otlp:\n    protocols:\n      grpc: {}\n# ends with a comment\n"
DASHBOARD = {"title": "Order path", "panels": [{"type": "timeseries", "title": "p99 <1 ms & up"}]}
RULES = {"groups": [{"name": "exchange", "rules": [{
    "alert": "EngineLagging", "expr": "exchange_engine_backlog > 1000", "for": "1m"}]}]}
ALL_ON = {"observability": {"collector": {"enabled": True, "tracesEndpoint": "tempo:4317"},
                            "serviceMonitor": {"enabled": True},
                            "prometheusRule": {"enabled": True},
                            "dashboards": {"enabled": True}}}
SERVICES = {"api", "gateway", "engine", "settlement"}
OBSERVABILITY = ROOT / "observability"
# The fields of the Prometheus Operator's kinds the chart may use (no Kubernetes schema
# covers them: an unknown or misspelt field would be silently dropped by the operator).
OPERATOR_FIELDS = {
    "ServiceMonitor": {"selector", "endpoints"},
    "PodMonitor": {"selector", "podMetricsEndpoints"},
    "PrometheusRule": {"groups"},
}
ENDPOINT_FIELDS = {"port", "path", "interval", "relabelings"}
RELABEL_FIELDS = {"sourceLabels", "targetLabel", "replacement", "action", "regex"}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with observability/ and the chart linking to it."""
    root = tmp_path_factory.mktemp("repo")
    observability = root / "observability"
    (observability / "dashboards").mkdir(parents=True)
    (observability / "alerts").mkdir()
    (observability / "otel-collector.yaml").write_text(COLLECTOR)
    # No trailing newline: the ConfigMap must still hold the file byte for byte.
    (observability / "dashboards" / "order_path.json").write_text(json.dumps(DASHBOARD))
    (observability / "alerts" / "engine.yaml").write_text(yaml.safe_dump(RULES))
    chart = root / "charts" / "exchange"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("observability"))
    (chart / "files" / "observability").symlink_to(Path("../../../observability"))
    return root


def test_chart_objects_hold_the_observability_files_byte_for_byte(repository: Path) -> None:
    docs = render(ALL_ON, chart=repository / "charts" / "exchange")
    data = {key: value for cm in of_kind(docs, "ConfigMap") for key, value in cm["data"].items()}
    source = repository / "observability"
    assert data["otel-collector.yaml"] == (source / "otel-collector.yaml").read_text()
    assert data["order_path.json"] == (source / "dashboards" / "order_path.json").read_text()
    (rule,) = of_kind(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == RULES["groups"]
    (dashboard,) = [cm for cm in of_kind(docs, "ConfigMap") if "order_path.json" in cm["data"]]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


def relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str]:
    """Prometheus' `replace` relabelling, as the operator hands the rules on."""
    labels = dict(labels)
    for rule in rules:
        assert rule.get("action", "replace") == "replace"
        value = ";".join(labels.get(name, "") for name in rule["sourceLabels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if match:
            # Prometheus writes groups as $1, Python as \g<1>.
            template = re.sub(r"\$(\d+)", r"\\g<\1>", rule.get("replacement", "$1"))
            labels[rule["targetLabel"]] = match.expand(template)
    return labels


def selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
               if e["operator"] == "In")


def scrape_jobs(docs: list[dict[str, Any]]) -> dict[str, str]:
    """component -> the job Prometheus gives its targets, from the rendered monitors."""
    jobs: dict[str, str] = {}
    (monitor,) = of_kind(docs, "ServiceMonitor")
    for service in of_kind(docs, "Service"):
        labels = service["metadata"]["labels"]
        if not selected(monitor["spec"]["selector"], labels):
            continue
        ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint["port"] in ports:
                meta = {f"__meta_kubernetes_service_label_{re.sub(r'[^a-z0-9]', '_', k)}": v
                        for k, v in labels.items()}
                job = relabel(endpoint["relabelings"], meta | {"job": "default"})["job"]
                jobs[labels["app.kubernetes.io/component"]] = job
    (pod_monitor,) = of_kind(docs, "PodMonitor")
    for pod in pods(docs):
        labels = (pod.owner["spec"]["template"]["metadata"]["labels"]
                  if pod.owner["kind"] != "Pod" else pod.owner["metadata"]["labels"])
        if not selected(pod_monitor["spec"]["selector"], labels):
            continue
        ports = {p.get("name") for c in pod.spec["containers"] for p in c.get("ports", [])}
        for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
            if endpoint["port"] in ports:
                meta = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-z0-9]', '_', k)}": v
                        for k, v in labels.items()}
                job = relabel(endpoint["relabelings"], meta | {"job": "default"})["job"]
                jobs[labels["app.kubernetes.io/component"]] = job
    return jobs


def test_observability_objects_are_valid_and_every_service_is_scraped_under_its_job(
        repository: Path) -> None:
    docs = render(ALL_ON, chart=repository / "charts" / "exchange")
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert set(doc["spec"]) <= OPERATOR_FIELDS[doc["kind"]], doc["kind"]
            for endpoint in doc["spec"].get("endpoints", []) + doc["spec"].get(
                    "podMetricsEndpoints", []):
                assert set(endpoint) <= ENDPOINT_FIELDS
                assert all(set(r) <= RELABEL_FIELDS for r in endpoint["relabelings"])
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    jobs = scrape_jobs(docs)
    assert jobs == {c: f"exchange-{c}" for c in SERVICES | {"collector"}}
    (collector,) = [p for p in pods(docs) if p.component == "collector"]
    assert collector.annotations["checksum/config"]


def test_the_jobs_the_rules_and_dashboards_name_are_the_jobs_scraped() -> None:
    jobs = set(scrape_jobs(render(ALL_ON)).values())
    asked = {matcher for expr in queries.expressions()
             for matcher in queries.label_matchers_in(expr, "job")}
    assert asked
    for op, value in asked:
        matching = {job for job in jobs if (job == value if op == "=" else
                                            re.fullmatch(value, job))}
        assert matching, f"job{op}{value!r} matches no scraped job of {sorted(jobs)}"
    # Every service is watched by some rule.
    ruled = {matcher for expr in queries.alert_expressions().values()
             for matcher in queries.label_matchers_in(expr, "job")}
    watched = {job for job in jobs for op, value in ruled
               if (job == value if op == "=" else re.fullmatch(value, job))}
    assert watched >= {f"exchange-{c}" for c in SERVICES}


def test_every_service_pod_serves_metrics_where_its_env_and_annotations_say() -> None:
    for pod in pods(render()):
        if pod.component not in SERVICES:
            continue
        (container,) = pod.spec["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        # The API and the gateways serve /metrics beside their traffic; the others on
        # EXCHANGE_METRICS_PORT, which the code reads (test_service_env.py).
        port = ports.get("metrics") or ports.get("http") or ports.get("ws")
        if pod.component in ("engine", "settlement"):
            assert env_values(container)["EXCHANGE_METRICS_PORT"] == str(ports["metrics"])
        assert pod.annotations["prometheus.io/scrape"] == "true", pod.name
        assert pod.annotations["prometheus.io/port"] == str(port), pod.name
        assert pod.annotations["prometheus.io/path"] == "/metrics", pod.name


def test_metrics_ports_are_open_to_the_scrapers_and_nothing_else_is() -> None:
    def policies(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"].removeprefix("ex-exchange-"): p["spec"]
                for p in of_kind(render(values), "NetworkPolicy")}

    default = policies({})
    (rule,) = default["metrics"]["ingress"]
    assert rule == {"ports": [{"port": "metrics"}]}  # any scraper, that port only
    assert {"engine", "settlement"} == set(
        default["metrics"]["podSelector"]["matchExpressions"][0]["values"])
    assert "ingress" not in default["workers"]
    assert not {"engine", "settlement"} & set(
        default["workers"]["podSelector"]["matchExpressions"][0]["values"])
    production = values_of("production")
    restricted = policies(production)
    scrapers = production["networkPolicy"]["metricsFrom"]
    assert restricted["metrics"]["ingress"] == [{"ports": [{"port": "metrics"}],
                                                  "from": scrapers}]
    assert {"ports": [{"port": "metrics"}], "from": scrapers} in restricted["collector"][
        "ingress"]


def test_a_collector_without_a_traces_endpoint_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match="tracesEndpoint"):
        render({"observability": {"collector": {"enabled": True}}})


# ---- the real files -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return render(values_of("production"))


def test_production_turns_the_observability_objects_on(production) -> None:
    kinds = {doc["kind"] for doc in production}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds
    assert [p for p in pods(production) if p.component == "collector"]


def test_the_release_carries_the_real_rules_and_promtool_accepts_them(
        production, tmp_path: Path) -> None:
    (rule,) = of_kind(production, "PrometheusRule")
    groups = [group for path in sorted((OBSERVABILITY / "alerts").glob("*.yaml"))
              for group in yaml.safe_load(path.read_text())["groups"]]
    assert rule["spec"]["groups"] == groups
    assert rule["metadata"]["labels"]["release"] == "monitoring"
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = promtool("check", "rules", rendered)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_release_carries_every_dashboard_byte_for_byte(production) -> None:
    data = {key: value for cm in of_kind(production, "ConfigMap")
            for key, value in cm["data"].items() if key.endswith(".json")}
    committed = {p.name: p.read_text() for p in (OBSERVABILITY / "dashboards").glob("*.json")}
    assert committed and data == committed


def test_the_collector_gets_its_config_and_the_environment_it_reads(production) -> None:
    config_text = (OBSERVABILITY / "otel-collector.yaml").read_text()
    (config_map,) = [cm for cm in of_kind(production, "ConfigMap")
                     if "otel-collector.yaml" in cm["data"]]
    assert config_map["data"]["otel-collector.yaml"] == config_text
    (collector,) = [p for p in pods(production) if p.component == "collector"]
    (container,) = collector.spec["containers"]
    env = env_values(container)
    wanted = set(re.findall(r"\$\{env:(\w+)", config_text))
    assert wanted <= set(env)
    expected = values_of("production")["observability"]["collector"]
    assert env["TRACES_ENDPOINT"] == expected["tracesEndpoint"]
    assert env["TRACES_INSECURE"] == str(expected["tracesInsecure"]).lower()
    # The ports the chart opens are those the config listens on.
    config = yaml.safe_load(config_text)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert str(ports["metrics"]) == config["exporters"]["prometheus"]["endpoint"].rpartition(
        ":")[2]
    assert str(ports["health"]) == config["extensions"]["health_check"][
        "endpoint"].rpartition(":")[2]
    for name, protocol in (("otlp-grpc", "grpc"), ("otlp-http", "http")):
        endpoint = config["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
        assert str(ports[name]) == endpoint.rpartition(":")[2]


@pytest.mark.parametrize("flag, missing", [
    ("collector", "files/observability/otel-collector.yaml"),
    ("prometheusRule", "files/observability/alerts/*.yaml"),
    ("dashboards", "files/observability/dashboards/*.json"),
])
def test_an_observability_flag_without_its_files_is_refused(flag: str, missing: str,
                                                            tmp_path: Path) -> None:
    # A copy without files/observability, whether or not observability/ exists yet.
    chart = tmp_path / "exchange"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("observability"))
    with pytest.raises(helm.HelmRenderError, match=missing.replace("*", r"\*")):
        render({"observability": {flag: {"enabled": True}}}, chart=chart)


def test_the_chart_reads_observability_through_a_link_not_a_copy() -> None:
    link = CHART / "files" / "observability"
    assert not link.exists() or (link.is_symlink()
                                 and link.resolve() == (ROOT / "observability").resolve())


def test_observability_is_off_by_default() -> None:
    kinds: set[Any] = {doc["kind"] for doc in render()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule"}
    assert not [p for p in pods(render()) if p.component == "collector"]
