"""The one image: what the Dockerfile builds, and what the chart asks of it.

No Docker engine runs here, so the image is not built; these tests hold the Dockerfile to
what the chart relies on, and build the same package the image installs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from services.cli import COMMANDS
from tests.deploy.chart import ROOT, pods, render

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_image_runs_the_exchange_command_as_the_non_root_user_the_pods_expect() -> None:
    stage = dict(final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["exchange"]
    user = stage["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    for pod in pods(render()):
        if pod.component in ("api", "gateway", "engine", "settlement", "test"):
            assert pod.spec["securityContext"]["runAsUser"] == int(user), pod.name


def test_image_installs_the_locked_dependencies_on_a_pinned_base() -> None:
    steps = instructions()
    bases = [args.split()[0] for op, args in steps if op == "FROM"]
    assert all(":" in base and not base.endswith(":latest") for base in bases)
    installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    assert any("--constraint requirements.lock" in args for args in installs)
    copied = " ".join(args for op, args in steps if op == "COPY")
    assert "requirements.lock" in copied


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    allowed = {ln[1:].rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.startswith("!")}
    for op, args in instructions():
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert source.rstrip("/") in allowed, source


def test_every_command_the_chart_runs_is_an_exchange_subcommand() -> None:
    for pod in pods(render({"simulator": {"enabled": True}})):
        for container in pod.spec["containers"]:
            if container["image"].startswith("exchange:") and not container.get("command"):
                assert container["args"][0] in COMMANDS, pod.name


def test_the_package_the_image_installs_carries_every_file_the_services_load(
        tmp_path: Path) -> None:
    """The image installs the built package, not the source tree: every Lua script, the
    default pairs and the web page must be inside it."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.lock"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "services", source / "services",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("exchange-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    needed = {str(path.relative_to(source)) for path in (source / "services").rglob("*")
              if path.is_file() and path.suffix != ".py" and "__pycache__" not in path.parts}
    assert needed, "the services ship data files"
    assert sorted(needed - packaged) == []
