"""`ktc local`: one chief and N workers as separate processes on loopback.

The processes are exactly those the Kubernetes pods run (`ktc chief`, `ktc worker`), wired by the
same environment variables, with a fresh token for authentication. Each child runs in its own
session so that Ctrl-C reaches only this launcher, which then stops them in order: workers get
SIGTERM (they hand back their trials), the chief gets SIGTERM (its state is on disk), and anything
still alive after the grace period gets SIGKILL. No process outlives the launcher.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from kt_cluster.progress import render
from kt_cluster.core.config import ConfigError, SearchConfig
from kt_cluster.core import dataset
from kt_cluster.worker.data import synth

SYNTH_COUNT = 48
POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 30.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log: Path


def free_ports(count: int, base: int = 0) -> list[int]:
    if base:
        return list(range(base, base + count))
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def prepare(config: SearchConfig) -> tuple[Path, Path]:
    """Resolve paths, fill an empty dataset directory, write the shared config and token."""
    config.results = str(Path(config.results).resolve())
    config.data.path = str(Path(config.data.path).resolve())
    if dataset.is_empty(Path(config.data.path)):
        print(f"ktc local: {config.data.path} is empty: generating {SYNTH_COUNT} synthetic scans", flush=True)
        synth.generate(Path(config.data.path), count=SYNTH_COUNT, size=config.data.image_size,
                       classes=config.data.classes, seed=config.seed or 0)
    run_dir = Path(config.results) / "local"
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "search.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    token_path = run_dir / "token"
    token_path.touch(mode=0o600)
    token_path.write_text(secrets.token_urlsafe(32))
    return config_path, token_path


def spawn(name: str, args: list[str], env: dict[str, str], run_dir: Path) -> Child:
    log = run_dir / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "kt_cluster", *args], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return Child(name, process, log)


def start(config: SearchConfig, config_path: Path, token_path: Path, workers: int, base_port: int) -> tuple[list[Child], str]:
    oracle_port, chief_metrics, *worker_metrics = free_ports(2 + workers, base_port)
    run_dir = config_path.parent
    common = ["--config", str(config_path), "--auth-token-file", str(token_path)]
    env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(oracle_port),
               PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    children = [spawn("chief", ["chief", *common, "--metrics-port", str(chief_metrics)],
                      dict(env, KERASTUNER_TUNER_ID="chief"), run_dir)]
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for i, port in enumerate(worker_metrics):
        children.append(spawn(f"worker-{i}", ["worker", *common, "--metrics-port", str(port), "--threads", threads],
                              dict(env, KERASTUNER_TUNER_ID=f"worker-{i}"), run_dir))
    print(f"ktc local: chief on 127.0.0.1:{oracle_port} (metrics :{chief_metrics}), {workers} workers "
          f"(metrics :{','.join(map(str, worker_metrics))}); logs in {run_dir}", flush=True)
    return children, f"127.0.0.1:{oracle_port}"


def stop(children: list[Child], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM workers first (they hand back), then the chief; SIGKILL whatever remains."""
    workers = [c for c in children if c.name != "chief"]
    chief = [c for c in children if c.name == "chief"]
    for group in (workers, chief):  # the chief must outlive the workers' hand-backs
        for child in group:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        _wait(group, grace)
    for child in children:
        if child.process.poll() is None:
            os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()


def _wait(children: list[Child], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


class ProgressView:
    """Redraws in place on a terminal; prints a line on change otherwise (logs, CI)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stdout.isatty()
        self._last = ""
        self._height = 0

    def show(self, status: dict) -> None:
        text = render(status)
        if self.quiet or text == self._last:
            return
        self._last = text
        if self.tty:
            sys.stdout.write("\x1b[F\x1b[K" * self._height + text + "\n")
            self._height = text.count("\n") + 1
        else:
            print(text.splitlines()[0], flush=True)
        sys.stdout.flush()


def monitor(children: list[Child], address: str, token: str, view: ProgressView, final: Path) -> int:
    """Show the chief's status until it exits, then its final status (`final`, written by this
    chief as it finished: polling can miss the last trial's end)."""
    from kt_cluster.core.protocol import status

    chief, started = children[0], time.time()
    while chief.process.poll() is None:
        try:
            view.show(status(address, token, timeout=2.0))
        except Exception:  # noqa: BLE001 - the chief is still starting or busy; ask again
            pass
        codes = [c.process.poll() for c in children[1:]]
        if all(code is not None and code != 0 for code in codes):
            print("ktc local: every worker has failed before the search ended; see their logs", flush=True)
            return 1
        time.sleep(POLL_SECONDS)
    if final.exists() and final.stat().st_mtime >= started:
        view.show(json.loads(final.read_text()))
    return chief.process.returncode


def run_local(config: SearchConfig, workers: int, base_port: int = 0, quiet: bool = False) -> int:
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    config_path, token_path = prepare(config)
    children, address = start(config, config_path, token_path, workers, base_port)
    code = 1
    try:
        code = monitor(children, address, token_path.read_text(), ProgressView(quiet),
                       Path(config.results) / "status.json")
        _wait(children[1:], STOP_GRACE_SECONDS)  # workers exit once told the search is over
    except KeyboardInterrupt:
        print("\nktc local: interrupted; stopping (workers hand their trials back)", flush=True)
        code = 130
    finally:
        stop(children)
    summary = Path(config.results) / "summary.txt"
    if code == 0 and summary.exists():
        print(summary.read_text(), flush=True)
    for child in children:
        if child.process.returncode not in (0, None):
            print(f"ktc local: {child.name} exited with {child.process.returncode}; log: {child.log}", flush=True)
    if code not in (0, 130):
        print(f"ktc local: the search failed (chief exit {code}); chief log: {children[0].log}", flush=True)
        print(_tail(children[0].log), flush=True)
    return code


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
