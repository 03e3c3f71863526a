"""The chart gives each service exactly the settings its code reads, and in a form it parses.

What a service reads is found in its code (tests/deploy/service_env.py), so a setting
added to a service without the chart passing it, or a chart variable no code reads any
more (a typo, a removed setting), fails here.
"""

from __future__ import annotations

import ast
import textwrap

import pytest

from services.api.settings import ApiSettings
from services.cli import COMMANDS
from services.gateway.settings import GatewaySettings
from tests.deploy.chart import VALUES_FILES, env_names, env_values, pods, render, values_of
from tests.deploy.service_env import env_reads, reads_in, service_env

ALL_ON = {"simulator": {"enabled": True}}


def service_containers(values: dict) -> list[tuple[str, str, dict]]:
    """(pod, `exchange` subcommand, container) for every container running a service."""
    found = []
    for pod in pods(render(values)):
        for container in pod.spec["containers"]:
            args = container.get("args") or []
            if not container.get("command") and args and args[0] in COMMANDS:
                found.append((pod.name, args[0], container))
    return found


@pytest.mark.parametrize("name", list(VALUES_FILES))
def test_each_service_gets_exactly_the_settings_it_reads(name: str) -> None:
    containers = service_containers(values_of(name) | ALL_ON)
    assert {command for _, command, _ in containers} == {
        "api", "gateway", "engine", "settlement", "simulate"}
    for pod, command, container in containers:
        reads = service_env(command)
        given = env_names(container)
        assert given == reads, (f"{pod}: given but never read {sorted(given - reads)}, "
                                f"read but not given {sorted(reads - given)}")


def test_the_api_parses_the_settings_the_chart_gives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    (_, _, api), = [c for c in service_containers(values_of("production")) if c[1] == "api"]
    for name, value in env_values(api).items():
        monkeypatch.setenv(name, value)
    settings = ApiSettings.from_env()
    assert (settings.host, settings.port) == ("0.0.0.0", 8000)
    assert (settings.rate_per_s, settings.burst) == (50.0, 100)
    assert settings.public_ws_url == "wss://ws.exchange.example.com/ws"
    assert settings.demo_faucet is False
    assert (settings.backlog.engine, settings.backlog.settlement) == (10_000, 5_000)


def test_the_gateway_parses_the_settings_the_chart_gives_it() -> None:
    (_, _, gateway), = [c for c in service_containers(values_of("production"))
                        if c[1] == "gateway"]
    settings = GatewaySettings.from_env(env_values(gateway))
    assert (settings.host, settings.port, settings.reuse_port) == ("0.0.0.0", 8001, False)
    assert settings.max_connections == 20_000
    assert settings.pairs_file == "/etc/exchange/pairs.toml"


def test_numbers_reach_the_services_as_plain_integers() -> None:
    """Large values are not written in exponent form (Helm's numbers are floats)."""
    values = {"engine": {"snapshotEvery": 5_000_000}, "api": {"backlog": {"engine": 2_000_000}}}
    for _, _, container in service_containers(values):
        for name, value in env_values(container).items():
            if name in ("EXCHANGE_SNAPSHOT_EVERY", "EXCHANGE_MAX_ENGINE_BACKLOG"):
                assert value in ("5000000", "2000000"), (name, value)


def test_the_code_scan_finds_every_way_code_reads_the_environment() -> None:
    """Reads through os.environ, os.getenv, `in`, an alias, a parameter defaulting to
    os.environ, and a name given by a constant are all found; a name it cannot resolve
    is an error rather than a silent miss."""
    tree = ast.parse(textwrap.dedent("""
        import os
        NAME = "B_VAR"
        def one(env=os.environ):
            return env.get("A_VAR")
        def two():
            env = os.environ
            env[NAME]
            os.getenv("C_VAR")
            "D_VAR" in os.environ
            os.environ.get("E_VAR", "x")
    """))
    constants = {"NAME": "B_VAR"}

    def name_of(node: ast.expr) -> str:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        raise ValueError(ast.unparse(node))

    assert reads_in(tree, name_of) == {"A_VAR", "B_VAR", "C_VAR", "D_VAR", "E_VAR"}
    with pytest.raises(ValueError, match="prefix"):
        reads_in(ast.parse("import os\nos.environ.get(prefix + 'X')"), name_of)


def test_each_service_reads_its_settings_through_the_scanned_modules() -> None:
    """The scan reaches the shared library: settings read there count for each service
    that imports it (the log level in services/common/process.py, for one)."""
    assert "EXCHANGE_LOG_LEVEL" in env_reads("services.common.process")
    assert all("EXCHANGE_LOG_LEVEL" in service_env(c)
               for c in ("api", "gateway", "engine", "settlement", "simulate"))
