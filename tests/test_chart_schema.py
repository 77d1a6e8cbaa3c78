"""values.schema.json and values.yaml: what the chart accepts, what it refuses and how it says so."""

from __future__ import annotations

import json

import pytest
import yaml

from chart_support import CHART, MATRIX, SCHEMA_FILE, render, schema_with_search_block, undocumented_values, values_docs
from kt_cluster.core.config import DataConfig, SearchConfig, SpaceConfig

helm = pytest.importorskip("helm_python")
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def _error(values: dict, exc=None) -> str:
    with pytest.raises(exc or helm.HelmValuesError) as info:
        render(values)
    return str(info.value)


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_documented_examples_are_accepted(name):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(MATRIX[name])


@pytest.mark.parametrize("values,where,says", [
    ({"workers": {"replicas": -1}}, "/workers/replicas", "minimum: got -1, want 0"),
    ({"workers": {"replica": 3}}, "/workers", "additional properties 'replica' not allowed"),
    ({"wokers": {"replicas": 3}}, "''", "additional properties 'wokers' not allowed"),
    ({"search": {"tuner": "grid"}}, "/search/tuner", "value must be one of 'hyperband', 'bayesian', 'random'"),
    ({"workers": {"gpus": "two"}}, "/workers/gpus", "got string, want integer"),
    ({"workers": {"gpus": 1.5}}, "/workers/gpus", "want integer"),
    ({"workers": {"trialsPerGPU": 0}}, "/workers/trialsPerGPU", "minimum: got 0, want 1"),
    ({"monitoring": {"finalScrapeSeconds": -1}}, "/monitoring/finalScrapeSeconds", "minimum: got -1, want 0"),
    ({"workers": {"gpusPerTrial": 2}}, "/workers/gpusPerTrial", "value must be one of 'all', 1"),
    ({"workers": {"gpuMemoryMB": 100}}, "/workers/gpuMemoryMB", "minimum: got 100, want 256"),
    ({"search": {"direction": "up"}}, "/search/direction", "'min', 'max'"),
    ({"search": {"max_trials": 0}}, "/search/max_trials", "minimum: got 0, want 1"),
    ({"search": {"learning_rate": 0}}, "/search/learning_rate", "exclusiveMinimum"),
    ({"search": {"data": {"channels": 2}}}, "/search/data/channels", "value must be one of 1, 3"),
    ({"search": {"data": {"classes": ["stamp", "stamp"]}}}, "/search/data/classes", "items at 0 and 1 are equal"),
    ({"search": {"space": {"activation": ["tanh"]}}}, "/search/space/activation/0", "'mish', 'elu', 'lrelu', 'relu'"),
    ({"search": {"space": {"net_depth": {"min": 2, "max": 11}}}}, "/search/space/net_depth/max", "maximum: got 11, want 10"),
    ({"search": {"hypermodel": "models.unet"}}, "/search/hypermodel", "does not match pattern"),
    ({"search": {"search_id": "a/b"}}, "/search/search_id", "does not match pattern"),
    ({"search": {"results": "/elsewhere"}}, "/search", "additional properties 'results' not allowed"),
    ({"search": {"data": {"path": "/elsewhere"}}}, "/search/data", "additional properties 'path' not allowed"),
    ({"workers": {"image": {"digest": "latest"}}}, "/workers/image/digest", "does not match pattern"),
    ({"image": {"digest": "sha256:" + "ab" * 32}}, "/image", "additional properties 'digest' not allowed"),
    ({"openshift": {"adaptSecurityContext": "yes"}}, "/openshift/adaptSecurityContext", "'auto', 'force', 'disabled'"),
    ({"workers": {"extraVolumes": [{"name": "data", "emptyDir": {}}]}}, "/workers/extraVolumes/0/name", "not"),
    ({"chief": {"extraVolumeMounts": [{"name": "x", "mountPath": "/results"}]}},
     "/chief/extraVolumeMounts/0/mountPath", "not"),
    ({"chief": {"extraInitContainers": [{"image": "busybox"}]}}, "/chief/extraInitContainers/0", "missing property 'name'"),
    ({"workers": {"tmpSizeLimit": "lots"}}, "/workers/tmpSizeLimit", "does not match pattern"),
    ({"data": {"check": {"waitSeconds": -1}}}, "/data/check/waitSeconds", "minimum: got -1, want 0"),
    ({"chief": {"pdb": {"unhealthyPodEvictionPolicy": "Never"}}}, "/chief/pdb/unhealthyPodEvictionPolicy",
     "'AlwaysAllow', 'IfHealthyBudget'"),
    ({"monitoring": {"prometheusRule": {"runbookBaseUrl": "docs/monitoring.md"}}},
     "/monitoring/prometheusRule/runbookBaseUrl", "does not match pattern"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "'Always', 'IfNotPresent', 'Never'"),
    ({"fullnameOverride": "x" * 41}, "/fullnameOverride", "maxLength: got 41, want 40"),
    ({"neptune": {"enabled": True}}, "/neptune/project", "minLength: got 0, want 1"),
    ({"neptune": {"enabled": True, "project": "team/unet"}}, "/neptune/existingSecret", "minLength: got 0, want 1"),
    ({"data": {"persistence": {"accessModes": ["ReadWriteSometimes"]}}}, "/data/persistence/accessModes/0", "must be one of"),
    ({"data": {"persistence": {"size": "ten gigs"}}}, "/data/persistence/size", "does not match pattern"),
    ({"chief": {"resources": {"requests": {"cpu": "lots"}}}}, "/chief/resources/requests/cpu", "does not match pattern"),
    ({"chief": {"probes": {"liveness": {"enabled": True, "periodSeconds": 0}}}}, "/chief/probes/liveness/periodSeconds", "minimum"),
    ({"monitoring": {"serviceMonitor": {"interval": "often"}}}, "/monitoring/serviceMonitor/interval", "does not match pattern"),
    ({"networkPolicy": {"metricsNamespaces": ["Monitoring"]}}, "/networkPolicy/metricsNamespaces/0", "does not match pattern"),
    ({"workers": {"extraEnv": [{"value": "1"}]}}, "/workers/extraEnv/0", "missing property 'name'"),
])
def test_bad_values_are_refused_naming_the_field(values, where, says):
    message = _error(values)
    assert f"at '{where}'" in message if where != "''" else "at '':" in message, message
    assert says in message, message


@pytest.mark.parametrize("values,says", [
    ({"workers": {"graceSeconds": 60}},
     "workers.terminationGracePeriodSeconds (60) must be at least workers.graceSeconds (60) + 5"),
    ({"chief": {"pdb": {"enabled": True, "maxUnavailable": None}}}, "chief.pdb: set minAvailable or maxUnavailable"),
    ({"data": {"volume": {"emptyDir": {}}, "existingClaim": "scans"}},
     "data: set either data.volume or data.existingClaim, not both"),
    ({"data": {"volume": {"emptyDir": {}}, "synth": {"enabled": True}}},
     "data.synth.enabled: the data Job fills a claim; it cannot write to data.volume"),
])
def test_checks_across_fields_fail_the_render_with_a_message(values, says):
    assert says in _error(values, helm.HelmRenderError)


@pytest.mark.parametrize("kube_version", [None, "v1.29.0", "v1.37.0"])
@pytest.mark.parametrize("name", ["defaults", "customised", "monitoring", "minimal"])
def test_helm_lint_is_clean(name, kube_version):
    report = helm.lint(CHART, MATRIX[name], strict=True, namespace="default", kube_version=kube_version)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 = info ("icon is recommended")
    assert not problems and not report["errors"], report


def test_every_value_is_documented_helm_docs_style():
    assert undocumented_values() == []
    for row in values_docs():
        if row["documented"]:
            assert row["description"].endswith((".", ")")), f"{row['key']}: {row['description']!r}"


def _paths(node, prefix=""):
    """Dotted paths of a values tree, stopping at free-form objects."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict) and value:
            yield from _paths(value, path + ".")


def _schema_at(path: str) -> dict | None:
    node = SCHEMA
    for part in path.split("."):
        while "$ref" in node:
            node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
        if "allOf" in node:
            node = {"properties": {k: v for s in node["allOf"] for k, v in _resolve(s).get("properties", {}).items()}}
        props = node.get("properties")
        if props is None:
            return None  # free-form (a Kubernetes object passed through)
        node = props[part]
    return node


def _resolve(node):
    while "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_schema_and_values_describe_the_same_keys():
    for path in _paths(VALUES):
        try:
            _schema_at(path)
        except KeyError:
            pytest.fail(f"{path} is in values.yaml but not in values.schema.json")

    def walk(node, prefix=""):
        node = _resolve(node)
        for key, sub in node.get("properties", {}).items():
            yield f"{prefix}{key}"
            if _resolve(sub).get("additionalProperties") is False:
                yield from walk(sub, f"{prefix}{key}.")

    defined = set(_paths(VALUES))
    documented = {row["key"] for row in values_docs() if row["documented"]}

    def covered(path):  # optional keys of an object documented as a whole (a probe, a selector)
        parts = path.split(".")
        return any(".".join(parts[:i]) in documented for i in range(1, len(parts)))

    missing = [p for p in walk(SCHEMA) if p not in defined and p != "global" and not covered(p)]
    assert not missing, f"in the schema but not in values.yaml (so undocumented): {missing}"


def test_schema_closes_every_chart_defined_object():
    def walk(node, where):
        node = _resolve(node)
        for sub in node.get("allOf", []):
            yield from walk(sub, where)
        if "properties" in node:
            yield where, node
            for key, sub in node["properties"].items():
                yield from walk(sub, f"{where}.{key}")

    for where, node in walk(SCHEMA, "values"):
        assert node.get("additionalProperties") is False or where.endswith(("net_depth", "extraEnv")), where


def test_search_block_is_generated_from_the_config_model():
    assert SCHEMA_FILE.read_text() == schema_with_search_block(SCHEMA_FILE.read_text()), (
        "values.schema.json's search block differs from core/config.py's model: run `python -m tests.chart_support`")


def test_search_block_has_the_config_file_fields_and_defaults():
    """The chart's `search:` values are the config file's fields, minus those the chart fixes,
    and the chart's defaults are the config's defaults."""
    search = SCHEMA["properties"]["search"]["properties"]
    assert set(search) == set(SearchConfig.model_fields) - {"results"}
    assert set(search["data"]["properties"]) == set(DataConfig.model_fields) - {"path", "synthetic"}
    assert set(search["space"]["properties"]) == set(SpaceConfig.model_fields)
    defaults = SearchConfig().model_dump()
    for key, value in VALUES["search"].items():
        if key == "search_id":
            continue  # the chart defaults to the release name
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                assert defaults[key][sub] == subvalue, f"search.{key}.{sub}"
        else:
            assert defaults[key] == value, f"search.{key}"


@pytest.mark.parametrize("search", [{"search_id": ""}, {"hypermodel": "models.unet:build", "seed": 3},
                                    {"space": {"net_depth": {"min": 2, "max": 10}}}])
def test_search_values_the_config_accepts_are_accepted(search):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({"search": search})
