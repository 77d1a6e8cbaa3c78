"""The Helm chart, rendered offline by Helm's own engine: what each value turns into."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chart_support import CHART, MATRIX, container, env, find, find_all, pod_spec, render, render_files
from kt_cluster.core.config import from_dict

PODS = ("Deployment", "StatefulSet", "Job", "Pod")


@pytest.fixture(scope="module", params=sorted(MATRIX))
def rendered(request):
    return request.param, render(MATRIX[request.param])


# --- invariants over the whole values matrix -----------------------------------------------

def test_every_object_is_labelled_and_named_within_limits(rendered):
    name, objects = rendered
    assert objects
    for obj in objects:
        meta = obj["metadata"]
        assert len(meta["name"]) <= 63, meta["name"]
        assert meta["labels"]["app.kubernetes.io/instance"] == "kt-cluster"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert meta.get("namespace") == "default", f"{obj['kind']}/{meta['name']} has no namespace"


def test_pods_are_locked_down(rendered):
    name, objects = rendered
    scale = (MATRIX[name] or {}).get("chief", {}).get("scaleWorkersOnExit", True)
    for obj in (o for o in objects if o["kind"] in PODS):
        spec = pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        chief = obj["kind"] == "Deployment"
        assert spec["automountServiceAccountToken"] is (chief and scale), where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == 1000 and spec["securityContext"]["fsGroup"] == 1000, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], where
        mounts = {m["mountPath"]: m for c in spec["containers"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        # The root filesystem is read-only: /tmp is the writable scratch space and HOME.
        assert volumes[mounts["/tmp"]["name"]] == {"name": "tmp", "emptyDir": {}}, where
        if "/data" in mounts and obj["kind"] != "Job":
            assert mounts["/data"]["readOnly"] is True, where
            assert volumes["data"]["persistentVolumeClaim"]["readOnly"] is True, where


def test_chief_and_workers_share_config_token_and_volumes(rendered):
    name, objects = rendered
    chief, workers = find(objects, "Deployment", "-chief"), find(objects, "StatefulSet", "-worker")
    for obj in (chief, workers):
        c = container(obj)
        assert env(c)["HOME"] == "/tmp" and env(c)["KERAS_HOME"] == "/tmp/.keras"
        assert env(c)["KERASTUNER_ORACLE_PORT"] == "8000"
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert {"/etc/ktc", "/var/run/ktc", "/data", "/results", "/tmp"} <= set(mounts)
    assert pod_spec(chief)["volumes"][:4] == pod_spec(workers)["volumes"][:4]
    annotations = [o["spec"]["template"]["metadata"]["annotations"] for o in (chief, workers)]
    assert annotations[0]["checksum/config"] == annotations[1]["checksum/config"]


def test_search_config_is_accepted_by_ktc(rendered):
    """The ConfigMap's search.yaml is exactly what `ktc chief/worker --config` loads."""
    name, objects = rendered
    text = find(objects, "ConfigMap", "-config")["data"]["search.yaml"]
    config = from_dict(yaml.safe_load(text))
    assert config.results == "/results" and config.data.path == "/data"
    search = (MATRIX[name] or {}).get("search", {})
    fullname = (MATRIX[name] or {}).get("fullnameOverride", "kt-cluster")
    assert config.search_id == search.get("search_id", fullname)
    for key, value in search.items():
        if key != "data":
            assert getattr(config, key) == value, key
    for key, value in search.get("data", {}).items():
        assert getattr(config.data, key) == value, key
    checksum = hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
    chief = find(objects, "Deployment", "-chief")
    assert chief["spec"]["template"]["metadata"]["annotations"]["checksum/config"] == checksum


# --- the chief -----------------------------------------------------------------------------

def test_chief_runs_one_recreated_replica_with_the_documented_command():
    objects = render()
    chief = find(objects, "Deployment", "kt-cluster-chief")
    assert chief["spec"]["replicas"] == 1 and chief["spec"]["strategy"] == {"type": "Recreate"}
    c = container(chief)
    assert c["command"] == ["ktc"]
    assert c["args"] == ["chief", "--config", "/etc/ktc/search.yaml", "--auth-token-file", "/var/run/ktc/token",
                         "--metrics-port", "9100", "--linger",
                         "--scale-workers-on-exit", "$(POD_NAMESPACE)/kt-cluster-worker"]
    e = env(c)
    assert e["KERASTUNER_ORACLE_IP"] == "0.0.0.0" and e["KERASTUNER_TUNER_ID"] == "chief"
    assert e["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 8000, "metrics": 9100}
    service = find(objects, "Service", "kt-cluster-chief")
    assert service["spec"]["type"] == "ClusterIP"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8000, "metrics": 9100}
    assert service["spec"]["selector"] == chief["spec"]["selector"]["matchLabels"]
    assert chief["spec"]["template"]["metadata"]["labels"].items() >= service["spec"]["selector"].items()
    pdb = find(objects, "PodDisruptionBudget", "-chief")
    assert pdb["spec"]["maxUnavailable"] == 0 and pdb["spec"]["selector"] == chief["spec"]["selector"]


@pytest.mark.parametrize("component", ["chief", "worker"])
def test_probes_get_metrics(component):
    obj = find(render(), "Deployment" if component == "chief" else "StatefulSet", f"-{component}")
    c = container(obj)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
    # Liveness never starts before the startup probe has let TensorFlow load.
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 300
    minimal = container(find(render(MATRIX["minimal"]), "Deployment", "-chief"))
    assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(minimal)


def test_chief_may_scale_only_its_own_workers():
    objects = render(release="search-a", namespace="ml")
    role, binding = find(objects, "Role", "-chief"), find(objects, "RoleBinding", "-chief")
    workers = find(objects, "StatefulSet", "-worker")
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["statefulsets/scale"],
                              "resourceNames": [workers["metadata"]["name"]], "verbs": ["get", "patch", "update"]}]
    chief = find(objects, "Deployment", "-chief")
    account = pod_spec(chief)["serviceAccountName"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ml"}]
    assert container(chief)["args"][-2:] == ["--scale-workers-on-exit", "$(POD_NAMESPACE)/search-a-kt-cluster-worker"]
    for sa in find_all(objects, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False  # pods opt in
    assert pod_spec(workers)["serviceAccountName"] != account
    # Off: no RBAC, no API token, no flag.
    objects = render({"chief": {"scaleWorkersOnExit": False}})
    assert not find_all(objects, "Role") and not find_all(objects, "RoleBinding")
    chief = find(objects, "Deployment", "-chief")
    assert "--scale-workers-on-exit" not in container(chief)["args"]
    assert pod_spec(chief)["automountServiceAccountToken"] is False


def test_chief_pdb_takes_min_available_when_set():
    pdb = find(render(MATRIX["customised"]), "PodDisruptionBudget", "-chief")
    assert pdb["spec"] == {"minAvailable": 1, "selector": pdb["spec"]["selector"]}
    assert not find_all(render(MATRIX["minimal"]), "PodDisruptionBudget")


# --- the workers ---------------------------------------------------------------------------

def test_workers_are_a_parallel_statefulset_behind_a_headless_service():
    objects = render(MATRIX["replicas-5"])
    sts = find(objects, "StatefulSet", "kt-cluster-worker")
    assert sts["spec"]["replicas"] == 5 and sts["spec"]["podManagementPolicy"] == "Parallel"
    service = find(objects, "Service", "kt-cluster-worker")
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    e = env(container(sts))
    assert e["KERASTUNER_ORACLE_IP"] == "kt-cluster-chief"  # the chief's Service, same namespace
    assert e["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "KERASTUNER_TUNER_ID" not in e  # computed from the pod name


def test_replica_count_and_token_stay_out_of_the_pod_templates():
    """`kubectl scale` and `helm upgrade --set workers.replicas=N` change nothing but replicas:
    no pod restarts, no running trial handed back."""
    def templates(values):
        objects = render(values)
        return [json.dumps(o["spec"]["template"], sort_keys=True) for o in objects if o["kind"] in PODS[:3]]

    assert templates(None) == templates(MATRIX["replicas-5"]) == templates({"workers": {"replicas": 0}})
    changed = templates({"search": {"max_trials": 99}})
    assert changed != templates(None)  # a new search config rolls the pods (checksum/config)


def _fake_ktc(tmp_path: Path) -> Path:
    """A `ktc` on PATH that prints its tuner id and arguments instead of training."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "ktc"
    script.write_text('#!/bin/sh\necho "$KERASTUNER_TUNER_ID $*"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


@pytest.mark.parametrize("release,values", [
    ("chief-search", None),
    ("kt-cluster", {"fullnameOverride": "the-chief"}),
    ("x", {"nameOverride": "chief"}),
])
def test_worker_tuner_ids_come_from_the_ordinal_and_never_contain_chief(tmp_path, release, values):
    sts = find(render(values, release=release), "StatefulSet", "-worker")
    assert "chief" in sts["metadata"]["name"]  # the case that matters
    c = container(sts)
    assert c["command"] == ["sh", "-c"]
    path = f"{_fake_ktc(tmp_path)}:{os.environ['PATH']}"
    for ordinal in (0, 1, 12):
        pod = f"{sts['metadata']['name']}-{ordinal}"
        out = subprocess.run(["sh", "-c", *c["args"]], env={"PATH": path, "POD_NAME": pod},
                             capture_output=True, text=True, check=True).stdout.split()
        assert out[0] == f"worker-{ordinal}"
        assert out[1:] == ["worker", "--config", "/etc/ktc/search.yaml", "--auth-token-file", "/var/run/ktc/token",
                           "--metrics-port", "9101", "--grace-seconds", "25"]


@pytest.mark.parametrize("values", [None, MATRIX["customised"], {"workers": {"graceSeconds": 12.5,
                                                                             "terminationGracePeriodSeconds": 18}}])
def test_workers_outlive_their_grace_seconds(values):
    sts = find(render(values), "StatefulSet", "-worker")
    script = container(sts)["args"][0]
    grace = float(script.split("--grace-seconds", 1)[1].split()[0])
    assert pod_spec(sts)["terminationGracePeriodSeconds"] >= grace + 5


def test_too_short_termination_grace_is_refused():
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match=r"workers.terminationGracePeriodSeconds \(29\) must be at "
                                                          r"least workers.graceSeconds \(25\) \+ 5"):
        render({"workers": {"terminationGracePeriodSeconds": 29}})


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_gpus_are_requested_and_limited(gpus):
    sts = find(render({"workers": {"gpus": gpus}}), "StatefulSet", "-worker")
    resources = container(sts)["resources"]
    for kind in ("requests", "limits"):
        assert resources[kind].get("nvidia.com/gpu") == (gpus or None), kind
    assert resources["requests"]["memory"] == "8Gi"
    tolerations = pod_spec(sts)["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    chief = find(render(), "Deployment", "-chief")
    assert "nvidia.com/gpu" not in json.dumps(container(chief)["resources"])


def test_worker_scheduling_values_pass_through():
    values = MATRIX["customised"]["workers"]
    spec = pod_spec(find(render(MATRIX["customised"]), "StatefulSet", "-worker"))
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["topologySpreadConstraints"] == values["topologySpreadConstraints"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert not any(v["name"] == "shm" for v in spec["volumes"])  # shmSize null
    c = spec["containers"][0]
    assert c["image"] == "registry.example.com/ml/kt-cluster:0.1.0-rc1@sha256:" + "ab" * 32
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    shm = next(v for v in pod_spec(find(render(), "StatefulSet", "-worker"))["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}


# --- the token -----------------------------------------------------------------------------

def test_token_secret_is_rendered_once_and_kept():
    objects = render()
    secrets = find_all(objects, "Secret")
    assert len(secrets) == 1
    secret = secrets[0]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) == 48 and token.isalnum()
    for obj in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Pod")):
        volume = next(v for v in pod_spec(obj)["volumes"] if v["name"] == "token")
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    # `lookup` finds the Secret on upgrades; it is the template's only source of the token.
    source = (CHART / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in source and "randAlphaNum 48" in source


def test_existing_token_secret_is_used_as_is():
    objects = render(MATRIX["existing-secret"])
    assert not find_all(objects, "Secret")
    for obj in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Pod")):
        volume = next(v for v in pod_spec(obj)["volumes"] if v["name"] == "token")
        assert volume["secret"]["secretName"] == "search-token"
        assert volume["secret"]["items"] == [{"key": "bearer", "path": "token"}]


def test_neptune_token_comes_from_its_secret_only_when_enabled():
    for obj in (find(render(MATRIX["neptune"]), k, s) for k, s in (("Deployment", "-chief"), ("StatefulSet", "-worker"))):
        e = env(container(obj))
        assert e["NEPTUNE_PROJECT"] == "team/unet"
        assert e["NEPTUNE_API_TOKEN"] == {"secretKeyRef": {"name": "neptune", "key": "api-token"}}
    assert "NEPTUNE" not in json.dumps(render())


# --- volumes and data ----------------------------------------------------------------------

def test_chart_creates_kept_read_write_many_claims():
    claims = {c["metadata"]["name"]: c for c in find_all(render(), "PersistentVolumeClaim")}
    assert set(claims) == {"kt-cluster-data", "kt-cluster-results"}
    for claim in claims.values():
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert "storageClassName" not in claim["spec"]  # the cluster's default class
    custom = {c["metadata"]["name"]: c for c in find_all(render(MATRIX["customised"]), "PersistentVolumeClaim")}
    assert custom["unet-search-data"]["spec"]["storageClassName"] == ""
    assert custom["unet-search-data"]["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert custom["unet-search-results"]["spec"]["storageClassName"] == "nfs"


def test_existing_claims_are_mounted_instead():
    objects = render(MATRIX["existing-claims"])
    assert not find_all(objects, "PersistentVolumeClaim")
    for obj in (find(objects, "Deployment", "-chief"), find(objects, "StatefulSet", "-worker")):
        volumes = {v["name"]: v for v in pod_spec(obj)["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "scans", "readOnly": True}
        assert volumes["results"]["persistentVolumeClaim"] == {"claimName": "search-results"}


def test_synthetic_data_job_fills_the_volume_once_and_workers_wait(tmp_path):
    objects = render(MATRIX["synthetic-data"])
    job = find(objects, "Job", "")
    assert job["metadata"]["name"].startswith("kt-cluster-data-synth-")
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    c = container(job)
    data = next(m for m in c["volumeMounts"] if m["mountPath"] == "/data")
    assert not data.get("readOnly")
    assert "--count 32 --size 64 --classes table_number,stamp,signature --seed 0" in c["args"][0]
    init = pod_spec(find(objects, "StatefulSet", "-worker"))["initContainers"]
    assert [i["name"] for i in init] == ["wait-for-data"] and "/data/classes.txt" in init[0]["command"][-1]
    assert "initContainers" not in pod_spec(find(render(), "StatefulSet", "-worker"))
    assert not find_all(render(), "Job")
    # A change of the Job's pod template changes its name: Helm replaces it, never patches it.
    other = find(render({"data": {"synth": {"enabled": True, "count": 33}}}), "Job", "")
    assert other["metadata"]["name"] != job["metadata"]["name"]

    # Run the Job's script against a local directory, with the real `ktc data synth`.
    script = c["args"][0].replace("/data", str(tmp_path / "data"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ktc").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m kt_cluster "$@"\n')
    (bin_dir / "ktc").chmod(0o755)
    run_env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    data_dir = tmp_path / "data"
    (data_dir / "lost+found").mkdir(parents=True)  # a fresh ext4 volume is not quite empty
    first = subprocess.run(["sh", "-c", script], env=run_env, capture_output=True, text=True, cwd=Path.cwd())
    assert first.returncode == 0, first.stderr
    assert (data_dir / "classes.txt").read_text().split() == ["table_number", "stamp", "signature"]
    assert len(list((data_dir / "train" / "images").iterdir())) == 24
    assert not (data_dir / ".ktc-synth").exists()
    again = subprocess.run(["sh", "-c", script], env=run_env, capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to generate" in again.stdout
    shutil.rmtree(data_dir)
    (data_dir / "mine").mkdir(parents=True)
    refused = subprocess.run(["sh", "-c", script], env=run_env, capture_output=True, text=True)
    assert refused.returncode == 1 and "not overwriting" in refused.stderr
    assert [p.name for p in data_dir.iterdir()] == ["mine"]


# --- network policy ------------------------------------------------------------------------

def test_network_policy_admits_workers_and_clients_to_grpc_and_monitoring_to_metrics():
    objects = render()
    chief_policy = find(objects, "NetworkPolicy", "-chief")
    worker_labels = find(objects, "StatefulSet", "-worker")["spec"]["template"]["metadata"]["labels"]
    test_pod = find(objects, "Pod", "-test-connection")
    grpc, metrics = chief_policy["spec"]["ingress"]
    assert grpc["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    selectors = [peer["podSelector"]["matchLabels"] for peer in grpc["from"]]
    assert worker_labels.items() >= selectors[0].items()
    assert selectors[1] == {"kt-cluster-client": "true"}
    assert test_pod["metadata"]["labels"]["kt-cluster-client"] == "true"
    monitoring = [{"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"]}]}}]
    assert metrics == {"from": monitoring, "ports": [{"port": "metrics", "protocol": "TCP"}]}
    worker_policy = find(objects, "NetworkPolicy", "-worker")
    assert worker_policy["spec"]["ingress"] == [metrics | {"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    assert all(p["spec"]["policyTypes"] == ["Ingress"] for p in find_all(objects, "NetworkPolicy"))
    assert "ingress" not in find(objects, "NetworkPolicy", "-deny-ingress")["spec"]
    assert not find_all(render(MATRIX["no-network-policy"]), "NetworkPolicy")
    # No scrapers: the metrics ports close, gRPC stays open to the workers and clients.
    closed = render({"networkPolicy": {"metricsNamespaces": []}})
    assert [rule["ports"][0]["port"] for rule in find(closed, "NetworkPolicy", "-chief")["spec"]["ingress"]] == ["grpc"]
    assert "ingress" not in find(closed, "NetworkPolicy", "-worker")["spec"]


def test_network_policy_values_pass_through():
    policy = find(render(MATRIX["customised"]), "NetworkPolicy", "-chief")
    grpc, metrics = policy["spec"]["ingress"]
    assert grpc["from"][-1] == {"podSelector": {"matchLabels": {"role": "dashboard"}}}
    assert grpc["from"][1] == {"podSelector": {"matchLabels": {"unet-search-client": "true"}}}
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"name": "observability"}},
                                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]


# --- monitoring ----------------------------------------------------------------------------

def test_pods_carry_scrape_annotations_unless_a_service_monitor_scrapes_them():
    for obj, port in ((find(render(), "Deployment", "-chief"), "9100"), (find(render(), "StatefulSet", "-worker"), "9101")):
        annotations = obj["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port
        assert annotations["prometheus.io/path"] == "/metrics"
    for values in (MATRIX["monitoring"], MATRIX["minimal"]):
        assert "prometheus.io/scrape" not in json.dumps(render(values))


def test_service_monitors_scrape_the_chief_and_worker_services():
    objects = render(MATRIX["monitoring"])
    for component in ("chief", "worker"):
        monitor = find(objects, "ServiceMonitor", f"-{component}")
        service = find(objects, "Service", f"-{component}")
        assert service["metadata"]["labels"].items() >= monitor["spec"]["selector"]["matchLabels"].items()
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["default"]}
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        assert monitor["spec"]["endpoints"] == [{
            "port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "5s",
            "relabelings": [{"action": "labeldrop", "regex": "pod_template_hash"}]}]
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    assert not find_all(render(), "ServiceMonitor")


def _chart_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "kt-cluster"
    shutil.copytree(CHART, copy)
    return copy


def test_prometheus_rule_carries_the_rules_file():
    groups = yaml.safe_load((CHART / "rules" / "alerts.yaml").read_text())["groups"]
    rules = find_all(render(MATRIX["monitoring"]), "PrometheusRule")
    if not groups:  # the placeholder renders nothing
        assert rules == []
    else:
        assert len(rules) == 1 and rules[0]["spec"]["groups"] == groups
        assert rules[0]["metadata"]["labels"]["release"] == "prometheus"
    assert not find_all(render(), "PrometheusRule")


def test_prometheus_rule_from_a_given_rules_file(tmp_path):
    chart = _chart_copy(tmp_path)
    groups = [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0", "for": "5m",
                                       "annotations": {"summary": "{{ $labels.instance }} is down"}}]}]
    (chart / "rules" / "alerts.yaml").write_text(yaml.safe_dump({"groups": groups}))
    rule = find(render(MATRIX["monitoring"], chart=chart), "PrometheusRule", "")
    assert rule["spec"]["groups"] == groups  # not templated: Prometheus' own {{ }} survive
    (chart / "rules" / "alerts.yaml").write_text("groups: []\n")
    assert not find_all(render(MATRIX["monitoring"], chart=chart), "PrometheusRule")


def test_one_dashboard_config_map_per_dashboard_file(tmp_path):
    def dashboards(objects):
        return [o for o in find_all(objects, "ConfigMap") if o["metadata"]["labels"].get("grafana_dashboard") == "1"]

    files = sorted((CHART / "dashboards").glob("*.json")) if (CHART / "dashboards").is_dir() else []
    shipped = dashboards(render())
    assert len(shipped) == len(files)
    for cm in shipped:
        (key, text), = cm["data"].items()
        assert json.loads(text) == json.loads((CHART / "dashboards" / key).read_text())
        # `kubectl apply` copies the object into an annotation, limited to 256 KiB.
        assert len(json.dumps(cm)) < 200_000, key

    chart = _chart_copy(tmp_path)
    (chart / "dashboards").mkdir(exist_ok=True)
    for f in (chart / "dashboards").glob("*.json"):
        f.unlink()
    assert dashboards(render(chart=chart)) == []  # no dashboard files: nothing rendered
    (chart / "dashboards" / "Search_Overview.json").write_text(json.dumps({"title": "Search", "panels": []}))
    (chart / "dashboards" / "workers.json").write_text(json.dumps({"title": "Workers", "uid": "w"}, indent=2))
    made = {cm["metadata"]["name"]: cm for cm in dashboards(render(chart=chart))}
    assert set(made) == {"kt-cluster-dashboard-search-overview", "kt-cluster-dashboard-workers"}
    assert json.loads(made["kt-cluster-dashboard-workers"]["data"]["workers.json"]) == {"title": "Workers", "uid": "w"}
    assert dashboards(render(MATRIX["minimal"], chart=chart)) == []
    moved = dashboards(render({"monitoring": {"dashboards": {"namespace": "grafana"}}}, chart=chart))
    assert {cm["metadata"]["namespace"] for cm in moved} == {"grafana"}


# --- helm test and NOTES -------------------------------------------------------------------

def test_helm_test_pod_asks_the_chief_for_status():
    pod = find(render(), "Pod", "-test-connection")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = container(pod)["args"][0]
    assert "ktc status --chief kt-cluster-chief:8000 --auth-token-file /var/run/ktc/token" in script
    assert pod["spec"]["restartPolicy"] == "Never"


def test_notes_tell_how_to_follow_and_fetch_the_search():
    notes = render_files(release="demo", namespace="ml")["kt-cluster/templates/NOTES.txt"]
    assert "kubectl -n ml port-forward svc/demo-kt-cluster-chief 8000" in notes
    assert "ktc status --chief localhost:8000" in notes
    assert "get secret demo-kt-cluster-auth -o jsonpath='{.data.token}' | base64 -d" in notes
    assert "kubectl -n ml cp -c chief" in notes and ":/results ./results" in notes
    assert "scale statefulset/demo-kt-cluster-worker" in notes
