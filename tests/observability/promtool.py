"""Prometheus' own promtool (Debian's `prometheus` package ships it): the rule checker and
the alert unit-test runner. Missing, it fails the tests that need it: never a skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

INSTALL = "apt-get install -y prometheus"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, f"promtool is not installed: `{INSTALL}` (make test does it)"
    return path


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """promtool's answer, output and all, whatever its exit code."""
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, check=False)
