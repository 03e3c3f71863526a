"""The chart against the local exchange: the same processes, and its `helm test` passes.

`make up` and the chart run one topology (an engine per pair with its standbys,
settlement, the API, gateway replicas). The chart's `helm test` pod is run here as it
runs in the cluster (its script and environment taken from the rendered chart) against
the real local exchange, with only the in-cluster addresses swapped for local ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from services.common.client import ExchangeClient
from services.local.up import LocalExchange
from tests.deploy.chart import env_values, of_kind, pods, render


def processes_of_chart() -> Counter[tuple[str, ...]]:
    """Each `exchange` command line the chart runs (without addresses), by pod count."""
    found: Counter[tuple[str, ...]] = Counter()
    for pod in pods(render()):
        if pod.runs_to_completion:
            continue
        for container in pod.spec["containers"]:
            if container["image"].startswith("exchange:"):
                found[tuple(container["args"])] += pod.owner["spec"].get("replicas", 1)
    return found


def processes_of(stack: LocalExchange) -> Counter[tuple[str, ...]]:
    found: Counter[tuple[str, ...]] = Counter()
    services = ("api", "engine", "gateway", "settlement", "simulate")
    addresses = ("--host", "--port", "--metrics-port")
    for child in stack.children:
        if not set(services) & set(child.argv):
            continue  # not the exchange's (the local Prometheus)
        command = child.argv[child.argv.index(next(a for a in child.argv if a in services)):]
        # Addresses differ by design (pods get theirs from the environment).
        kept = [a for i, a in enumerate(command) if not (
            a in addresses or (i and command[i - 1] in addresses))]
        found[tuple(kept)] += 1
    return found


def test_chart_runs_the_processes_the_local_exchange_runs(stack: LocalExchange) -> None:
    chart, local = processes_of_chart(), processes_of(stack)
    assert set(chart) == set(local)
    engines = [args for args in chart if args[0] == "engine"]
    assert {args: chart[args] for args in engines} == {args: local[args] for args in engines}


async def test_helm_test_pod_sees_its_trade_on_the_websocket(
        stack: LocalExchange, admin: ExchangeClient, tmp_path: Path) -> None:
    docs = render({"tests": {"pair": "ETH-USD"}})
    (script,) = [cm["data"]["trade_check.py"] for cm in of_kind(docs, "ConfigMap")
                 if "trade_check.py" in cm["data"]]
    (pod,) = [p for p in pods(docs) if p.component == "test"]
    (container,) = pod.spec["containers"]
    env = env_values(container)
    assert env["EXCHANGE_API_URL"] == "http://ex-exchange-api:8000"
    assert env["EXCHANGE_WS_URL"] == "ws://ex-exchange-gateway:8001/ws"
    assert container["command"][-1] == "/check/trade_check.py"
    (tmp_path / "trade_check.py").write_text(script)

    env |= {"EXCHANGE_API_URL": stack.api_url, "EXCHANGE_WS_URL": stack.ws_urls[1],
            "EXCHANGE_ADMIN_TOKEN": stack.options.admin_token}
    done = subprocess.run([sys.executable, str(tmp_path / "trade_check.py")],
                          env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=int(env["EXCHANGE_TEST_TIMEOUT_S"]) + 30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: trade ")
    trade_id = done.stdout.split()[2]
    trades = await admin.trades("ETH-USD", limit=50)
    assert trade_id in {t["id"] for t in trades}
    # It leaves nothing resting behind: its sell traded in full.
    assert not [level for level in (await admin.book("ETH-USD"))["asks"]
                if level[0] == next(t["px"] for t in trades if t["id"] == trade_id)]


def test_helm_test_pod_fails_with_the_reason_when_the_exchange_is_unreachable(
        tmp_path: Path) -> None:
    docs = render()
    (script,) = [cm["data"]["trade_check.py"] for cm in of_kind(docs, "ConfigMap")
                 if "trade_check.py" in cm["data"]]
    (tmp_path / "trade_check.py").write_text(script)
    done = subprocess.run([sys.executable, str(tmp_path / "trade_check.py")], env={
        **os.environ, "EXCHANGE_API_URL": "http://127.0.0.1:9", "EXCHANGE_WS_URL":
        "ws://127.0.0.1:9/ws", "EXCHANGE_ADMIN_TOKEN": "x", "EXCHANGE_TEST_TIMEOUT_S": "5"},
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("FAILED: ConnectError")
