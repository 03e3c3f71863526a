"""charts/exchange, rendered by Helm's own engine and checked as Kubernetes would.

No Kubernetes cluster runs here: the chart is linted and rendered with the Helm SDK for
its default values, the kind values and a 10-pair production values file, and every
object is validated strictly against the Kubernetes 1.30 schemas.
"""

from __future__ import annotations

import copy
import tomllib
from decimal import Decimal
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from services.common.pairs import load_markets, parse_markets
from tests.deploy.chart import (
    CHART,
    KUBE_VERSION,
    VALUES_FILES,
    env_values,
    notes,
    of_kind,
    pods,
    render,
    values_of,
)

VALUES = list(VALUES_FILES)


@pytest.fixture(scope="module", params=VALUES)
def rendered(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(values, rendered objects) for each values file."""
    values = values_of(request.param)
    return values, render(values)


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.merge_values(values)


def pairs_file(docs: list[dict[str, Any]]) -> str:
    (config,) = [d for d in of_kind(docs, "ConfigMap") if "pairs.toml" in d.get("data", {})]
    return config["data"]["pairs.toml"]


PAIR = {"symbol": "SOL-USD", "tick_size": "0.01", "lot_size": "0.001", "min_qty": "0.001",
        "max_qty": "100000", "min_notional": "1", "price_decimals": 2, "qty_decimals": 3}


# ---- lint and Kubernetes schemas ---------------------------------------------------------

@pytest.mark.parametrize("name", VALUES)
def test_chart_lints_without_warnings(name: str) -> None:
    report = helm.lint(str(CHART), values_of(name), strict=True,
                       kube_version=f"v{KUBE_VERSION}")
    worse_than_info = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and worse_than_info == []


def test_every_rendered_object_is_valid_kubernetes_1_30(rendered) -> None:
    _, docs = rendered
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the Prometheus Operator's kinds: test_observability_files.py
        # strict: an unknown or misspelt field is an error, not silently dropped.
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    assert len(docs) > 20


def test_validation_refuses_a_misspelt_field() -> None:
    """The schema check is not vacuous: a field Kubernetes does not know fails it."""
    deployment = copy.deepcopy(of_kind(render(), "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


# ---- topology ---------------------------------------------------------------------------

def test_one_engine_deployment_per_configured_pair_runs_that_pair(rendered) -> None:
    values, docs = rendered
    merged = merged_values(values)
    engines = [d for d in of_kind(docs, "Deployment")
               if d["metadata"]["labels"]["app.kubernetes.io/component"] == "engine"]
    by_pair: dict[str, dict[str, Any]] = {}
    for engine in engines:
        (container,) = engine["spec"]["template"]["spec"]["containers"]
        assert container["args"][:2] == ["engine", "--pair"]
        pair = container["args"][2]
        assert pair not in by_pair, f"two engine workloads for {pair}"
        assert engine["spec"]["template"]["metadata"]["labels"]["exchange/pair"] == pair
        by_pair[pair] = engine
    assert list(by_pair) == [p["symbol"] for p in merged["pairs"]]
    for pair in merged["pairs"]:
        standbys = pair.get("standbys", merged["engine"]["standbys"])
        # The lease holder plus its standbys, replaced one at a time (never both gone).
        assert by_pair[pair["symbol"]]["spec"]["replicas"] == 1 + standbys
        assert by_pair[pair["symbol"]]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_production_values_run_ten_pairs_with_their_own_resources() -> None:
    docs = render(values_of("production"))
    engines = {d["metadata"]["labels"]["exchange/pair"]: d for d in of_kind(docs, "Deployment")
               if d["metadata"]["labels"]["app.kubernetes.io/component"] == "engine"}
    assert len(engines) == 10
    btc = engines["BTC-USD"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    doge = engines["DOGE-USD"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert btc["requests"]["cpu"] == "1" and doge["requests"]["cpu"] == "500m"


def test_each_pair_with_a_standby_keeps_one_engine_through_drains(rendered) -> None:
    values, docs = rendered
    merged = merged_values(values)
    budgets = {d["spec"]["selector"]["matchLabels"].get("exchange/pair"): d
               for d in of_kind(docs, "PodDisruptionBudget")}
    for pair in merged["pairs"]:
        if pair.get("standbys", merged["engine"]["standbys"]) > 0:
            assert budgets[pair["symbol"]]["spec"]["minAvailable"] >= 1


def test_gateway_service_is_a_load_balancer(rendered) -> None:
    _, docs = rendered
    (gateway,) = [s for s in of_kind(docs, "Service")
                  if s["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"]
    assert gateway["spec"]["type"] == "LoadBalancer"


def test_gateway_drains_before_it_stops() -> None:
    """preStop marks the pod not ready and keeps it serving for drainSeconds; the pod's
    grace period covers that and the gateway's own shutdown."""
    docs = render({"gateway": {"drainSeconds": 12}})
    (deployment,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith(
        "-gateway")]
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    pre_stop = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    readiness = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "touch /tmp/draining" in pre_stop and "sleep 12" in pre_stop
    assert "! -e /tmp/draining" in readiness
    assert spec["terminationGracePeriodSeconds"] > 12


def test_gateway_and_api_scale_on_cpu_and_gateways_on_connections() -> None:
    docs = render(values_of("production"))
    hpas = {h["spec"]["scaleTargetRef"]["name"].rsplit("-", 1)[-1]: h["spec"]["metrics"]
            for h in of_kind(docs, "HorizontalPodAutoscaler")}
    assert [m["resource"]["name"] for m in hpas["api"]] == ["cpu"]
    assert [m["type"] for m in hpas["gateway"]] == ["Resource", "Pods"]
    # The connections gauge the gateways export (services/common/metrics.py).
    assert hpas["gateway"][1]["pods"]["metric"]["name"] == "exchange_ws_connections"


def test_redis_cluster_runs_in_the_release_unless_an_external_one_is_named() -> None:
    docs = render()
    (redis,) = of_kind(docs, "StatefulSet")
    assert redis["spec"]["replicas"] == 6  # 3 masters, one replica each
    assert redis["spec"]["podManagementPolicy"] == "Parallel"
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    (config,) = [c for c in of_kind(docs, "ConfigMap") if "redis.conf" in c["data"]]
    assert "appendonly yes" in config["data"]["redis.conf"].splitlines()

    external = render(values_of("production"))
    assert of_kind(external, "StatefulSet") == []
    for pod in pods(external):
        for container in pod.spec["containers"]:
            for entry in container.get("env", []):
                if entry["name"] == "REDIS_URL":
                    assert entry["valueFrom"]["secretKeyRef"]["name"] == "exchange-redis"


# ---- every pod --------------------------------------------------------------------------

def test_every_container_has_requests_limits_and_probes(rendered) -> None:
    _, docs = rendered
    for pod in pods(docs):
        for container in pod.spec["containers"]:
            where = f"{pod.name} {container['name']}"
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, where
            if pod.runs_to_completion:
                # A Job or test pod ends by itself: a deadline bounds it, not probes.
                assert pod.spec.get("activeDeadlineSeconds") or pod.owner["spec"].get(
                    "activeDeadlineSeconds"), where
            else:
                assert "livenessProbe" in container and "readinessProbe" in container, where


def test_no_image_uses_a_moving_tag(rendered) -> None:
    _, docs = rendered
    for pod in pods(docs):
        for container in pod.spec["containers"]:
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag and tag not in ("", "latest"), image


def test_pods_run_as_non_root_on_a_read_only_root_filesystem(rendered) -> None:
    _, docs = rendered
    for pod in pods(docs):
        assert pod.spec["securityContext"]["runAsNonRoot"] is True, pod.name
        assert pod.spec["automountServiceAccountToken"] is False, pod.name
        for container in pod.spec["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, pod.name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, pod.name


def test_every_object_carries_the_standard_labels(rendered) -> None:
    _, docs = rendered
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/component", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks {key}"


def test_secrets_come_only_from_an_existing_secret(rendered) -> None:
    values, docs = rendered
    assert of_kind(docs, "Secret") == []
    expected = values.get("secrets", {}).get("existingSecret") or "ex-exchange-secrets"
    redis_secret = values.get("redis", {}).get("external", {}).get("existingSecret")
    for pod in pods(docs):
        for container in pod.spec["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in (expected, redis_secret), entry


# ---- the pairs file ---------------------------------------------------------------------

def test_rendered_pairs_file_is_what_the_services_load(rendered) -> None:
    """The services parse it (with every rule check of services/common/pairs.py) into the
    pairs of the values, with their exact decimals."""
    values, docs = rendered
    merged = merged_values(values)
    markets = parse_markets(tomllib.loads(pairs_file(docs)))
    assert list(markets.pairs) == [p["symbol"] for p in merged["pairs"]]
    for spec in merged["pairs"]:
        pair = markets.pair(spec["symbol"])
        assert pair.tick_size == Decimal(spec["tick_size"])
        assert pair.min_notional == Decimal(spec["min_notional"])
        assert pair.maker_fee_bps == spec.get("maker_fee_bps", 0)
    assert {a: markets.assets[a].decimals for a in markets.assets} == {
        a: spec["decimals"] for a, spec in merged["assets"].items()}


def test_default_values_serve_the_pairs_make_up_serves() -> None:
    """The chart's defaults and the packaged default pairs are the same markets."""
    assert parse_markets(tomllib.loads(pairs_file(render()))) == load_markets()


def test_workloads_read_the_rendered_pairs_file() -> None:
    docs = render()
    (config,) = [d for d in of_kind(docs, "ConfigMap") if "pairs.toml" in d.get("data", {})]
    for pod in pods(docs):
        for container in pod.spec["containers"]:
            path = env_values(container).get("EXCHANGE_PAIRS_FILE")
            if path is None:
                continue
            (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"])]
            (volume,) = [v for v in pod.spec["volumes"] if v["name"] == mount["name"]]
            assert volume["configMap"]["name"] == config["metadata"]["name"]
            assert path == f"{mount['mountPath']}/pairs.toml"


def test_adding_a_pair_adds_its_engine_and_rolls_every_pod_that_reads_the_pairs() -> None:
    before = render()
    after = render({"assets": {"SOL": {"decimals": 9}},
                    "pairs": [*values_of_chart()["pairs"], PAIR]})

    def checksums(docs: list[dict[str, Any]]) -> dict[str, str]:
        return {p.name: p.annotations["checksum/config"] for p in pods(docs)
                if p.component in ("api", "gateway", "engine", "settlement")}

    old, new = checksums(before), checksums(after)
    assert set(new) - set(old) == {"Deployment/ex-exchange-engine-sol-usd"}
    assert all(old[name] != new[name] for name in old)
    assert len(set(new.values())) == 1  # one pairs file, one checksum


def values_of_chart() -> dict[str, Any]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.values


# ---- values that must be refused --------------------------------------------------------

SCHEMA_BREAKS = {
    "a latest image tag": {"image": {"tag": "latest"}},
    "a float price step": {"pairs": [{**PAIR, "tick_size": 0.01}]},
    "a lower-case pair": {"pairs": [{**PAIR, "symbol": "sol-usd"}]},
    "a misspelt key": {"engine": {"standby": 2}},
    "resources without limits": {"api": {"resources": {"limits": None}}},
    "two Redis masters": {"redis": {"masters": 2}},
    "a Redis URL of another scheme": {"redis": {"enabled": False,
                                                "external": {"url": "http://redis:6379"}}},
    "an unknown log level": {"logLevel": "LOUD"},
}


@pytest.mark.parametrize("case", SCHEMA_BREAKS)
def test_values_that_break_the_schema_are_refused(case: str) -> None:
    values = SCHEMA_BREAKS[case]
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render(values)


TEMPLATE_REFUSALS = {
    "a pair listed twice": ({"assets": {"SOL": {"decimals": 9}, "USD": {"decimals": 6}},
                             "pairs": [PAIR, PAIR]}, "SOL-USD is listed twice"),
    "a pair of an unknown asset": ({"pairs": [PAIR]}, "asset SOL is not in assets"),
    "no Redis at all": ({"redis": {"enabled": False}}, "set redis.external.url"),
    "a connection target above the connection limit": (
        {"gateway": {"maxConnections": 100, "autoscaling": {"connections": {
            "enabled": True, "averageValue": 500}}}}, "must be below gateway.maxConnections"),
}


@pytest.mark.parametrize("case", TEMPLATE_REFUSALS)
def test_values_the_chart_cannot_serve_are_refused_with_the_reason(case: str) -> None:
    values, reason = TEMPLATE_REFUSALS[case]
    with pytest.raises(helm.HelmRenderError, match=reason):
        render(values)


def test_notes_tell_how_to_create_the_secret_and_check_the_release() -> None:
    text = notes(values_of("kind"))
    assert "create secret generic exchange-secrets" in text
    assert "helm test -n trading ex" in text
    assert "http://localhost:8000/" in text
