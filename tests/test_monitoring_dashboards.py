"""The Grafana dashboards, read as files: the dashboard-linter rules and what the chart relies on.

Whether each query parses and returns data is checked against a real Prometheus in
test_monitoring_queries.py; this file needs nothing but the JSON.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import prometheus_support as ps  # noqa: E402

DASHBOARDS = ps.load_dashboards()
DS = {"type": "prometheus", "uid": "${datasource}"}
RANGE_FUNCTIONS = re.compile(r"\b(rate|irate|increase)\s*\(")
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
OWN_METRIC = re.compile(r"\b(ktc_[a-z0-9_]+|process_[a-z0-9_]+|up)\b(?!\s*\{)")
GRAFANA_UNITS_WITHOUT_FIELDS = ("text", "row")


def test_the_four_dashboards_exist_with_unique_uids():
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert sorted(uids) == ["ktc-chief", "ktc-search-overview", "ktc-trials", "ktc-workers"]
    assert all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in uids)


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_header(name):
    d = DASHBOARDS[name]
    assert d["schemaVersion"] == 39
    assert d["title"].startswith("kt-cluster / ")
    assert "kt-cluster" in d["tags"]
    assert "__inputs" not in d, "provisioned dashboards take the data source from $datasource, not an import input"
    assert "id" not in d or d["id"] is None


@pytest.mark.parametrize("name", DASHBOARDS)
def test_datasource_is_a_variable_used_by_every_panel_and_target(name):
    d = DASHBOARDS[name]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in ps.panels(d):
        if panel["type"] == "text":
            continue
        assert panel["datasource"] == DS, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS, (panel["title"], target["refId"])
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DS, var["name"]


SELECTION = {  # what every selector of a chief's or a worker's series must carry
    "chief": ['namespace=~"$namespace"', 'pod=~"($search)-chief-[0-9]+"', 'pod=~"$pod"'],
    "worker": ['namespace=~"$namespace"', 'pod=~"($search)-worker-[0-9]+"', 'pod=~"$pod"'],
}
# DCGM's series name the GPU's pod in `pod` when its exporter is scraped with honor_labels, and in
# `exported_pod` (its own pod holding `pod`) otherwise: the GPU panel selects both ways.
DCGM = [['exported_namespace=~"$namespace"', 'exported_pod=~"($search)-worker-[0-9]+"', 'exported_pod=~"$pod"'],
        SELECTION["worker"]]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_namespace_search_and_pod_variables(name):
    """Several searches in one cluster: pick them by namespace and by search (the chart names the
    chief pod <search>-chief-0), then by pod; "All" is a regex, never an empty match."""
    variables = {v["name"]: v for v in DASHBOARDS[name]["templating"]["list"]}
    for var in ("namespace", "search", "pod"):
        assert variables[var]["type"] == "query" and variables[var]["includeAll"] and variables[var]["multi"]
        assert variables[var]["allValue"] == ".+", var
    assert variables["search"]["regex"] == "/^(.+)-chief-[0-9]+$/"
    assert not {"job", "instance", "gpu_pod"} & set(variables)


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_selector_carries_the_selection(name):
    for target in _targets(DASHBOARDS[name]):
        for metric, matchers in SELECTOR.findall(target.expr):
            if metric.startswith("DCGM_"):
                assert any(all(m in matchers for m in way) for way in DCGM), (target.id, metric)
                continue
            role = "worker" if metric.startswith("ktc_worker") or "-worker-" in matchers else "chief"
            assert all(m in matchers for m in SELECTION[role]), (target.id, metric, matchers)
        assert not OWN_METRIC.findall(target.expr), (target.id, "a selector without the selection")


@pytest.mark.parametrize("name", DASHBOARDS)
def test_legends_name_pods_and_searches_never_addresses(name):
    """Aggregations never sum across searches: each series keeps its namespace and pod (or search)."""
    for target in _targets(DASHBOARDS[name]):
        panel = next(p for p in ps.panels(DASHBOARDS[name]) if p["title"] == target.panel)
        legend = next(t.get("legendFormat", "") for t in panel["targets"] if t["refId"] == target.ref_id)
        assert "{{instance}}" not in legend and "{{job}}" not in legend, (target.id, legend)
        for by in re.findall(r"\b(?:sum|avg|max|min) by \(([^)]*)\)", target.expr):
            labels = {label.strip() for label in by.split(",")}
            assert "namespace" in labels and labels & {"pod", "search"}, (target.id, by)
        if legend:
            assert "{{namespace}}/" in legend, (target.id, legend)


def test_dashboard_links_keep_the_selection_and_the_time():
    for d in DASHBOARDS.values():
        assert d["links"] and all(link["includeVars"] and link["keepTime"] for link in d["links"]), d["uid"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_rate_and_increase_uses_rate_interval(name):
    for target in _targets(DASHBOARDS[name]):
        for match in RANGE_FUNCTIONS.finditer(target.expr):
            body = _call_body(target.expr, match.end() - 1)
            assert re.search(r"\[\$__rate_interval\]\s*$", body), (target.id, body)


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_has_a_unit_title_description_and_place(name):
    d = DASHBOARDS[name]
    ids = [p["id"] for p in ps.panels(d)]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in ps.panels(d)]
    assert len(titles) == len(set(titles)), "panel titles name the test cases: keep them unique"
    for panel in ps.panels(d):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] in GRAFANA_UNITS_WITHOUT_FIELDS:
            assert panel["options"]["content"].strip()
            continue
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        assert panel.get("description"), f"{panel['title']}: no description"
        assert panel["targets"], panel["title"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_variable_used_is_defined(name):
    d = DASHBOARDS[name]
    defined = {v["name"] for v in d["templating"]["list"]}
    texts = [t.expr for t in _targets(d)] + [ps.variable_query(v) for v in d["templating"]["list"]]
    texts += [p["title"] for p in ps.panels(d)]
    for text in texts:
        for match in ps.GRAFANA_VARIABLE.finditer(text):
            used = match.group(1) or match.group(2)
            # $1: a label_replace back-reference, which Grafana leaves alone (no such variable)
            assert used.startswith("__") or used.isdigit() or used in defined, (text, used)


def test_the_queries_allowed_to_be_empty_exist():
    ids = {(t.dashboard, t.panel, t.ref_id) for t in ps.dashboard_targets()}
    assert set(ps.MAY_BE_EMPTY) <= ids


def test_variable_queries_are_label_values():
    for d in DASHBOARDS.values():
        for var in d["templating"]["list"]:
            if var["type"] == "query":
                assert ps.LABEL_VALUES.match(ps.variable_query(var)), (d["uid"], var["name"])


def _targets(dashboard) -> list[ps.Target]:
    return [t for t in ps.dashboard_targets() if t.dashboard == dashboard["uid"]]


def _call_body(expr: str, open_paren: int) -> str:
    depth = 0
    for i in range(open_paren, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return expr[open_paren + 1:i]
    raise AssertionError(f"unbalanced parentheses in {expr!r}")
