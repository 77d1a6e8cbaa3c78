"""The chief keeps its finished search's workers at zero, through the real `kubernetes` client
talking to a test API server (tests/kube_api.py) that enforces the chart's Role."""

from __future__ import annotations

import logging

import pytest

from kube_api import KubeApi
from kt_cluster.chief.k8s import WorkerScaler

NAMESPACE, NAME = "ml", "search-kt-cluster-worker"
ROLE = {"rules": [{"apiGroups": ["apps"], "resources": ["statefulsets/scale"], "resourceNames": [NAME],
                   "verbs": ["get", "patch"]}]}


@pytest.fixture
def api(tmp_path, monkeypatch):
    with KubeApi() as server:
        server.allow(ROLE, NAMESPACE)
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod: the kubeconfig
        yield server


def test_scale_to_zero_sends_a_merge_patch_of_the_scale_subresource(api):
    api.set_replicas(NAMESPACE, NAME, 3)
    assert WorkerScaler(f"{NAMESPACE}/{NAME}").scale_to_zero() is True
    assert api.get_replicas(NAMESPACE, NAME) == 0
    patch, = api.served("patch")
    assert patch.content_type.startswith("application/merge-patch+json")
    assert patch.body == {"spec": {"replicas": 0}}


def test_keep_at_zero_scales_raised_workers_back_and_leaves_zero_alone(api, caplog):
    scaler = WorkerScaler(f"{NAMESPACE}/{NAME}")
    api.set_replicas(NAMESPACE, NAME, 0)
    assert scaler.keep_at_zero() == 0
    assert not api.served("patch")  # nothing raised them: a read, no write
    api.set_replicas(NAMESPACE, NAME, 4)  # a helm upgrade rendered workers.replicas again
    with caplog.at_level(logging.WARNING, logger="ktc.chief"):
        assert scaler.keep_at_zero() == 4
    assert api.get_replicas(NAMESPACE, NAME) == 0
    assert f"scaled statefulset {NAMESPACE}/{NAME} from 4 back to zero" in caplog.text
    assert {r.verb for r in api.requests} == {"get", "patch"}  # what the Role grants, nothing more


def test_api_errors_are_logged_once_and_never_raised(api, caplog):
    api.allowed.discard(("patch", NAMESPACE, NAME))  # a Role without patch
    api.set_replicas(NAMESPACE, NAME, 2)
    scaler = WorkerScaler(f"{NAMESPACE}/{NAME}")
    with caplog.at_level(logging.ERROR, logger="ktc.chief"):
        assert scaler.scale_to_zero() is False
        for _ in range(3):
            assert scaler.keep_at_zero() == 0
    assert api.get_replicas(NAMESPACE, NAME) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "Forbidden" in errors[0] and f"{NAMESPACE}/{NAME}" in errors[0], errors


def test_scale_to_brings_a_reopened_searchs_workers_back_and_says_why_it_could_not(api, caplog):
    api.set_replicas(NAMESPACE, NAME, 0)
    scaler = WorkerScaler(f"{NAMESPACE}/{NAME}")
    assert scaler.scale_to(3) is True
    assert api.get_replicas(NAMESPACE, NAME) == 3
    assert api.served("patch")[-1].body == {"spec": {"replicas": 3}}
    api.allowed.discard(("patch", NAMESPACE, NAME))
    with caplog.at_level(logging.ERROR, logger="ktc.chief"):
        assert scaler.scale_to(5) is False
    assert api.get_replicas(NAMESPACE, NAME) == 3
    assert f"could not scale statefulset {NAMESPACE}/{NAME} to 5" in caplog.text and "Forbidden" in caplog.text
