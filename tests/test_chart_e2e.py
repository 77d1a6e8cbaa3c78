"""The chart's own pods, run as local processes: a real 2-worker search wired only by the chart.

The chart is rendered by Helm's engine with a tiny search; the chief Deployment's and the
worker StatefulSet's containers then run here as Kubernetes would run them:

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
- init containers run (with their paths rewritten) and must succeed before the workers start.

What cannot run here: `--scale-workers-on-exit` (no Kubernetes API) is dropped from the
chief's args after checking its target is this release's worker StatefulSet.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from chart_support import container, find, pod_spec, render
from harness import make_dataset
from kt_cluster.local import free_ports
from kt_cluster.core.protocol import status as chief_status

# Named "chief" on purpose: every worker pod name contains "chief", yet no tuner id may.
RELEASE = "chief"
NAMESPACE = "default"
VALUES: dict[str, Any] = {
    "search": {
        "tuner": "random", "max_trials": 2, "epochs": 2, "batch_size": 4, "early_stopping": False,
        "data": {"image_size": 32, "classes": ["table_number", "stamp", "signature"]},
        "space": {"start_neurons": {"min": 8, "max": 8, "step": 8}, "net_depth": {"min": 2, "max": 2},
                  # Two activations: a one-point space ends a random search after one trial.
                  "activation": ["relu", "elu"], "dropout": False, "bn_after_act": False},
    },
    "workers": {"replicas": 2},
    # Renders the workers' wait-for-data init container (the data Job itself is not run here:
    # the dataset comes from harness.make_dataset).
    "data": {"synth": {"enabled": True, "count": 16}},
}
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


def check_probes_hit(c: dict, port: int) -> None:
    probes = [k for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c]
    assert probes, f"{c['name']}: no probes"
    for kind in probes:
        get = c[kind]["httpGet"]
        assert get["path"] == "/metrics" and port_named(c, get["port"]) == port, (c["name"], kind, get)


class Pod:
    """One pod of a rendered workload: its volumes as local dirs."""

    def __init__(self, name: str, spec: dict, objects: list[dict], root: Path, claims: dict[str, Path]):
        self.name, self.spec = name, spec
        self.volumes: dict[str, Path] = {}
        self.config_files: list[Path] = []
        for volume in spec.get("volumes", []):
            vname = volume["name"]
            local = root / name / vname
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert any(o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == claim for o in objects), \
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
        self.proc: subprocess.Popen | None = None
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

    def start(self) -> "Process":
        env = self.process_env()
        assert self.argv[0] != "ktc" or shutil.which("ktc", path=env["PATH"]) == str(self.bin_dir / "ktc")
        with open(self.logs / f"{self.name}.log", "wb") as log:
            self.proc = subprocess.Popen(self.argv, env=env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def tail(self, lines: int = 40) -> str:
        path = self.logs / f"{self.name}.log"
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return f"--- {self.name} ---\n" + "\n".join(line for line in text[-lines:] if not line.startswith("I0000"))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait()


def ktc_shim(bin_dir: Path) -> Path:
    """`ktc` on PATH: this interpreter's ktc (the image has it at /usr/local/bin/ktc)."""
    bin_dir.mkdir()
    shim = bin_dir / "ktc"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m kt_cluster "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def test_chart_pods_run_a_search_as_rendered(tmp_path):
    objects = render(VALUES, release=RELEASE, namespace=NAMESPACE)
    deployment, sts = find(objects, "Deployment", "-chief"), find(objects, "StatefulSet", "-worker")
    chief_svc, worker_svc = find(objects, "Service", "-chief"), find(objects, "Service", "-worker")
    chief_c, worker_c = container(deployment, "chief"), container(sts, "worker")
    assert deployment["spec"]["replicas"] == 1 and sts["spec"]["replicas"] == 2
    assert "chief" in sts["metadata"]["name"]  # the case where a careless id would contain "chief"

    bin_dir, logs = ktc_shim(tmp_path / "bin"), tmp_path / "logs"
    logs.mkdir()
    claims: dict[str, Path] = {}
    chief_pod = Pod(f"{deployment['metadata']['name']}-7c9d5b8f4-x2k7q", pod_spec(deployment), objects,
                    tmp_path / "pods", claims)
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
    check_probes_hit(chief_c, chief_metrics)
    worker_metrics = port_named(worker_c, "metrics")
    assert port_named(worker_c, service_port(worker_svc, "metrics")["targetPort"]) == worker_metrics
    check_probes_hit(worker_c, worker_metrics)
    assert worker_c["command"] == ["sh", "-c"] and len(worker_c["args"]) == 1
    for w in workers:
        # Workers reach the chief through its Service: the Service's name and port.
        assert w.env["KERASTUNER_ORACLE_IP"].split(".")[0] == chief_svc["metadata"]["name"]
        assert int(w.env["KERASTUNER_ORACLE_PORT"]) == grpc["port"]
        assert re.findall(r"--metrics-port\s+(\d+)", w.argv[-1]) == [str(worker_metrics)]

    # --- what only a cluster can do ------------------------------------------------------------
    assert "--linger" in chief.argv  # the chief keeps serving after the search (restartPolicy Always)
    if "--scale-workers-on-exit" in chief.argv:
        at = chief.argv.index("--scale-workers-on-exit")
        assert chief.argv[at + 1] == f"{NAMESPACE}/{sts['metadata']['name']}"  # $(POD_NAMESPACE) expanded
        role = find(objects, "Role", "-chief")
        assert role["rules"][0]["resourceNames"] == [sts["metadata"]["name"]]
        del chief.argv[at:at + 2]  # no Kubernetes API here

    # --- local ports and addresses ------------------------------------------------------------
    port, chief_metrics_local, *worker_metrics_local = free_ports(2 + len(workers))
    chief.env["KERASTUNER_ORACLE_PORT"] = str(port)
    chief.argv[chief.argv.index("--metrics-port") + 1] = str(chief_metrics_local)
    for w, metrics_port in zip(workers, worker_metrics_local):
        w.env["KERASTUNER_ORACLE_IP"] = "127.0.0.1"  # the chief Service's DNS name
        w.env["KERASTUNER_ORACLE_PORT"] = str(port)
        w.argv[-1], n = re.subn(r"--metrics-port\s+\d+", f"--metrics-port {metrics_port}", w.argv[-1])
        assert n == 1

    # --- volumes: the config file's paths, the token, the dataset ------------------------------
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
    shutil.copytree(make_dataset(tmp_path / "dataset", count=16, size=32), data_dir, dirs_exist_ok=True)
    for process in [chief, *workers]:
        process.localise()

    # --- init containers: run each (paths rewritten); each must succeed ------------------------
    inits = [Process(pod, c, bin_dir, logs) for pod in worker_pods for c in pod.spec.get("initContainers", [])]
    assert [i.c["name"] for i in inits] == ["wait-for-data"] * len(workers)
    for init in inits:
        init.localise()
        init.start()
        try:
            assert init.proc.wait(timeout=30) == 0, init.tail()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"init container still waiting after 30 s\n{init.tail()}") from None
        finally:
            init.kill()

    # --- the search ----------------------------------------------------------------------------
    address = f"127.0.0.1:{port}"
    running = [chief]
    try:
        chief.start()
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
        assert set(status["workers"]) == {"worker-0", "worker-1"}, status["workers"]

        for w in workers:  # told the search is over, a worker exits 0
            try:
                assert w.proc.wait(timeout=60) == 0, w.tail()
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{w.name} still running after the search\n{w.tail()}") from None
        best = results_dir / "best_hyperparameters.json"
        deadline = time.monotonic() + 60
        while not best.exists() and time.monotonic() < deadline:
            assert chief.proc.poll() is None, f"chief exited with {chief.proc.returncode}\n{chief.tail()}"
            time.sleep(0.3)
        assert best.exists(), chief.tail()
        assert chief.proc.poll() is None, "--linger: the chief keeps serving after the search"
        chief.proc.send_signal(signal.SIGTERM)
        assert chief.proc.wait(timeout=30) == 0, chief.tail()
    finally:
        for process in running:
            process.kill()

    trials = [json.loads(p.read_text()) for p in sorted((results_dir / config["search_id"]).glob("trial_*/trial.json"))]
    assert len(trials) == VALUES["search"]["max_trials"] == status["completed"]
    assert {t["status"] for t in trials} == {"COMPLETED"}, [(t["trial_id"], t["status"]) for t in trials]
    assert json.loads(best.read_text())["trial_id"] in {t["trial_id"] for t in trials}
