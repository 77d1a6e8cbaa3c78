"""Real chief and worker processes for tests, stopped on exit whatever happens.

`Cluster` starts `python -m kt_cluster chief` and `python -m kt_cluster worker` exactly as `ktc local` and the
Kubernetes pods do (same flags and environment), on free loopback ports, and lets a test kill,
restart and watch them, through the same supervisor as `ktc local` (`kt_cluster.supervisor`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from kt_cluster.core.protocol import status as chief_status
from kt_cluster.local import free_ports
from kt_cluster.supervisor import Child, python_module
from kt_cluster.worker.data import synth

TOKEN = "test-token-0123456789abcdef"

# A search space small enough that a trial takes seconds on 2 cores.
TINY = {
    "tuner": "random", "max_trials": 3, "epochs": 2, "batch_size": 4, "early_stopping": False,
    "max_consecutive_failed_trials": 3,
    "data": {"image_size": 32, "classes": ["table_number", "stamp", "signature"]},
    "space": {"start_neurons": {"min": 8, "max": 16, "step": 8}, "net_depth": {"min": 2, "max": 2},
              "activation": ["relu", "elu"], "dropout": False, "bn_after_act": False, "pos_weight_power": [1.0]},
}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_dataset(path: Path, count: int = 16, size: int = 32) -> Path:
    if not path.exists():
        synth.generate(path, count=count, size=size, classes=TINY["data"]["classes"], seed=1)
    return path


class Cluster:
    def __init__(self, tmp: Path, config: dict[str, Any] | None = None, data: Path | None = None,
                 auth: bool = True):
        self.tmp = tmp
        self.data = data or make_dataset(tmp / "data")
        self.results = tmp / "results"
        self.config = merge(TINY, config or {})
        self.config["data"]["path"] = str(self.data)
        self.config["results"] = str(self.results)
        self.config_path = tmp / "search.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.token_path = tmp / "token"
        self.token_path.write_text(TOKEN)
        self.auth = auth
        self.port, self.chief_metrics_port, *self.worker_ports = free_ports(10)
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, Child] = {}
        self.logs = tmp / "logs"

    def _auth_args(self) -> list[str]:
        return ["--auth-token-file", str(self.token_path)] if self.auth else ["--insecure"]

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", KERASTUNER_ORACLE_IP="127.0.0.1",
                   KERASTUNER_ORACLE_PORT=str(self.port), **env)
        # Appended to: a restarted process keeps the log of its predecessor.
        self.procs[name] = Child.start(name, python_module("kt_cluster", *args), self.logs / f"{name}.log", env,
                                       append=True)
        return self.procs[name]

    def start_chief(self, *extra: str) -> Child:
        return self._spawn("chief", ["chief", "--config", str(self.config_path), *self._auth_args(),
                                     "--metrics-port", str(self.chief_metrics_port), *extra],
                           {"KERASTUNER_TUNER_ID": "chief"})

    def start_worker(self, index: int, *extra: str, tuner_id: str | None = None) -> Child:
        return self._spawn(f"worker-{index}", ["worker", "--config", str(self.config_path), *self._auth_args(),
                                               "--metrics-port", str(self.worker_ports[index]), "--threads", "1", *extra],
                           {"KERASTUNER_TUNER_ID": tuner_id or f"worker-{index}"})

    def status(self) -> dict[str, Any] | None:
        try:
            return chief_status(self.address, TOKEN if self.auth else None, timeout=2.0)
        except Exception:  # noqa: BLE001 - not up yet, or restarting
            return None

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 180.0,
                 what: str = "condition") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.status()
            if last is not None and predicate(last):
                return last
            self.check_chief_alive()
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; last status: {last}\n{self.tail('chief')}")

    def check_chief_alive(self) -> None:
        chief = self.procs.get("chief")
        if chief is not None and chief.poll() not in (None, 0):
            raise AssertionError(f"chief exited with {chief.returncode}\n{self.tail('chief')}")

    def wait_exit(self, name: str, timeout: float = 180.0) -> int:
        code = self.procs[name].wait(timeout)
        if code is None:
            raise AssertionError(f"{name} still running after {timeout}s\n{self.tail(name)}")
        return code

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (SIGKILL: and reap it)."""
        if sig == signal.SIGKILL:
            self.procs[name].kill()
        else:
            self.procs[name].signal(sig)

    def scrape(self, port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    def tail(self, name: str, lines: int = 40) -> str:
        child = self.procs.get(name)
        return f"--- {name} log ---\n{child.tail(lines)}" if child else ""

    def trial_files(self) -> list[dict[str, Any]]:
        import json
        project = self.results / self.config.get("search_id", "ktc-search")
        return [json.loads(p.read_text()) for p in sorted(project.glob("trial_*/trial.json"))]

    def stop(self) -> None:
        for child in self.procs.values():
            child.kill()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def running_chief(tmp: Path, config: dict[str, Any], before_start: Callable[[Cluster], None] | None = None
                  ) -> Iterator[Cluster]:
    """A chief with no worker, answering, for tests that call it directly; stopped afterwards."""
    c = Cluster(tmp, config=config)
    if before_start:
        before_start(c)
    c.start_chief()
    try:
        c.wait_for(lambda s: True, timeout=120, what="chief up")
        yield c
    finally:
        c.stop()
