"""The OpenTelemetry Collector config is well-formed: every component a pipeline names is
defined, connectors join a traces pipeline to a metrics one, and the settings the chart
must give it come from the environment.

No collector binary runs here, so the rules the collector applies when it loads a config
(every referenced component defined, connectors between pipelines of the right types) are
checked on the file, with a few of ours (nothing defined and unused, memory_limiter
first). tests/deploy checks that the chart's collector gets the environment it reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = Path(__file__).resolve().parents[2] / "observability" / "otel-collector.yaml"
CONFIG: dict[str, Any] = yaml.safe_load(CONFIG_FILE.read_text())
SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")
# Component types of the contrib distribution this config uses.
KNOWN_TYPES = {"receivers": {"otlp"}, "processors": {"memory_limiter", "batch"},
               "exporters": {"otlp", "prometheus"}, "connectors": {"spanmetrics"},
               "extensions": {"health_check"}}


def kind(component_id: str) -> str:
    """`otlp/traces` is a component of type otlp named traces."""
    return component_id.partition("/")[0]


def pipelines() -> dict[str, dict[str, list[str]]]:
    return CONFIG["service"]["pipelines"]


def test_only_collector_sections_at_the_top() -> None:
    assert set(CONFIG) <= {*SECTIONS, "service"}
    for section in SECTIONS:
        for component_id in CONFIG.get(section) or {}:
            assert kind(component_id) in KNOWN_TYPES[section], (section, component_id)


def test_every_component_a_pipeline_names_is_defined() -> None:
    connectors = set(CONFIG.get("connectors") or {})
    for name, pipeline in pipelines().items():
        assert kind(name) in ("traces", "metrics", "logs"), name
        assert pipeline["receivers"] and pipeline["exporters"], name
        for role in ("receivers", "processors", "exporters"):
            for component_id in pipeline.get(role, []):
                defined = set(CONFIG.get(role) or {})
                if role != "processors":
                    defined |= connectors
                assert component_id in defined, f"{name}: {role} {component_id} undefined"
    for extension in CONFIG["service"].get("extensions", []):
        assert extension in CONFIG["extensions"], extension


def test_every_defined_component_is_used() -> None:
    used = {c for p in pipelines().values() for role in p.values() for c in role}
    used |= set(CONFIG["service"].get("extensions", []))
    for section in SECTIONS:
        for component_id in CONFIG.get(section) or {}:
            assert component_id in used, f"{section} {component_id} is never used"


def test_spanmetrics_turns_the_traces_pipeline_into_a_metrics_one() -> None:
    into = [n for n, p in pipelines().items() if "spanmetrics" in p["exporters"]]
    out_of = [n for n, p in pipelines().items() if "spanmetrics" in p["receivers"]]
    assert [kind(n) for n in into] == ["traces"] and [kind(n) for n in out_of] == ["metrics"]
    assert "prometheus" in pipelines()[out_of[0]]["exporters"]
    # The pair is a dimension: span rates and durations per pair.
    assert {"name": "exchange.pair"} in CONFIG["connectors"]["spanmetrics"]["dimensions"]


def test_otlp_comes_in_over_grpc_and_http_and_traces_go_out_over_otlp() -> None:
    protocols = CONFIG["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    (traces,) = [n for n in pipelines() if kind(n) == "traces"]
    assert "otlp" in pipelines()[traces]["receivers"]
    (exporter,) = [e for e in pipelines()[traces]["exporters"] if kind(e) == "otlp"]
    assert CONFIG["exporters"][exporter]["endpoint"] == "${env:TRACES_ENDPOINT}"


def test_memory_limiter_comes_first_and_batch_is_in_every_pipeline() -> None:
    for name, pipeline in pipelines().items():
        processors = pipeline.get("processors", [])
        assert processors[:1] == ["memory_limiter"], name
        assert "batch" in processors, name


def test_the_environment_it_reads_is_the_traces_endpoint_and_its_tls() -> None:
    names = set(re.findall(r"\$\{env:(\w+)(?::-[^}]*)?\}", CONFIG_FILE.read_text()))
    assert names == {"TRACES_ENDPOINT", "TRACES_INSECURE"}
