"""The chart's own pods, run as local processes: a real 2-worker search wired only by the chart.

The chart is rendered by Helm's engine with a tiny search; the chief's and the workers'
StatefulSets' containers then run here as Kubernetes would run them:

- command and args exactly as rendered (the worker's `sh -c` script included), `$(VAR)`
  expanded as the kubelet does, with `ktc` on PATH running this interpreter's `ktc`;
- env from the rendered entries (`fieldRef` metadata.name/namespace resolved per pod);
- every volume materialised in a temp dir: a claim is one dir shared by the pods that mount it,
  a ConfigMap or Secret is written from the rendered object (the Secret base64-decoded), an
  emptyDir is one dir per pod; mount paths in args, env, workingDir and the config files
  are rewritten to those dirs, and a path outside every mount fails the test;
- the chief Service's DNS name resolves to 127.0.0.1, and the rendered ports (checked to agree
  with each other first) are replaced by free local ports, as two pods on one machine cannot
  share a port;
- init containers run (with their paths rewritten) and must succeed before their pod starts;
- probes are asked as the kubelet asks them: gRPC health without a token, HTTP GET;
- the Kubernetes API the chief uses to keep its workers at zero is tests/kube_api.py, which
  serves exactly what the rendered Role grants, reached through a kubeconfig (there is no
  service account token outside a pod).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart_support import container, find, pod_spec, render
from harness import make_dataset, merge
from kube_api import KubeApi
from kt_cluster.core.protocol import status as chief_status
from kt_cluster.local import free_ports
from kt_cluster.supervisor import Child

# Named "chief" on purpose: every worker pod name contains "chief", yet no tuner id may.
RELEASE = "chief"
NAMESPACE = "default"
VALUES: dict[str, Any] = {
    "search": {
        "tuner": "random", "max_trials": 2, "epochs": 2, "batch_size": 4, "early_stopping": False,
        "data": {"image_size": 32, "classes": ["table_number", "stamp", "signature"]},
        "space": {"start_neurons": {"min": 8, "max": 8, "step": 8}, "net_depth": {"min": 2, "max": 2},
                  # Two activations: a one-point space ends a random search after one trial.
                  "activation": ["relu", "elu"], "dropout": False, "bn_after_act": False,
                  "pos_weight_power": [1.0]},
    },
    "workers": {"replicas": 2},
    # Nothing scrapes these pods but the search test, which sets its own.
    "monitoring": {"finalScrapeSeconds": 0},
}
FINAL_SCRAPE_SECONDS = 15
# One pod of two GPUs, one trial per GPU: two worker processes in the pod (on CPU here: the
# GPU-only settings, CUDA_VISIBLE_DEVICES and the memory cap, have nothing to act on).
ONE_GPU_PER_TRIAL = merge(VALUES, {"workers": {"replicas": 1, "gpus": 2, "gpusPerTrial": 1, "gpuMemoryMB": 2048}})
STARTUP_TIMEOUT = 240.0
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")
_ABS_PATH = re.compile(r"(?<![\w.\-/$}])/[\w.\-/]+")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables replaced, `$$` -> `$`, others kept."""
    return _REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def under(path: str, mounts: dict[str, Path]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def rewrite(text: str, mounts: dict[str, Path]) -> str:
    """Each mount path prefix replaced by its local dir, longest first, in a single pass."""
    if not mounts:
        return text
    alternatives = "|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.\-/])({alternatives})(?![\w.\-])")
    return pattern.sub(lambda m: str(mounts[m.group(1)]), text)


def port_named(c: dict, name: str | int) -> int:
    if isinstance(name, int):
        return name
    ports = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == name]
    assert len(ports) == 1, f"container {c['name']} has no single port named {name!r}: {c.get('ports')}"
    return ports[0]


def service_port(svc: dict, name: str) -> dict:
    return next(p for p in svc["spec"]["ports"] if p["name"] == name)


def probe_targets(c: dict) -> dict[str, tuple[str, int]]:
    """{probe kind: ("grpc" | "/metrics", container port)}; every port is one the container has."""
    found = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind not in c:
            continue
        if "grpc" in c[kind]:
            port = c[kind]["grpc"]["port"]
            assert port in [p["containerPort"] for p in c.get("ports", [])], (c["name"], kind)
            found[kind] = ("grpc", port)
        else:
            found[kind] = (c[kind]["httpGet"]["path"], port_named(c, c[kind]["httpGet"]["port"]))
    assert found, f"{c['name']}: no probes"
    return found


def probe(target: tuple[str, int], local_port: int) -> bool:
    """The probe as the kubelet runs it: a gRPC health Check (no token), or an HTTP GET."""
    import urllib.request

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    import grpc

    try:
        if target[0] == "grpc":
            with grpc.insecure_channel(f"127.0.0.1:{local_port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
        request = urllib.request.Request(f"http://127.0.0.1:{local_port}{target[0]}",
                                         headers={"User-Agent": "kube-probe/1.31"})  # as the kubelet sends
        with urllib.request.urlopen(request, timeout=2) as response:
            return 200 <= response.status < 400
    except Exception:  # noqa: BLE001 - not serving: the probe fails
        return False


class Pod:
    """One pod of a rendered workload: its volumes as local dirs."""

    def __init__(self, name: str, spec: dict, objects: list[dict], root: Path, claims: dict[str, Path],
                 external_claims: frozenset[str] = frozenset()):
        self.name, self.spec = name, spec
        self.volumes: dict[str, Path] = {}
        self.config_files: list[Path] = []
        for volume in spec.get("volumes", []):
            vname = volume["name"]
            local = root / name / vname
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in external_claims or any(
                    o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == claim for o in objects), \
                    f"{name}: volume {vname} mounts claim {claim}, which the chart does not create"
                local = claims.setdefault(claim, root / "claims" / claim)
                local.mkdir(parents=True, exist_ok=True)
            elif "configMap" in volume:
                cm = find(objects, "ConfigMap", volume["configMap"]["name"])
                self._project(local, cm["data"], volume["configMap"].get("items"), volume["configMap"].get("defaultMode"))
                self.config_files += [p for p in local.rglob("*") if p.is_file()]
            elif "secret" in volume:
                secret = find(objects, "Secret", volume["secret"]["secretName"])
                data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
                self._project(local, data, volume["secret"].get("items"), volume["secret"].get("defaultMode"))
            elif "emptyDir" in volume:
                local.mkdir(parents=True)
            else:
                raise AssertionError(f"{name}: volume {vname}: unsupported source {volume}")
            self.volumes[vname] = local

    @staticmethod
    def _project(local: Path, data: dict[str, str], items: list[dict] | None, mode: int | None) -> None:
        local.mkdir(parents=True)
        for item in items or [{"key": k, "path": k} for k in data]:
            assert item["key"] in data, f"key {item['key']} missing from {sorted(data)}"
            path = local / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data[item["key"]])
            if mode is not None:
                path.chmod(mode)

    def mounts(self, c: dict) -> dict[str, Path]:
        out = {}
        for m in c.get("volumeMounts", []):
            assert m["name"] in self.volumes, f"{self.name}/{c['name']}: mount of undeclared volume {m['name']}"
            out[m["mountPath"]] = self.volumes[m["name"]] / m.get("subPath", "")
        return out

    def env(self, c: dict) -> dict[str, str]:
        out: dict[str, str] = {}
        for e in c.get("env", []):
            if "valueFrom" in e:
                field = e["valueFrom"].get("fieldRef", {}).get("fieldPath")
                values = {"metadata.name": self.name, "metadata.namespace": NAMESPACE}
                assert field in values, f"{self.name}/{c['name']}: cannot resolve env {e}"
                out[e["name"]] = values[field]
            else:
                out[e["name"]] = expand(str(e.get("value", "")), out)
        return out


class Process:
    """A container as a local process: argv, env and working directory, paths rewritten."""

    def __init__(self, pod: Pod, c: dict, bin_dir: Path, logs: Path):
        self.pod, self.c, self.logs = pod, c, logs
        self.mounts = pod.mounts(c)
        self.env = pod.env(c)
        assert c.get("command"), f"{c['name']}: no command (the image's entrypoint cannot be emulated)"
        self.argv = [expand(a, self.env) for a in c["command"] + c.get("args", [])]
        self.name = f"{pod.name}.{c['name']}"
        self.child: Child | None = None
        self.bin_dir = bin_dir

    def referenced_paths(self) -> list[str]:
        return [p for a in self.argv for p in _ABS_PATH.findall(a)]

    def localise(self) -> None:
        """Every path the container uses must lie under one of its mounts (the root filesystem
        is read-only); then the mount paths become local dirs."""
        for path in self.referenced_paths():
            assert under(path, self.mounts), f"{self.name}: {path} in its command is on no volume ({sorted(self.mounts)})"
            assert Path(rewrite(path, self.mounts)).exists(), f"{self.name}: {path} does not exist in its volume"
        for key, value in self.env.items():
            if value.startswith("/"):
                assert under(value, self.mounts), f"{self.name}: env {key}={value} is on no volume"
                self.env[key] = rewrite(value, self.mounts)
        workdir = self.c.get("workingDir")
        assert workdir is None or under(workdir, self.mounts), f"{self.name}: workingDir {workdir} is on no volume"
        self.cwd = rewrite(workdir, self.mounts) if workdir else None
        self.argv = [rewrite(a, self.mounts) for a in self.argv]

    def process_env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("KERASTUNER_", "KTC_", "NEPTUNE_", "POD_"))}
        base["PATH"] = f"{self.bin_dir}:{base.get('PATH', '')}"
        return {**base, **self.env}

    @property
    def proc(self) -> subprocess.Popen:
        return self.child.process

    def start(self) -> "Process":
        env = self.process_env()
        assert self.argv[0] != "ktc" or shutil.which("ktc", path=env["PATH"]) == str(self.bin_dir / "ktc")
        self.child = Child.start(self.name, self.argv, self.logs / f"{self.name}.log", env, cwd=self.cwd)
        return self

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} ---\n{self.child.tail(lines) if self.child else ''}"

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()


def ktc_shim(bin_dir: Path) -> Path:
    """`ktc` on PATH: this interpreter's ktc (the image has it at /usr/local/bin/ktc)."""
    bin_dir.mkdir()
    shim = bin_dir / "ktc"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m kt_cluster "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def run_inits(inits: list[Process], timeout: float = 30) -> None:
    """Each pod's init containers in order, the pods side by side; each must exit 0."""
    for init in inits:
        init.localise()
    by_pod: dict[str, list[Process]] = {}
    for init in inits:
        by_pod.setdefault(init.pod.name, []).append(init)
    for step in range(max(len(chain) for chain in by_pod.values())):
        started = [chain[step].start() for chain in by_pod.values() if step < len(chain)]
        try:
            for init in started:
                try:
                    assert init.proc.wait(timeout=timeout) == 0, init.tail()
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"init container still running after {timeout} s\n{init.tail()}") from None
        finally:
            for init in started:
                init.kill()


def copy_dataset(source: Path, target: Path) -> None:
    """As a careful loader does: everything else first, classes.txt last."""
    shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("classes.txt"))
    shutil.copy2(source / "classes.txt", target / "classes.txt")


def wait_until(condition, timeout: float, what: str, alive: list[Process] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for process in alive:
            assert process.proc.poll() is None, f"{process.name} exited with {process.proc.returncode}\n{process.tail()}"
        assert time.monotonic() < deadline, f"{what} not within {timeout} s\n" + "\n".join(p.tail() for p in alive)
        time.sleep(0.2)


def port_runs(sizes: list[int]) -> list[int]:
    """The first ports of distinct runs of consecutive free ports, one run per size (a pod's
    worker processes serve metrics on its port + i)."""
    held: list[socket.socket] = []
    firsts: list[int] = []
    try:
        for first in free_ports(50):
            if len(firsts) == len(sizes):
                break
            try:
                run = [socket.create_server(("127.0.0.1", first + i)) for i in range(sizes[len(firsts)])]
            except OSError:
                continue
            held += run
            firsts.append(first)
    finally:
        for s in held:
            s.close()
    assert len(firsts) == len(sizes), f"no free port runs of {sizes}"
    return firsts


@pytest.mark.parametrize("values, tuner_ids", [
    (VALUES, {"worker-0", "worker-1"}),
    (ONE_GPU_PER_TRIAL, {"worker-0.0", "worker-0.1"}),
], ids=["two-pods", "one-pod-two-processes"])
def test_chart_pods_run_a_search_as_rendered(tmp_path, values, tuner_ids):
    values = merge(values, {"monitoring": {"finalScrapeSeconds": FINAL_SCRAPE_SECONDS}})
    objects = render(values, release=RELEASE, namespace=NAMESPACE)
    chief_sts, sts = find(objects, "StatefulSet", "-chief"), find(objects, "StatefulSet", "-worker")
    chief_svc, worker_svc = find(objects, "Service", "-chief"), find(objects, "Service", "-worker")
    chief_c, worker_c = container(chief_sts, "chief"), container(sts, "worker")
    assert chief_sts["spec"]["replicas"] == 1 and sts["spec"]["replicas"] == values["workers"]["replicas"]
    assert "chief" in sts["metadata"]["name"]  # the case where a careless id would contain "chief"

    bin_dir, logs = ktc_shim(tmp_path / "bin"), tmp_path / "logs"
    logs.mkdir()
    claims: dict[str, Path] = {}
    chief_pod = Pod(f"{chief_sts['metadata']['name']}-0", pod_spec(chief_sts), objects, tmp_path / "pods", claims)
    worker_pods = [Pod(f"{sts['metadata']['name']}-{i}", pod_spec(sts), objects, tmp_path / "pods", claims)
                   for i in range(sts["spec"]["replicas"])]
    chief = Process(chief_pod, chief_c, bin_dir, logs)
    workers = [Process(pod, worker_c, bin_dir, logs) for pod in worker_pods]

    # --- the rendered ports agree with each other ---------------------------------------------
    grpc = service_port(chief_svc, "grpc")
    assert port_named(chief_c, grpc["targetPort"]) == int(chief.env["KERASTUNER_ORACLE_PORT"])
    chief_metrics = port_named(chief_c, "metrics")
    assert port_named(chief_c, service_port(chief_svc, "metrics")["targetPort"]) == chief_metrics
    assert chief.argv[chief.argv.index("--metrics-port") + 1] == str(chief_metrics)
    chief_probes = probe_targets(chief_c)
    assert chief_probes["readinessProbe"] == ("grpc", port_named(chief_c, grpc["targetPort"]))
    worker_metrics = port_named(worker_c, "metrics")
    metrics_ports = [p["name"] for p in worker_c["ports"] if p["name"].startswith("metrics")]
    for i, name in enumerate(metrics_ports):  # one per worker process: metrics, metrics-1, ...
        assert port_named(worker_c, name) == port_named(worker_c, service_port(worker_svc, name)["targetPort"]) \
            == worker_metrics + i
    assert set(probe_targets(worker_c).values()) == {("/metrics", worker_metrics)}
    assert worker_c["command"] == ["sh", "-c"] and len(worker_c["args"]) == 1
    for w in workers:
        # Workers reach the chief through its Service: the Service's name and port.
        assert w.env["KERASTUNER_ORACLE_IP"].split(".")[0] == chief_svc["metadata"]["name"]
        assert int(w.env["KERASTUNER_ORACLE_PORT"]) == grpc["port"]
        assert re.findall(r"--metrics-port\s+(\d+)", w.argv[-1]) == [str(worker_metrics)]

    # --- the Kubernetes API: what the Role grants, through a kubeconfig -------------------------
    assert "--linger" in chief.argv  # the chief keeps serving after the search (restartPolicy Always)
    assert chief.argv[chief.argv.index("--final-scrape-seconds") + 1] == str(FINAL_SCRAPE_SECONDS)
    for w in workers:
        assert re.findall(r"--final-scrape-seconds\s+(\S+)", w.argv[-1]) == [str(FINAL_SCRAPE_SECONDS)]
    at = chief.argv.index("--scale-workers-on-exit")
    assert chief.argv[at + 1] == f"{NAMESPACE}/{sts['metadata']['name']}"  # $(POD_NAMESPACE) expanded
    assert pod_spec(chief_sts)["automountServiceAccountToken"] is True
    api = KubeApi()
    api.allow(find(objects, "Role", "-chief"), NAMESPACE)
    api.set_replicas(NAMESPACE, sts["metadata"]["name"], sts["spec"]["replicas"])

    # --- local ports and addresses ------------------------------------------------------------
    port, chief_metrics_local, *worker_metrics_local = port_runs([1, 1] + [len(metrics_ports)] * len(workers))
    chief.env["KERASTUNER_ORACLE_PORT"] = str(port)
    chief.argv[chief.argv.index("--metrics-port") + 1] = str(chief_metrics_local)
    local_port = {port_named(chief_c, "grpc"): port, chief_metrics: chief_metrics_local}
    for w, metrics_port in zip(workers, worker_metrics_local):
        w.env["KERASTUNER_ORACLE_IP"] = "127.0.0.1"  # the chief Service's DNS name
        w.env["KERASTUNER_ORACLE_PORT"] = str(port)
        w.argv[-1], n = re.subn(r"--metrics-port\s+\d+", f"--metrics-port {metrics_port}", w.argv[-1])
        assert n == 1

    # --- volumes: the config file's paths, the token ---------------------------------------------
    config = yaml.safe_load((chief_pod.volumes["config"] / "search.yaml").read_text())
    for process in [chief, *workers]:
        for key, path in (("results", config["results"]), ("data.path", config["data"]["path"])):
            assert under(path, process.mounts), f"{process.name}: search.yaml {key} {path} is on no volume"
        for file in process.pod.config_files:
            file.write_text(rewrite(file.read_text(), process.mounts))
    token = (chief_pod.volumes["token"] / "token").read_text().strip()
    assert len(token) >= 16
    for w in workers:
        assert (w.pod.volumes["token"] / "token").read_text().strip() == token
    data_dir = Path(rewrite(config["data"]["path"], chief.mounts))
    results_dir = Path(rewrite(config["results"], chief.mounts))
    for w in workers:  # one claim, shared
        assert Path(rewrite(config["data"]["path"], w.mounts)) == data_dir
        assert Path(rewrite(config["results"], w.mounts)) == results_dir

    # --- the data gate: installed before the dataset is loaded, nothing trains until it is ----
    inits = [Process(pod, c, bin_dir, logs) for pod in [chief_pod, *worker_pods] for c in pod.spec["initContainers"]]
    assert [i.c["name"] for i in inits] == ["check-data"] * (1 + len(workers))
    for init in inits:
        init.localise()
        init.start()
    try:
        time.sleep(2.0)
        for init in inits:  # waiting, and saying for what
            assert init.proc.poll() is None, f"{init.name} did not wait for the dataset\n{init.tail()}"
        wait_until(lambda: all("waiting for the dataset" in (logs / f"{i.name}.log").read_text() for i in inits),
                   10, "a 'waiting for the dataset' line from every gate")
        copy_dataset(make_dataset(tmp_path / "dataset", count=16, size=32), data_dir)
        for init in inits:
            try:
                assert init.proc.wait(timeout=30) == 0, init.tail()
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{init.name} still waiting after the dataset arrived\n{init.tail()}") from None
    finally:
        for init in inits:
            init.kill()

    # --- the search ----------------------------------------------------------------------------
    for process in [chief, *workers]:
        process.localise()
    chief.env["KUBECONFIG"] = str(api.kubeconfig(tmp_path / "kubeconfig"))  # not a pod path: after localise
    address = f"127.0.0.1:{port}"
    running = [chief]
    worker_name = sts["metadata"]["name"]
    with api:
        try:
            chief.start()
            # Ready (the Service sends workers to it) only once the oracle answers.
            wait_until(lambda: probe(chief_probes["readinessProbe"], port), STARTUP_TIMEOUT, "chief Ready", [chief])
            assert chief_status(address, token, timeout=5.0)["max_trials"] == VALUES["search"]["max_trials"]
            liveness = chief_probes["livenessProbe"]
            assert probe(liveness, local_port[liveness[1]])
            for w in workers:
                running.append(w.start())
            deadline, status = time.monotonic() + STARTUP_TIMEOUT, None
            while time.monotonic() < deadline:
                assert chief.proc.poll() is None, f"chief exited with {chief.proc.returncode}\n{chief.tail()}"
                for w in workers:
                    assert w.proc.poll() in (None, 0), f"{w.name} exited with {w.proc.returncode}\n{w.tail()}"
                try:
                    status = chief_status(address, token, timeout=2.0)
                except Exception:  # noqa: BLE001 - not serving yet
                    status = None
                if status and status["done"]:
                    break
                time.sleep(0.5)
            logs_text = "\n".join(p.tail() for p in running)
            assert status and status["done"], f"search not over after {STARTUP_TIMEOUT}s: {status}\n{logs_text}"
            assert not status["failure"], f"{status['failure']}\n{logs_text}"
            assert set(status["workers"]) == tuner_ids, status["workers"]

            # Told the search is over, a worker serves /metrics until scraped once more (Prometheus
            # finds the pods by their annotations' port), then exits 0, well before the wait's end.
            over = time.monotonic()
            last = last_scrapes(workers, [port + i for port in worker_metrics_local for i in range(len(metrics_ports))])
            for w in workers:
                try:
                    assert w.proc.wait(timeout=60) == 0, w.tail()
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"{w.name} still running after the search\n{w.tail()}") from None
            assert time.monotonic() - over < FINAL_SCRAPE_SECONDS, "the workers waited out their final scrape"
            completed = [completed_trials(text) for text in last.values()]
            assert sum(completed) == VALUES["search"]["max_trials"], completed
            best = results_dir / config["search_id"] / "best_hyperparameters.json"
            wait_until(best.exists, 60, "best_hyperparameters.json", [chief])
            # The chief scales its workers to zero, and puts them back to zero when an upgrade
            # raises them while the search is over.
            wait_until(lambda: api.get_replicas(NAMESPACE, worker_name) == 0, FINAL_SCRAPE_SECONDS + 30,
                       "workers scaled to 0", [chief])
            api.set_replicas(NAMESPACE, worker_name, 2)
            wait_until(lambda: api.get_replicas(NAMESPACE, worker_name) == 0, 15, "workers back at 0", [chief])
            assert chief.proc.poll() is None, "--linger: the chief keeps serving after the search"
            assert probe(chief_probes["readinessProbe"], port)
            assert {(r.verb, r.status) for r in api.requests} <= {("get", 200), ("patch", 200)}, api.requests
            chief.proc.send_signal(signal.SIGTERM)
            assert chief.proc.wait(timeout=30) == 0, chief.tail()
        finally:
            for process in running:
                process.kill()

    trials = [json.loads(p.read_text()) for p in sorted((results_dir / config["search_id"]).glob("trial_*/trial.json"))]
    assert len(trials) == VALUES["search"]["max_trials"] == status["completed"]
    assert {t["status"] for t in trials} == {"COMPLETED"}, [(t["trial_id"], t["status"]) for t in trials]
    assert json.loads(best.read_text())["trial_id"] in {t["trial_id"] for t in trials}


def last_scrapes(workers: list[Process], ports: list[int]) -> dict[int, str]:
    """Scrape every worker metrics port, as Prometheus would, until the workers have exited:
    each port's last successful scrape (none for a process that ran no trial and left at once)."""
    import urllib.request

    last: dict[int, str] = {}
    deadline = time.monotonic() + 60
    while any(w.proc.poll() is None for w in workers) and time.monotonic() < deadline:
        for port in ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    last[port] = response.read().decode()
            except OSError:
                pass  # gone
        time.sleep(0.2)
    return last


def completed_trials(exposition: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for f in text_string_to_metric_families(exposition) for s in f.samples
               if s.name == "ktc_worker_trials_total" and s.labels.get("outcome") == "completed")


def test_data_gate_fails_a_mismatched_dataset_with_one_line(tmp_path):
    """classes.txt that disagrees with search.data.classes: after data.check.waitSeconds the gate
    exits 2 with one line naming it (the pod shows Init:Error), and nothing trains on it."""
    objects = render(VALUES | {"data": {"check": {"waitSeconds": 1}}}, release=RELEASE, namespace=NAMESPACE)
    sts = find(objects, "StatefulSet", "-worker")
    pod = Pod(f"{sts['metadata']['name']}-0", pod_spec(sts), objects, tmp_path / "pods", {})
    gate = Process(pod, pod.spec["initContainers"][-1], ktc_shim(tmp_path / "bin"), tmp_path)
    config = pod.volumes["config"] / "search.yaml"
    config.write_text(rewrite(config.read_text(), gate.mounts))
    data = pod.volumes["data"]
    make_dataset(tmp_path / "dataset", count=4, size=32)
    copy_dataset(tmp_path / "dataset", data)
    (data / "classes.txt").write_text("stamp\ntable_number\nsignature\n")  # another order
    gate.localise()
    gate.start()
    try:
        assert gate.proc.wait(timeout=30) == 2, gate.tail()
    finally:
        gate.kill()
    last = (tmp_path / f"{gate.name}.log").read_text().strip().splitlines()[-1]
    assert "classes.txt lists classes ['stamp', 'table_number', 'signature']" in last and "Traceback" not in last


def test_init_containers_fill_a_per_pod_data_volume_before_the_gate(tmp_path):
    """The object-storage pattern: data.volume is a per-pod emptyDir, an extraInitContainer copies
    the dataset into it (here from an archive claim, as `aws s3 sync` would from a bucket), then the
    gate checks it."""
    values = VALUES | {"data": {"volume": {"emptyDir": {}}}, "workers": {
        "replicas": 1,
        "extraVolumes": [{"name": "archive", "persistentVolumeClaim": {"claimName": "scan-archive", "readOnly": True}}],
        "extraInitContainers": [{
            "name": "fetch-data", "image": "busybox", "command": ["sh", "-c"], "args": ["cp -R /archive/set1/. /data/"],
            "volumeMounts": [{"name": "archive", "mountPath": "/archive", "readOnly": True},
                             {"name": "data", "mountPath": "/data"}]}]}}
    objects = render(values, release=RELEASE, namespace=NAMESPACE)
    sts = find(objects, "StatefulSet", "-worker")
    claims = {"scan-archive": tmp_path / "archive"}
    make_dataset(claims["scan-archive"] / "set1", count=4, size=32)
    pod = Pod(f"{sts['metadata']['name']}-0", pod_spec(sts), objects, tmp_path / "pods", claims,
              external_claims=frozenset(claims))
    assert "persistentVolumeClaim" not in next(v for v in pod.spec["volumes"] if v["name"] == "data")
    bin_dir = ktc_shim(tmp_path / "bin")
    inits = [Process(pod, c, bin_dir, tmp_path) for c in pod.spec["initContainers"]]
    assert [i.c["name"] for i in inits] == ["fetch-data", "check-data"]
    config = pod.volumes["config"] / "search.yaml"
    config.write_text(rewrite(config.read_text(), inits[1].mounts))
    run_inits(inits)
    assert (pod.volumes["data"] / "classes.txt").exists()  # copied into the pod's own volume
    assert "3 classes (table_number, stamp, signature)" in (tmp_path / f"{inits[1].name}.log").read_text()


# --- helm upgrade on a finished search ----------------------------------------------------------

class Release:
    """One `helm install`/`upgrade`'s chief and worker pods as processes (no init containers: the
    data gate has tests of its own). Claims persist across releases through `claims`, and the auth
    Secret keeps its token across upgrades, as the chart's `lookup` keeps it."""

    def __init__(self, values: dict, root: Path, claims: dict[str, Path], bin_dir: Path, logs: Path,
                 api: KubeApi, token: str | None = None):
        self.objects = render(values, release=RELEASE, namespace=NAMESPACE)
        chief_sts, self.workers_sts = find(self.objects, "StatefulSet", "-chief"), find(self.objects, "StatefulSet", "-worker")
        self.worker_name = self.workers_sts["metadata"]["name"]
        chief_pod = Pod(f"{chief_sts['metadata']['name']}-0", pod_spec(chief_sts), self.objects, root, claims)
        self.chief = Process(chief_pod, container(chief_sts, "chief"), bin_dir, logs)
        self.probes = probe_targets(self.chief.c)
        token_file = chief_pod.volumes["token"] / "token"
        if token is not None:
            token_file.chmod(0o600)
            token_file.write_text(token)
        self.token = token_file.read_text().strip()
        self.port, self.metrics_port = port_runs([1, 1])
        self.chief.env["KERASTUNER_ORACLE_PORT"] = str(self.port)
        self.chief.argv[self.chief.argv.index("--metrics-port") + 1] = str(self.metrics_port)
        self.chief.localise()
        for file in chief_pod.config_files:
            file.write_text(rewrite(file.read_text(), self.chief.mounts))
        self.chief.env["KUBECONFIG"] = str(api.kubeconfig(root / "kubeconfig"))
        self.config = yaml.safe_load((chief_pod.volumes["config"] / "search.yaml").read_text())
        self.search = Path(self.config["results"]) / self.config["search_id"]
        self.root, self.claims, self.bin_dir, self.logs = root, claims, bin_dir, logs

    def worker(self, ordinal: int) -> Process:
        """The worker pod `ordinal`, as the StatefulSet controller creates it."""
        pod = Pod(f"{self.worker_name}-{ordinal}", pod_spec(self.workers_sts), self.objects, self.root, self.claims)
        worker = Process(pod, container(self.workers_sts, "worker"), self.bin_dir, self.logs)
        (pod.volumes["token"] / "token").chmod(0o600)
        (pod.volumes["token"] / "token").write_text(self.token)
        worker.env["KERASTUNER_ORACLE_IP"] = "127.0.0.1"
        worker.env["KERASTUNER_ORACLE_PORT"] = str(self.port)
        worker.argv[-1] = re.sub(r"--metrics-port\s+\d+", f"--metrics-port {port_runs([1])[0]}", worker.argv[-1])
        worker.localise()
        for file in pod.config_files:
            file.write_text(rewrite(file.read_text(), worker.mounts))
        return worker

    def status(self) -> dict | None:
        try:
            return chief_status(f"127.0.0.1:{self.port}", self.token, timeout=2.0)
        except Exception:  # noqa: BLE001 - not serving (yet)
            return None

    def scrape(self) -> str:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as response:
                return response.read().decode()
        except OSError:
            return ""


def run_to_the_end(release: Release, running: list[Process], replicas: int) -> dict:
    """The chief (started unless it runs), then the workers the StatefulSet holds, until the chief
    says the search is over."""
    if release.chief.child is None:
        running.append(release.chief.start())
    wait_until(lambda: probe(release.probes["readinessProbe"], release.port), STARTUP_TIMEOUT, "chief Ready",
               [release.chief])
    workers = [release.worker(i) for i in range(replicas)]
    running += [w.start() for w in workers]
    wait_until(lambda: (release.status() or {}).get("done"), STARTUP_TIMEOUT, "the search over", [release.chief])
    for w in workers:
        assert w.proc.wait(timeout=60) == 0, w.tail()
    wait_until((release.search / "best_hyperparameters.json").exists, 60, "the results", [release.chief])
    return release.status()


def stop_chief(release: Release, code: int = 0) -> None:
    release.chief.proc.send_signal(signal.SIGTERM)  # the StatefulSet replaces the pod
    assert release.chief.proc.wait(timeout=30) == code, release.chief.tail()


def state_digest(search: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(search)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(search.rglob("*")) if p.is_file() and p.name != "chief.lock"
            and (p.parent.name == "ktc-state" or p.name == "trial.json")}


def test_helm_upgrade_extends_a_finished_search_and_an_incompatible_one_is_refused(tmp_path):
    """Finish a search of 2 trials; `helm upgrade --set search.max_trials=3`: the new chief reopens
    it, scales the workers back up and the third trial runs; then an upgrade that changes the
    objective: the chief refuses in one line in its log, serves ktc_chief_config_refused 1, is
    never Ready, keeps the workers at zero and changes nothing."""
    # Four configurations: a random search of two activations alone would have none left to extend.
    values = merge(VALUES, {"workers": {"replicas": 1},
                            "search": {"space": {"start_neurons": {"min": 8, "max": 16, "step": 8}}}})
    bin_dir, logs, claims = ktc_shim(tmp_path / "bin"), tmp_path / "logs", {}
    logs.mkdir()
    api = KubeApi()
    first = Release(values, tmp_path / "v1", claims, bin_dir, logs, api)
    api.allow(find(first.objects, "Role", "-chief"), NAMESPACE)
    api.set_replicas(NAMESPACE, first.worker_name, 1)
    copy_dataset(make_dataset(tmp_path / "dataset", count=16, size=32), Path(first.config["data"]["path"]))
    running: list[Process] = []
    with api:
        try:
            status = run_to_the_end(first, running, replicas=1)
            assert status["completed"] == 2 and not status["failure"]
            wait_until(lambda: api.get_replicas(NAMESPACE, first.worker_name) == 0, 30, "workers at 0", [first.chief])

            # --- helm upgrade --set search.max_trials=3 ---------------------------------------
            second = Release(merge(values, {"search": {"max_trials": 3}}), tmp_path / "v2", claims, bin_dir, logs,
                             api, token=first.token)
            checksum = "checksum/config"
            assert second.workers_sts["spec"]["template"]["metadata"]["annotations"][checksum] != \
                first.workers_sts["spec"]["template"]["metadata"]["annotations"][checksum]  # the pods roll
            assert second.workers_sts["spec"]["replicas"] == 1  # a new config renders workers.replicas
            api.set_replicas(NAMESPACE, first.worker_name, 1)  # helm applies it ...
            # ... and the old chief, lingering until its pod is replaced, puts them back to zero.
            wait_until(lambda: api.get_replicas(NAMESPACE, first.worker_name) == 0, 15, "workers back at 0",
                       [first.chief])
            stop_chief(first)
            running.append(second.chief.start())
            # The new chief reopens the search and scales the workers back up to workers.replicas.
            wait_until(lambda: api.get_replicas(NAMESPACE, second.worker_name) == 1, STARTUP_TIMEOUT,
                       "workers scaled back up", [second.chief])
            status = run_to_the_end(second, running, replicas=1)
            assert status["completed"] == 3 and status["max_trials"] == 3 and not status["failure"]
            log = (logs / f"{second.chief.name}.log").read_text()
            search_id = second.config["search_id"]
            assert f"chief: search {search_id} reopened: max_trials raised from 2 to 3 (2 trials so far)" in log
            trials = [json.loads(p.read_text()) for p in sorted(second.search.glob("trial_*/trial.json"))]
            assert len(trials) == 3 and {t["status"] for t in trials} == {"COMPLETED"}
            wait_until(lambda: api.get_replicas(NAMESPACE, second.worker_name) == 0, 30, "workers at 0 again",
                       [second.chief])

            # --- helm upgrade --set search.objective=val_iou ----------------------------------
            third = Release(merge(values, {"search": {"max_trials": 3, "objective": "val_iou"}}), tmp_path / "v3",
                            claims, bin_dir, logs, api, token=second.token)
            stop_chief(second)
            before = state_digest(third.search)
            api.set_replicas(NAMESPACE, third.worker_name, 1)  # rendered by the upgrade
            running.append(third.chief.start())
            # Started (its /metrics answers), alive, never Ready; the reason in its log and metric.
            wait_until(lambda: "ktc_chief_config_refused 1.0" in third.scrape(), STARTUP_TIMEOUT,
                       "ktc_chief_config_refused 1", [third.chief])
            assert probe(third.probes["startupProbe"], third.metrics_port)
            assert probe(third.probes["livenessProbe"], third.metrics_port)
            assert not probe(third.probes["readinessProbe"], third.port)
            info = [line for line in third.scrape().splitlines() if line.startswith("ktc_search_info{")]
            assert len(info) == 1 and 'objective="val_iou"' in info[0]  # a chief, for the alerts
            wait_until(lambda: api.get_replicas(NAMESPACE, third.worker_name) == 0, 15, "workers kept at 0",
                       [third.chief])
            log = (logs / f"{third.chief.name}.log").read_text()
            refusals = [line for line in log.splitlines() if line.startswith("ktc chief: refusing to start:")]
            assert refusals == [f"ktc chief: refusing to start: search '{search_id}': objective is val_iou in the config "
                                "but val_f1 in the stored search; nothing was changed: set objective back to val_f1 "
                                "to go on with this search, or give the new one a search_id of its own (search_id, "
                                "--search-id, KTC_SEARCH_ID)"], log[-3000:]
            assert "Traceback" not in log
            time.sleep(2 * 0.5)
            assert third.chief.proc.poll() is None  # no exit, so no restart loop
            stop_chief(third, code=6)
            assert state_digest(third.search) == before
        finally:
            for process in running:
                process.kill()
