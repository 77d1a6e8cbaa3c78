"""The alert rules: `promtool check rules`, `promtool test rules`, and what each alert must carry.

monitoring/alerts.test.yml feeds synthetic series to every alert, firing and silent; the rules'
expressions are also run against a real search in test_monitoring_queries.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prometheus_support as ps  # noqa: E402

DOCS = ps.ROOT / "docs" / "monitoring.md"
RUNBOOK_BASE = yaml.safe_load((ps.ROOT / "helm" / "kt-cluster" / "values.yaml").read_text())[
    "monitoring"]["prometheusRule"]["runbookBaseUrl"]
ALERTS = [r for r in ps.load_rules() if r.kind == "alert"]


def test_promtool_check_rules():
    result = ps.promtool("check", "rules", str(ps.RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ps.load_rules())} rules found" in result.stdout


def test_promtool_test_rules():
    result = ps.promtool("test", "rules", str(ps.RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_file_is_plain_prometheus_for_the_chart_to_wrap():
    raw = yaml.safe_load(ps.RULES.read_text())
    assert list(raw) == ["groups"]
    assert "{{ ." not in ps.RULES.read_text(), "Helm template syntax: the chart does not render this file"


@pytest.mark.parametrize("rule", ALERTS, ids=[r.name for r in ALERTS])
def test_alert_has_for_severity_summary_description_and_runbook(rule):
    raw = rule.raw
    assert re.fullmatch(r"Ktc[A-Z][A-Za-z]+", rule.name)
    assert re.fullmatch(r"\d+[smh]", raw["for"]), "every alert states its `for:`"
    assert raw["labels"]["severity"] in ("critical", "warning", "info")
    annotations = raw["annotations"]
    assert annotations["summary"] and annotations["description"]
    anchor = rule.name.lower()
    # Absolute, so that Alertmanager and Grafana can link it; the chart moves the base to
    # monitoring.prometheusRule.runbookBaseUrl (tests/test_chart_render.py).
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{anchor}"
    assert "runbook" not in annotations
    assert re.search(rf"^### {rule.name}$", DOCS.read_text(), re.M), f"no runbook section for {rule.name}"


@pytest.mark.parametrize("rule", ALERTS, ids=[r.name for r in ALERTS])
def test_alert_is_unit_tested_firing_and_silent(rule):
    cases = [case for test in yaml.safe_load(ps.RULE_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if case["alertname"] == rule.name]
    assert any(case["exp_alerts"] for case in cases), f"{rule.name}: no test where it fires"
    assert any(not case["exp_alerts"] for case in cases), f"{rule.name}: no test where it stays silent"


@pytest.mark.parametrize("expr,parts", [
    ("up == 0", ["up"]),
    ('absent(up{job="a"})', ['up{job="a"}']),
    ("absent_over_time(x[5m])", ["x"]),
    ("3 < foo", ["foo"]),
    ("a > b", ["a", "b"]),
    ("sum(a) / sum(b) > 0.5 and on (x) sum(c) >= 3", ["sum(a) / sum(b)", "sum(c)"]),
    ("(x or y * 0) / z > bool 1", ["(x or y * 0) / z"]),
    ('a{re=~".*(or|and).*"} > 1 unless ignoring (i) b', ['a{re=~".*(or|and).*"}', "b"]),
    ("(\n  a == 0\n)\nor\n(b unless on (n) c)", ["a", "b", "c"]),
    ("changes(x[15m]) > 3 # a comment with or and >\n", ["changes(x[15m])"]),
])
def test_probes_take_alert_expressions_apart(expr, parts):
    assert ps.probes(expr) == parts
