"""The alert rules of observability/alerts: valid for Prometheus, each one proven by
promtool unit tests to fire on its series and stay quiet otherwise, each with a runbook
section an operator can follow."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from observability.queries import ALERTS_DIR, alert_rules
from tests.observability.promtool import INSTALL, promtool, run

RULE_FILES = sorted(ALERTS_DIR.glob("*.yaml"))
TEST_FILES = sorted((ALERTS_DIR / "tests").glob("*.yaml"))
RUNBOOK = ALERTS_DIR.parent / "runbook.md"
REPOSITORY = ALERTS_DIR.parents[1]
ALERTS = [rule for rule in alert_rules() if "alert" in rule]


def unit_tests() -> list[dict[str, Any]]:
    return [test for path in TEST_FILES for test in yaml.safe_load(path.read_text())["tests"]]


def anchors(markdown: str) -> set[str]:
    """The anchors a Markdown renderer gives the headings (GitHub's rule: lower case, spaces
    to dashes, punctuation dropped)."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE)}


def test_promtool_is_installed() -> None:
    assert Path(promtool()).is_file(), INSTALL


def test_there_are_rules_and_unit_tests_to_check() -> None:
    assert RULE_FILES and TEST_FILES and len(ALERTS) >= 10


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_accepts_every_rule_file(path: Path) -> None:
    result = run("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_is_not_vacuous(tmp_path: Path) -> None:
    """A rule with broken PromQL is refused, so the check above means something."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"alert": "Broken", "expr": "sum by (pair (exchange_engine_leader)"}]}]}))
    assert run("check", "rules", broken).returncode != 0


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_every_alert_unit_test_passes(path: Path) -> None:
    result = run("test", "rules", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_unit_test_expecting_the_wrong_alert_fails(tmp_path: Path) -> None:
    """promtool compares labels and annotations exactly: a wrong expectation fails."""
    shutil.copytree(ALERTS_DIR, tmp_path / "alerts")
    tests = tmp_path / "alerts" / "tests" / TEST_FILES[0].name
    text = tests.read_text()
    assert "pair: BTC-USD" in text
    tests.write_text(text.replace("pair: BTC-USD", "pair: DOGE-USD", 1))
    assert run("test", "rules", tests.name, cwd=tests.parent).returncode != 0


def test_each_alert_is_shown_firing_and_shown_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in unit_tests():
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in ALERTS}
    assert names - fired == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"
    assert (fired | quiet) - names == set(), "unit tests of alerts that do not exist"


def test_firing_unit_tests_check_severity_and_every_annotation() -> None:
    by_name = {rule["alert"]: rule for rule in ALERTS}
    for test in unit_tests():
        for case in test.get("alert_rule_test", []):
            for expected in case.get("exp_alerts") or []:
                rule = by_name[case["alertname"]]
                assert expected["exp_labels"]["severity"] == rule["labels"]["severity"]
                assert set(expected["exp_annotations"]) == set(rule["annotations"])


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_each_alert_has_a_severity_a_text_and_its_runbook_section(rule: dict) -> None:
    assert rule["labels"]["severity"] in ("critical", "warning")
    notes = rule["annotations"]
    assert notes["summary"].strip() and notes["description"].strip()
    page, _, anchor = notes["runbook_url"].partition("#")
    assert (REPOSITORY / page).resolve() == RUNBOOK.resolve()
    assert anchor == rule["alert"].lower()
    assert anchor in anchors(RUNBOOK.read_text())


def test_each_runbook_section_says_what_it_means_how_to_check_and_what_to_do() -> None:
    sections = re.split(r"^## ", RUNBOOK.read_text(), flags=re.MULTILINE)[1:]
    by_title = {section.splitlines()[0].strip(): section for section in sections}
    for rule in ALERTS:
        section = by_title[rule["alert"]]
        for part in ("**What it means.**", "**How to check.**", "**What to do.**"):
            assert part in section, (rule["alert"], part)
        assert "`" in section, f"{rule['alert']}: no command to run"
    # No section for an alert that no longer exists.
    assert set(by_title) - {r["alert"] for r in ALERTS} == {"Before you start"}


def test_the_runbook_links_resolve() -> None:
    text = RUNBOOK.read_text()
    present = anchors(text)
    for anchor in re.findall(r"\]\(#([\w-]+)\)", text):
        assert anchor in present, anchor
    for target in re.findall(r"\]\(([\w./-]+)\)", text):
        assert (RUNBOOK.parent / target).exists(), target
