"""promtool: the rule files are valid, and their unit tests prove every alert fires on a
synthetic series and stays silent on a healthy one."""

from __future__ import annotations

import subprocess
from collections import defaultdict

import yaml
from obs_helpers import DEPLOY, RULE_FILES, RULE_TESTS, PromBin, rules, with_bool


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=False)


def test_check_rules(prom_bin: PromBin) -> None:
    assert RULE_FILES
    proc = run(prom_bin.promtool, "check", "rules", *map(str, RULE_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_config(prom_bin: PromBin) -> None:
    proc = run(prom_bin.promtool, "check", "config", "--syntax-only",
               str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass(prom_bin: PromBin) -> None:
    assert RULE_TESTS
    proc = run(prom_bin.promtool, "test", "rules", *map(str, RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = {r["alert"] for _, r in rules() if "alert" in r}
    cases: dict[str, set[str]] = defaultdict(set)
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases[case["alertname"]].add("fires" if case.get("exp_alerts") else "silent")
    missing = {a: {"fires", "silent"} - cases[a] for a in alerts if cases[a] != {"fires", "silent"}}
    assert not missing, f"alerts without a firing or a silent unit test: {missing}"


def test_with_bool() -> None:
    assert with_bool('a{x!="1", y=~"z"} > 0.5 or a < 0.1') == \
        'a{x!="1", y=~"z"} > bool 0.5 or a < bool 0.1'
    assert with_bool("a >= on () b and c == 0") == "a >= bool on () b and c == bool 0"
    assert with_bool("a > bool 1") == "a > bool 1"
