"""Rendering charts/exchange offline with Helm's own engine (the Helm SDK), as objects."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "exchange"
KUBE_VERSION = "1.30.0"
RELEASE = "ex"
NAMESPACE = "trading"

# The values files the chart is proven with: its defaults, kind's, a 10-pair production.
VALUES_FILES: dict[str, Path | None] = {
    "default": None,
    "kind": ROOT / "k8s" / "values-kind.yaml",
    "production": ROOT / "k8s" / "values-production.yaml",
}

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod")


def values_of(name: str) -> dict[str, Any]:
    """The values a named file gives (empty for the chart's defaults)."""
    path = VALUES_FILES[name]
    return yaml.safe_load(path.read_text()) if path else {}


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> list[dict[str, Any]]:
    """Every object the chart renders for `values` (hooks and test pods included)."""
    with helm.Chart.load(str(chart)) as loaded:
        manifests = loaded.render(values or {}, name=RELEASE, namespace=NAMESPACE,
                                  is_install=True)
    return [doc for path, text in sorted(manifests.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(str(CHART)) as loaded:
        manifests = loaded.render(values or {}, name=RELEASE, namespace=NAMESPACE,
                                  is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


@dataclass(frozen=True)
class PodOf:
    """A pod template and the object that makes it."""

    owner: dict[str, Any]
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.owner['kind']}/{self.owner['metadata']['name']}"

    @property
    def component(self) -> str:
        return self.owner["metadata"]["labels"]["app.kubernetes.io/component"]

    @property
    def runs_to_completion(self) -> bool:
        """A Job's pod or a bare pod that is not restarted (helm test): it ends by itself."""
        return self.owner["kind"] == "Job" or self.spec.get("restartPolicy") == "Never"

    @property
    def annotations(self) -> dict[str, str]:
        if self.owner["kind"] == "Pod":
            return self.owner["metadata"].get("annotations", {})
        return self.owner["spec"]["template"]["metadata"].get("annotations", {})


def pods(docs: list[dict[str, Any]]) -> Iterator[PodOf]:
    for doc in docs:
        if doc["kind"] == "Pod":
            yield PodOf(doc, doc["spec"])
        elif doc["kind"] in WORKLOAD_KINDS:
            yield PodOf(doc, doc["spec"]["template"]["spec"])


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def env_names(container: dict[str, Any]) -> set[str]:
    return {entry["name"] for entry in container.get("env", [])}


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """Plain env values (entries taken from Secrets are left out)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
