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

PODS = ("StatefulSet", "Job", "Pod")


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
        elsewhere = (MATRIX[name] or {}).get("monitoring", {}).get("dashboards", {}).get("namespace")
        expected = elsewhere if elsewhere and meta["labels"].get("grafana_dashboard") else "default"
        assert meta.get("namespace") == expected, f"{obj['kind']}/{meta['name']} has no namespace"


def test_pods_are_locked_down(rendered):
    name, objects = rendered
    scale = (MATRIX[name] or {}).get("chief", {}).get("scaleWorkersOnExit", True)
    openshift = name == "openshift"  # uid, gid and fsGroup left to OpenShift's SCC
    for obj in (o for o in objects if o["kind"] in PODS):
        spec = pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        chief = obj["metadata"]["name"].endswith("-chief")
        assert spec["automountServiceAccountToken"] is (chief and scale), where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        ids = [spec["securityContext"].get(k) for k in ("runAsUser", "runAsGroup", "fsGroup")]
        assert ids == ([None] * 3 if openshift else [1000] * 3), where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True, where
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], where
        mounts = {m["mountPath"]: m for c in spec["containers"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        # The root filesystem is read-only: /tmp is the writable scratch space and HOME.
        assert set(volumes[mounts["/tmp"]["name"]]) == {"name", "emptyDir"}, where
        if "/data" in mounts and obj["kind"] != "Job":
            for c in spec["containers"] + [i for i in spec.get("initContainers", []) if i["name"] == "check-data"]:
                data = next(m for m in c["volumeMounts"] if m["mountPath"] == "/data")
                assert data["readOnly"] is True, (where, c["name"])
            if "persistentVolumeClaim" in volumes["data"]:
                assert volumes["data"]["persistentVolumeClaim"]["readOnly"] is True, where


def test_chief_and_workers_share_config_token_and_volumes(rendered):
    name, objects = rendered
    chief, workers = find(objects, "StatefulSet", "-chief"), find(objects, "StatefulSet", "-worker")
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
    chief = find(objects, "StatefulSet", "-chief")
    assert chief["spec"]["template"]["metadata"]["annotations"]["checksum/config"] == checksum


# --- the chief -----------------------------------------------------------------------------

def test_chief_is_a_one_pod_statefulset_with_the_documented_command():
    """At most one chief: a StatefulSet replaces `<fullname>-chief-0` only once the old pod is gone."""
    objects = render()
    chief = find(objects, "StatefulSet", "kt-cluster-chief")
    assert chief["spec"]["replicas"] == 1 and "volumeClaimTemplates" not in chief["spec"]
    assert chief["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    assert chief["spec"]["podManagementPolicy"] == "Parallel"  # a never-Ready chief is still replaced
    assert not find_all(objects, "Deployment")
    c = container(chief)
    assert c["command"] == ["ktc"]
    assert c["args"] == ["chief", "--config", "/etc/ktc/search.yaml", "--auth-token-file", "/var/run/ktc/token",
                         "--metrics-port", "9100", "--linger", "--final-scrape-seconds", "65",
                         "--scale-workers-on-exit", "$(POD_NAMESPACE)/kt-cluster-worker",
                         "--worker-replicas-file", "/etc/ktc/workers-replicas"]
    e = env(c)
    assert e["KERASTUNER_ORACLE_IP"] == "0.0.0.0" and e["KERASTUNER_TUNER_ID"] == "chief"
    assert e["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 8000, "metrics": 9100}
    service = find(objects, "Service", "kt-cluster-chief")
    assert chief["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["type"] == "ClusterIP"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8000, "metrics": 9100}
    assert service["spec"]["selector"] == chief["spec"]["selector"]["matchLabels"]
    assert chief["spec"]["template"]["metadata"]["labels"].items() >= service["spec"]["selector"].items()


def test_chief_readiness_asks_grpc_health_and_startup_and_liveness_read_metrics():
    """A chief that refuses its config serves /metrics but no gRPC: started and alive, never Ready."""
    c = container(find(render(), "StatefulSet", "-chief"))
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    assert c["readinessProbe"]["grpc"] == {"port": grpc_port}
    assert c["startupProbe"]["httpGet"] == c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    # Liveness never starts before the startup probe has let TensorFlow load and the state restore.
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 300
    minimal = container(find(render(MATRIX["minimal"]), "StatefulSet", "-chief"))
    assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(minimal)


def test_worker_probes_get_metrics():
    c = container(find(render(), "StatefulSet", "-worker"))  # a worker serves no gRPC
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, probe
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 300


def test_chief_budget_is_off_by_default_and_never_holds_an_unhealthy_chief():
    """A budget forbidding the chief's eviction blocks drains, autoscaler scale-down and node
    upgrades; none by default, and when enabled a chief that is not Ready may always go."""
    objects = render()
    assert not find_all(objects, "PodDisruptionBudget")
    annotations = find(objects, "StatefulSet", "-chief")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"] == "tmp"
    workers = find(objects, "StatefulSet", "-worker")["spec"]["template"]["metadata"]["annotations"]
    assert workers["cluster-autoscaler.kubernetes.io/safe-to-evict-local-volumes"] == "tmp,shm"
    enabled = render({"chief": {"pdb": {"enabled": True}}, "workers": {"pdb": {"enabled": True}}})
    chief = find(enabled, "StatefulSet", "-chief")
    pdb = find(enabled, "PodDisruptionBudget", "-chief")
    assert pdb["spec"] == {"maxUnavailable": 0, "unhealthyPodEvictionPolicy": "AlwaysAllow",
                           "selector": chief["spec"]["selector"]}
    assert find(enabled, "PodDisruptionBudget", "-worker")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_chief_may_scale_only_its_own_workers():
    objects = render(release="search-a", namespace="ml")
    role, binding = find(objects, "Role", "-chief"), find(objects, "RoleBinding", "-chief")
    workers = find(objects, "StatefulSet", "-worker")
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["statefulsets/scale"],
                              "resourceNames": [workers["metadata"]["name"]], "verbs": ["get", "patch"]}]
    chief = find(objects, "StatefulSet", "-chief")
    account = pod_spec(chief)["serviceAccountName"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": "ml"}]
    args = container(chief)["args"]
    assert args[args.index("--scale-workers-on-exit") + 1] == "$(POD_NAMESPACE)/search-a-kt-cluster-worker"
    for sa in find_all(objects, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False  # pods opt in
    assert pod_spec(workers)["serviceAccountName"] != account
    # Off: no RBAC, no API token, no flag.
    objects = render({"chief": {"scaleWorkersOnExit": False}})
    assert not find_all(objects, "Role") and not find_all(objects, "RoleBinding")
    chief = find(objects, "StatefulSet", "-chief")
    assert not {"--scale-workers-on-exit", "--worker-replicas-file"} & set(container(chief)["args"])
    assert pod_spec(chief)["automountServiceAccountToken"] is False


def test_chief_pdb_takes_min_available_when_set():
    pdb = find(render(MATRIX["customised"]), "PodDisruptionBudget", "-chief")
    assert pdb["spec"] == {"minAvailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow",
                           "selector": pdb["spec"]["selector"]}


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


def test_the_chief_finds_the_worker_count_to_restore_in_the_configmap():
    """A raised budget reopens a finished search: the chief scales the workers back up to
    workers.replicas, read from the ConfigMap it mounts (not from its pod template, which would
    restart it on every replica change)."""
    objects = render(MATRIX["replicas-5"])
    assert find(objects, "ConfigMap", "-config")["data"]["workers-replicas"] == "5"
    c = container(find(objects, "StatefulSet", "-chief"))
    path = c["args"][c["args"].index("--worker-replicas-file") + 1]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert path == f"{mount['mountPath']}/workers-replicas"


def test_replica_count_and_token_stay_out_of_the_pod_templates():
    """`kubectl scale` and `helm upgrade --set workers.replicas=N` change nothing but replicas:
    no pod restarts, no running trial handed back."""
    def templates(values):
        objects = render(values)
        return [json.dumps(o["spec"]["template"], sort_keys=True) for o in objects if o["kind"] in PODS[:2]]

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
                           "--metrics-port", "9101", "--grace-seconds", "25", "--final-scrape-seconds", "65"]


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
    chief = find(render(), "StatefulSet", "-chief")
    assert "nvidia.com/gpu" not in json.dumps(container(chief)["resources"])


@pytest.mark.parametrize("workers, processes, flags", [
    ({"gpus": 1, "trialsPerGPU": 3}, 3, ["--processes", "3"]),
    ({"gpus": 2, "gpusPerTrial": 1, "trialsPerGPU": 2, "gpuMemoryMB": 20000}, 4,
     ["--processes", "4", "--gpus-per-trial", "1", "--gpus", "2", "--gpu-memory-mb", "20000"]),
    ({"gpus": 2, "gpusPerTrial": 1}, 2, ["--processes", "2", "--gpus-per-trial", "1", "--gpus", "2"]),
    ({"gpus": 4}, 1, []),  # each trial on all four GPUs: one process
    ({"gpus": 0, "trialsPerGPU": 2, "tolerations": []}, 2, ["--processes", "2"]),
])
def test_worker_processes_per_pod_each_get_a_metrics_port_scraped_and_admitted(tmp_path, workers, processes, flags):
    objects = render({"workers": workers, "monitoring": {"serviceMonitor": {"enabled": True}}})
    sts = find(objects, "StatefulSet", "-worker")
    c = container(sts)
    names = ["metrics"] + [f"metrics-{i}" for i in range(1, processes)]
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [(n, 9101 + i) for i, n in enumerate(names)]
    service = find(objects, "Service", "-worker")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == \
           [(n, 9101 + i, n) for i, n in enumerate(names)]
    assert [e["port"] for e in find(objects, "ServiceMonitor", "-worker")["spec"]["endpoints"]] == names
    assert [p["port"] for p in find(objects, "NetworkPolicy", "-worker")["spec"]["ingress"][0]["ports"]] == names
    path = f"{_fake_ktc(tmp_path)}:{os.environ['PATH']}"
    out = subprocess.run(["sh", "-c", *c["args"]], env={"PATH": path, "POD_NAME": f"{sts['metadata']['name']}-3"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "worker-3"  # the pod's id; its processes are worker-3.0, worker-3.1, ...
    assert out[1:] == ["worker", "--config", "/etc/ktc/search.yaml", "--auth-token-file", "/var/run/ktc/token",
                       "--metrics-port", "9101", "--grace-seconds", "25", "--final-scrape-seconds", "65", *flags]


def test_one_gpu_per_trial_needs_gpus():
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match=r"workers.gpusPerTrial: 1 \(one GPU per trial\) needs "
                                                          r"workers.gpus >= 1"):
        render({"workers": {"gpus": 0, "gpusPerTrial": 1}})


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
    for obj in (o for o in objects if o["kind"] in ("StatefulSet", "Pod")):
        volume = next(v for v in pod_spec(obj)["volumes"] if v["name"] == "token")
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    # `lookup` finds the Secret on upgrades; it is the template's only source of the token.
    source = (CHART / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in source and "randAlphaNum 48" in source


def test_existing_token_secret_is_used_as_is():
    objects = render(MATRIX["existing-secret"])
    assert not find_all(objects, "Secret")
    for obj in (o for o in objects if o["kind"] in ("StatefulSet", "Pod")):
        volume = next(v for v in pod_spec(obj)["volumes"] if v["name"] == "token")
        assert volume["secret"]["secretName"] == "search-token"
        assert volume["secret"]["items"] == [{"key": "bearer", "path": "token"}]


def test_neptune_token_comes_from_its_secret_only_when_enabled():
    for obj in (find(render(MATRIX["neptune"]), k, s) for k, s in (("StatefulSet", "-chief"), ("StatefulSet", "-worker"))):
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
    for obj in (find(objects, "StatefulSet", "-chief"), find(objects, "StatefulSet", "-worker")):
        volumes = {v["name"]: v for v in pod_spec(obj)["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "scans", "readOnly": True}
        assert volumes["results"]["persistentVolumeClaim"] == {"claimName": "search-results"}


def test_synthetic_data_job_fills_the_claim_once(tmp_path):
    objects = render(MATRIX["synthetic-data"])
    job = find(objects, "Job", "")
    assert job["metadata"]["name"].startswith("kt-cluster-data-synth-")
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    c = container(job)
    data = next(m for m in c["volumeMounts"] if m["mountPath"] == "/data")
    assert not data.get("readOnly")
    assert "--count 32 --size 64 --classes table_number,stamp,signature --seed 0" in c["args"][0]
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


def test_every_chief_and_worker_checks_the_dataset_last_before_starting(rendered):
    """The data gate runs in every chief and worker pod, whatever the values, after the
    extraInitContainers that may fill the dataset, with the pod's own image."""
    name, objects = rendered
    values = MATRIX[name] or {}
    for kind_name, component in (("-chief", "chief"), ("-worker", "workers")):
        obj = find(objects, "StatefulSet", kind_name)
        inits = pod_spec(obj)["initContainers"]
        extra = [c["name"] for c in values.get(component, {}).get("extraInitContainers", [])]
        assert [c["name"] for c in inits] == extra + ["check-data"], (name, component)
        gate = inits[-1]
        assert gate["command"] == ["ktc", "data", "check", "--config", "/etc/ktc/search.yaml", "--wait", "3600"]
        assert gate["image"] == container(obj)["image"]
        mounts = {m["mountPath"]: m for m in gate["volumeMounts"]}
        assert set(mounts) == {"/etc/ktc", "/data", "/tmp"} and mounts["/data"]["readOnly"] is True
        assert "/var/run/ktc" not in mounts  # the gate needs no token


def test_data_volume_replaces_the_claim_and_extra_init_containers_fill_it():
    objects = render(MATRIX["example-eks-efs-s3"])
    claims = [c["metadata"]["name"] for c in find_all(objects, "PersistentVolumeClaim")]
    assert claims == ["kt-cluster-results"]  # no dataset claim
    for kind_name in ("-chief", "-worker"):
        spec = pod_spec(find(objects, "StatefulSet", kind_name))
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["data"] == {"name": "data", "emptyDir": {"sizeLimit": "20Gi"}}
        fetch, gate = spec["initContainers"]
        script = " ".join(fetch["command"] + fetch["args"])
        assert fetch["name"] == "fetch-data" and "aws s3 sync" in script
        assert script.index("--exclude classes.txt") < script.index("classes.txt /data/classes.txt")  # last
        assert {"name": "data", "mountPath": "/data"} in fetch["volumeMounts"]  # writable for the copy
    bucket = render(MATRIX["example-gke-filestore-gcs"])
    spec = pod_spec(find(bucket, "StatefulSet", "-worker"))
    assert next(v for v in spec["volumes"] if v["name"] == "data")["csi"]["driver"] == "gcsfuse.csi.storage.gke.io"
    assert find(bucket, "StatefulSet", "-worker")["spec"]["template"]["metadata"]["annotations"][
        "gke-gcsfuse/volumes"] == "true"
    assert [c["metadata"]["name"] for c in find_all(bucket, "PersistentVolumeClaim")] == ["kt-cluster-results"]


@pytest.mark.parametrize("name", ["example-aks-azure-files", "example-eks-efs-s3", "example-gke-filestore-gcs"])
def test_documented_cloud_examples_bind_and_need_no_warning(name):
    notes = _notes(MATRIX[name] | MATRIX["example-kube-prometheus-stack"])  # as docs/kubernetes.md combines them
    assert "WARNING" not in notes, notes
    for claim in find_all(render(MATRIX[name]), "PersistentVolumeClaim"):
        assert claim["spec"].get("storageClassName"), claim["metadata"]["name"]
    objects = render(MATRIX[name] | MATRIX["example-kube-prometheus-stack"])
    assert {o["metadata"]["labels"]["release"] for o in objects if o["kind"] in ("ServiceMonitor", "PrometheusRule")} \
        == {"kps"}


def test_extra_volumes_mounts_and_scheduling_values_pass_through():
    objects = render(MATRIX["customised"])
    chief, workers = (pod_spec(find(objects, "StatefulSet", s)) for s in ("-chief", "-worker"))
    assert {"name": "certs", "secret": {"secretName": "ca"}} in chief["volumes"]
    assert {"name": "certs", "mountPath": "/etc/ssl/extra", "readOnly": True} in chief["containers"][0]["volumeMounts"]
    assert "certs" not in {v["name"] for v in workers["volumes"]}
    assert workers["runtimeClassName"] == "nvidia" and workers["schedulerName"] == "volcano"
    assert "runtimeClassName" not in chief and "schedulerName" not in chief
    assert chief["priorityClassName"] == "high"
    tmp = {name: next(v for v in spec["volumes"] if v["name"] == "tmp")["emptyDir"]
           for name, spec in (("chief", chief), ("workers", workers))}
    assert tmp == {"chief": {}, "workers": {"sizeLimit": "8Gi"}}  # tmpSizeLimit null: no limit
    defaults = render()
    limits = [next(v for v in pod_spec(o)["volumes"] if v["name"] == "tmp")["emptyDir"].get("sizeLimit")
              for o in defaults if o["kind"] in PODS]
    assert limits and all(limits), "every /tmp has a size limit by default"


def test_common_labels_reach_every_pod_but_no_selector():
    objects = render(MATRIX["customised"] | {"data": {"synth": {"enabled": True}}})
    for obj in (o for o in objects if o["kind"] in PODS):
        labels = obj["metadata"]["labels"] if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"]["labels"]
        assert labels["team"] == "vision", obj["metadata"]["name"]
        if obj["kind"] == "StatefulSet":
            assert "team" not in obj["spec"]["selector"]["matchLabels"]
    workers = find(objects, "StatefulSet", "-worker")["spec"]["template"]["metadata"]["labels"]
    assert workers["cost-center"] == "ml"  # the component's own podLabels as well
    clash = render({"commonLabels": {"app.kubernetes.io/component": "x"}, "workers": {"podLabels": {"tier": "gpu"}}})
    labels = find(clash, "StatefulSet", "-worker")["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "worker" and labels["tier"] == "gpu"  # selectors win


@pytest.mark.parametrize("values,chief_image,worker_image", [
    (None, "kt-cluster:0.1.0-cpu", "kt-cluster:0.1.0"),
    ({"workers": {"gpus": 0}}, "kt-cluster:0.1.0-cpu", "kt-cluster:0.1.0-cpu"),
    ({"image": {"repository": "r.example.com/ktc", "tag": "1.2.3"}}, "r.example.com/ktc:1.2.3-cpu", "r.example.com/ktc:1.2.3"),
    (MATRIX["customised"], "registry.example.com/ml/kt-cluster-cpu:0.1.0-rc1@sha256:" + "cd" * 32,
     "registry.example.com/ml/kt-cluster:0.1.0-rc1@sha256:" + "ab" * 32),
])
def test_chief_and_jobs_run_the_cpu_image_and_workers_the_gpu_image(values, chief_image, worker_image):
    objects = render((values or {}) | {"data": {"synth": {"enabled": True}}})
    assert container(find(objects, "StatefulSet", "-chief"))["image"] == chief_image
    assert container(find(objects, "Job", ""))["image"] == chief_image
    assert container(find(objects, "Pod", "-test-connection"))["image"] == chief_image
    assert container(find(objects, "StatefulSet", "-worker"))["image"] == worker_image


def test_openshift_leaves_uid_gid_and_fs_group_to_the_scc():
    """`auto` (the default) does it where the cluster serves security.openshift.io; offline there is
    no such API, so only `force` shows it here."""
    for obj in (o for o in render(MATRIX["openshift"] | {"data": {"synth": {"enabled": True}}}) if o["kind"] in PODS):
        spec = pod_spec(obj)
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(spec["securityContext"])
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"] + spec.get("initContainers", []):
            assert not {"runAsUser", "runAsGroup"} & set(c["securityContext"])
    assert pod_spec(find(render(), "StatefulSet", "-chief"))["securityContext"]["runAsUser"] == 1000



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
    for obj, port in ((find(render(), "StatefulSet", "-chief"), "9100"), (find(render(), "StatefulSet", "-worker"), "9101")):
        annotations = obj["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port
        assert annotations["prometheus.io/path"] == "/metrics"
    for values in (MATRIX["monitoring"], MATRIX["minimal"]):
        assert "prometheus.io/scrape" not in json.dumps(render(values))


@pytest.mark.parametrize("values, seconds", [
    (None, "65"),                                         # scraped by their annotations
    ("monitoring", "65"),                                 # by ServiceMonitors
    ("minimal", "0"),                                     # by nothing: no wait
    ({"monitoring": {"finalScrapeSeconds": 0}}, "0"),
    ({"monitoring": {"finalScrapeSeconds": 120}}, "120"),
])
def test_a_finished_searchs_pods_wait_for_a_last_scrape_only_when_something_scrapes_them(values, seconds):
    objects = render(MATRIX[values] if isinstance(values, str) else values)
    chief = container(find(objects, "StatefulSet", "-chief"))["args"]
    assert chief[chief.index("--final-scrape-seconds") + 1] == seconds
    worker = container(find(objects, "StatefulSet", "-worker"))["args"][0]
    assert f" --final-scrape-seconds {seconds}" in worker


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


def test_prometheus_rule_carries_the_rules_file_with_runbooks_at_the_given_base():
    groups = yaml.safe_load((CHART / "rules" / "alerts.yaml").read_text())["groups"]
    rules = find_all(render(MATRIX["monitoring"]), "PrometheusRule")
    assert len(rules) == 1 and rules[0]["metadata"]["labels"]["release"] == "prometheus"
    rendered = rules[0]["spec"]["groups"]
    base = MATRIX["monitoring"]["monitoring"]["prometheusRule"]["runbookBaseUrl"]
    alerts = [r for g in rendered for r in g["rules"] if "alert" in r]
    assert alerts and all(r["annotations"]["runbook_url"] == f"{base}#{r['alert'].lower()}" for r in alerts)
    for group in groups:  # all else as in the file
        for rule in group["rules"]:
            rule.get("annotations", {}).pop("runbook_url", None)
    for group in rendered:
        for rule in group["rules"]:
            rule.get("annotations", {}).pop("runbook_url", None)
    assert rendered == groups
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


def _dashboards(objects):
    return [o for o in find_all(objects, "ConfigMap") if o["metadata"]["labels"].get("grafana_dashboard") == "1"]


def _as_shipped(cm: dict) -> tuple[str, dict]:
    (key, text), = cm["data"].items()
    return key, json.loads(text)


def test_one_dashboard_config_map_per_dashboard_file(tmp_path):
    files = sorted((CHART / "dashboards").glob("*.json"))
    shipped = _dashboards(render(release="s1", namespace="ml"))
    assert len(shipped) == len(files)
    for cm in shipped:
        key, dashboard = _as_shipped(cm)
        base = key.removeprefix("ml.s1-kt-cluster.")
        original = json.loads((CHART / "dashboards" / base).read_text())
        # Only what makes the copy this release's differs from the file.
        tag = next(t for t in dashboard["tags"] if t.startswith("ktc-"))
        assert dashboard["uid"] == f"{original['uid']}-{tag.removeprefix('ktc-')}"
        assert dashboard["title"] == f"{original['title']} · ml/s1-kt-cluster"
        assert dashboard["tags"] == original["tags"] + [tag]
        assert [link["tags"] for link in dashboard["links"]] == [link["tags"] + [tag] for link in original["links"]]
        current = {v["name"]: v.get("current") for v in dashboard["templating"]["list"]}
        assert current["namespace"]["value"] == ["ml"] and current["search"]["value"] == ["s1-kt-cluster"]
        for d in (dashboard, original):
            for key_ in ("uid", "title", "tags", "links"):
                d.pop(key_)
            for v in d["templating"]["list"]:
                if v["name"] in ("namespace", "search"):
                    v.pop("current")
        assert dashboard == original
        # `kubectl apply` copies the object into an annotation, limited to 256 KiB.
        assert len(json.dumps(cm)) < 200_000, key

    chart = _chart_copy(tmp_path)
    for f in (chart / "dashboards").glob("*.json"):
        f.unlink()
    assert _dashboards(render(chart=chart)) == []  # no dashboard files: nothing rendered
    (chart / "dashboards" / "Search_Overview.json").write_text(json.dumps(
        {"uid": "s", "title": "Search", "tags": [], "links": [], "templating": {"list": []}, "panels": []}))
    made = {cm["metadata"]["name"]: cm for cm in _dashboards(render(chart=chart))}
    assert set(made) == {"kt-cluster-dashboard-search-overview"}
    assert _as_shipped(made["kt-cluster-dashboard-search-overview"])[0] == "default.kt-cluster.Search_Overview.json"
    assert _dashboards(render(MATRIX["minimal"], chart=chart)) == []
    moved = _dashboards(render({"monitoring": {"dashboards": {"namespace": "grafana"}}}, chart=chart))
    assert {cm["metadata"]["namespace"] for cm in moved} == {"grafana"}


def test_several_searches_never_share_a_dashboard_key_uid_or_title():
    """Grafana's sidecar writes the keys of every labelled ConfigMap of the cluster into one folder,
    and Grafana wants unique uids and titles: same keys would overwrite each other, and
    uninstalling one search would remove the others' dashboards."""
    releases = [("s1", "ml"), ("s2", "ml"), ("s1", "vision")]  # same name in another namespace too
    seen: dict[str, set] = {"key": set(), "uid": set(), "title": set()}
    for release, namespace in releases:
        for cm in _dashboards(render(release=release, namespace=namespace)):
            key, dashboard = _as_shipped(cm)
            for what, value in (("key", key), ("uid", dashboard["uid"]), ("title", dashboard["title"])):
                assert value not in seen[what], (what, value)
                seen[what].add(value)
            assert len(dashboard["uid"]) <= 40 and all(len(t) <= 50 for t in dashboard["tags"])
    assert all(len(values) == 4 * len(releases) for values in seen.values())
    # In Grafana's namespace, the ConfigMaps of same-named releases of two namespaces meet too.
    shared = {"monitoring": {"dashboards": {"namespace": "monitoring"}}}
    names = [cm["metadata"]["name"] for release, namespace in releases
             for cm in _dashboards(render(shared, release=release, namespace=namespace))]
    assert len(set(names)) == len(names) == 4 * len(releases), names


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
    assert "kubectl -n ml cp -c chief demo-kt-cluster-chief-0:/results ./results" in notes
    assert "scale statefulset/demo-kt-cluster-worker" in notes
    assert "kubectl -n ml logs demo-kt-cluster-chief-0 -c check-data" in notes
    assert "<chart>" not in notes  # a command to copy, not a template to fill in
    # --reuse-values would skip new chart defaults; --reset-then-reuse-values does not.
    assert "--reuse-values" not in notes.replace("--reset-then-reuse-values", "")


def _notes(values=None) -> str:
    return render_files(values)["kt-cluster/templates/NOTES.txt"]


def test_notes_warn_when_read_write_many_meets_the_default_storage_class():
    warning = "ReadWriteMany of the cluster's default"
    assert warning in _notes() and "kt-cluster-data and kt-cluster-results ask" in _notes()
    both = {v: {"persistence": {"storageClassName": "efs-sc"}} for v in ("data", "results")}
    assert warning not in _notes(both)
    assert warning not in _notes(MATRIX["existing-claims"])
    only_results = _notes({"data": {"volume": {"emptyDir": {}}}})  # the dataset is no claim
    assert "the claim kt-cluster-results asks" in only_results and "kt-cluster-data" not in only_results
    rwo = {v: {"persistence": {"accessModes": ["ReadWriteOnce"]}} for v in ("data", "results")}
    assert warning not in _notes(rwo)


def test_notes_say_who_may_scrape_and_warn_about_the_release_label():
    notes = _notes({"monitoring": {"serviceMonitor": {"enabled": True}}})
    assert "runs in\n   namespace(s) monitoring" in notes
    assert "kube-prometheus-stack selects ServiceMonitors labelled release=<its release name>" in notes
    assert "kube-prometheus-stack selects" not in _notes(MATRIX["monitoring"])  # release label given
    closed = _notes({"monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}},
                     "networkPolicy": {"metricsNamespaces": []}})
    assert "networkPolicy.metricsNamespaces is empty, so the NetworkPolicy closes the metrics ports" in closed
    annotations = _notes({"networkPolicy": {"metricsNamespaceSelector": {"matchLabels": {"team": "obs"}}}})
    assert 'only namespaces matching {"matchLabels":{"team":"obs"}} reach the metrics ports' in annotations


def _kept_replicas(tmp_path, cases: list[dict]) -> list[int]:
    """kt-cluster.keptReplicas on each case ({live, replicas, checksum}), rendered by Helm."""
    chart = _chart_copy(tmp_path)
    (chart / "templates" / "zz-probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n  replicas: \""
        "{{ range $c := `" + json.dumps(cases) + "` | fromJsonArray }}"
        "{{ include \"kt-cluster.keptReplicas\" $c }},{{ end }}\"\n")
    probe = find(render(chart=chart), "ConfigMap", "probe")
    return [int(n) for n in probe["data"]["replicas"].rstrip(",").split(",")]


def test_upgrades_keep_the_live_worker_count_unless_replicas_or_the_config_change(tmp_path):
    """Without this an upgrade (even a label change) would render workers.replicas again, and the
    finished search's GPU workers would start, hear that it is over and exit, in a loop."""
    workers = find(render(), "StatefulSet", "-worker")
    checksum = workers["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert workers["metadata"]["annotations"]["kt-cluster/workers-replicas"] == "2"

    def live(replicas, annotated="2", pod_checksum=checksum):
        obj = json.loads(json.dumps(workers))
        obj["spec"]["replicas"] = replicas
        obj["spec"]["template"]["metadata"]["annotations"]["checksum/config"] = pod_checksum
        if annotated is None:
            del obj["metadata"]["annotations"]["kt-cluster/workers-replicas"]
        else:
            obj["metadata"]["annotations"]["kt-cluster/workers-replicas"] = annotated
        return obj

    cases = [
        {"live": {}, "replicas": 2, "checksum": checksum},  # install, or an offline render
        {"live": live(0), "replicas": 2, "checksum": checksum},  # search over: the chief set 0
        {"live": live(5), "replicas": 2, "checksum": checksum},  # kubectl scale mid-search
        {"live": live(0), "replicas": 4, "checksum": checksum},  # workers.replicas changed
        {"live": live(0), "replicas": 2, "checksum": "0" * 64},  # a new search config
        {"live": live(3, annotated=None), "replicas": 2, "checksum": checksum},  # made by an older chart
    ]
    assert _kept_replicas(tmp_path, cases) == [2, 0, 5, 4, 2, 2]
    # Offline (helm template, Argo CD) there is nothing to look up: the values' count.
    assert find(render(MATRIX["replicas-5"]), "StatefulSet", "-worker")["spec"]["replicas"] == 5
    source = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "apps/v1" "StatefulSet" .Release.Namespace (include "kt-cluster.worker" .)' in source


@pytest.mark.parametrize("workers, says", [
    ({}, "with 2 worker(s) of 1 GPU(s) each."),
    ({"gpus": 2}, "with 2 worker(s) of 2 GPU(s) each, each trial on all 2 GPUs."),
    ({"gpus": 2, "gpusPerTrial": 1, "trialsPerGPU": 2},
     "with 2 worker(s) of 2 GPU(s) each, 4 worker processes (trials at once) per pod, one GPU per trial."),
])
def test_notes_say_how_the_workers_use_their_gpus(workers, says):
    notes = render_files({"workers": workers})["kt-cluster/templates/NOTES.txt"]
    assert says in notes.strip().splitlines()[0]
