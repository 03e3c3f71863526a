"""The chart's observability objects come from observability/ itself, never from copies.

The chart reads them through files/observability, a link to the repository's
observability/ (Helm follows links inside a chart; it cannot read files outside it).
These tests lay out a repository the same way with small files of each kind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.deploy.chart import CHART, KUBE_VERSION, ROOT, of_kind, pods, render

COLLECTOR = "receivers:\n  otlp:\n    protocols:\n      grpc: {}\n# ends with a comment\n"
DASHBOARD = {"title": "Order path", "panels": [{"type": "timeseries", "title": "p99 <1 ms & up"}]}
RULES = {"groups": [{"name": "exchange", "rules": [{
    "alert": "EngineLagging", "expr": "exchange_engine_backlog > 1000", "for": "1m"}]}]}
ALL_ON = {"observability": {"collector": {"enabled": True}, "serviceMonitor": {"enabled": True},
                            "prometheusRule": {"enabled": True},
                            "dashboards": {"enabled": True}}}


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


def test_observability_objects_are_valid_and_scrape_the_public_services(
        repository: Path) -> None:
    docs = render(ALL_ON, chart=repository / "charts" / "exchange")
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # Prometheus Operator kinds: not in the Kubernetes schemas
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    (monitor,) = of_kind(docs, "ServiceMonitor")
    selected = monitor["spec"]["selector"]["matchExpressions"][0]["values"]
    services = {s["metadata"]["labels"]["app.kubernetes.io/component"]: s
                for s in of_kind(docs, "Service")}
    for component in selected:
        port_names = {p["name"] for p in services[component]["spec"]["ports"]}
        assert port_names & {e["port"] for e in monitor["spec"]["endpoints"]}
    (collector,) = [p for p in pods(docs) if p.component == "collector"]
    assert collector.annotations["checksum/config"]


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
