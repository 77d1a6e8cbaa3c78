"""`ktc local`: one chief and N workers as separate processes on loopback.

The processes are exactly those the Kubernetes pods run (`ktc chief`, `ktc worker`), wired by the
same environment variables, with a fresh token for authentication. Before any of them starts,
the dataset is checked (and generated first when the config asks for synthetic data). Each child
runs in its own session (`kt_cluster.supervisor`) so that Ctrl-C reaches only this launcher,
which then stops them in order: workers get SIGTERM (they hand back their trials), the chief gets
SIGTERM (its state is on disk), and anything still alive after the grace period gets SIGKILL. No
process outlives the launcher. Where everything is goes to `<results>/<search_id>/local/`:
`endpoints.json` (addresses, ports, pids, token path), the token, the config and one log per
process.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path

import yaml

from kt_cluster import endpoints
from kt_cluster.cli import EXIT_CONFIG, EXIT_LOCKED, EXIT_STATE
from kt_cluster.core import dataset
from kt_cluster.core.budget import budget_warnings
from kt_cluster.core.config import ConfigError, SearchConfig
from kt_cluster.core.summary import STATUS_FILE, SUMMARY_FILE
from kt_cluster.progress import render
from kt_cluster.supervisor import STOP_GRACE_SECONDS, Child, python_module, stop_all, wait_all

EXIT_INCOMPATIBLE = 6  # the chief's: the config is not the stored search's (kt_cluster.chief.main)
# The chief's exits that refuse to start, each with one line naming the culprit.
CHIEF_REFUSALS = (EXIT_CONFIG, EXIT_STATE, EXIT_LOCKED, EXIT_INCOMPATIBLE)

SYNTH_COUNT = 48
POLL_SECONDS = 1.0
LAST_WORDS_SECONDS = 10.0  # how long the chief may take to say the search is over once every worker left


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


def resolve(config: SearchConfig) -> SearchConfig:
    """The config with absolute paths: the children may run elsewhere."""
    return config.model_copy(update={
        "results": str(Path(config.results).resolve()),
        "data": config.data.model_copy(update={"path": str(Path(config.data.path).resolve())})})


def prepare_data(config: SearchConfig) -> dataset.DatasetSummary:
    """Generate synthetic scans if the config asks for them and `data.path` is empty, then check
    the dataset: a broken one fails here, before any process starts."""
    root = Path(config.data.path)
    if config.data.synthetic and dataset.is_empty(root):
        from kt_cluster.worker.data import synth

        print(f"ktc local: data.synthetic: generating {SYNTH_COUNT} synthetic scans into {root}", flush=True)
        synth.generate(root, count=SYNTH_COUNT, size=config.data.image_size, classes=config.data.classes,
                       seed=config.seed or 0)
    elif not root.exists():
        raise dataset.DatasetError(f"{root}: dataset directory does not exist (data.path, --data); for "
                                   "synthetic scans set data.synthetic: true or pass --synthetic-data")
    return dataset.check_dataset(root, config.data.classes)


def already_complete(config: SearchConfig) -> bool:
    """True when this very config already ran to a successful end here (same results folder)."""
    status_file, summary = config.search_dir / STATUS_FILE, config.search_dir / SUMMARY_FILE
    previous = endpoints.run_dir(config.search_dir) / "search.yaml"
    if not (status_file.is_file() and summary.is_file() and previous.is_file()):
        return False
    try:
        status = json.loads(status_file.read_text())
        same = yaml.safe_load(previous.read_text()) == config.model_dump()
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return same and status.get("done") is True and not status.get("failure")


def write_run_files(config: SearchConfig) -> tuple[Path, Path]:
    """The shared config and a fresh token, in the run folder."""
    run_dir = endpoints.run_dir(config.search_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "search.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    token_path = run_dir / "token"
    token_path.touch(mode=0o600)
    token_path.write_text(secrets.token_urlsafe(32))
    return config_path, token_path


def start(config: SearchConfig, config_path: Path, token_path: Path, workers: int,
          base_port: int, final_scrape_seconds: float = 0.0) -> tuple[list[Child], str]:
    oracle_port, chief_metrics, *worker_metrics = free_ports(2 + workers, base_port)
    run_dir = config_path.parent
    common = ["--config", str(config_path), "--auth-token-file", str(token_path),
              "--final-scrape-seconds", str(final_scrape_seconds)]
    env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(oracle_port),
               PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    children = [Child.start("chief", python_module("kt_cluster", "chief", *common, "--metrics-port", str(chief_metrics)),
                            run_dir / "chief.log", dict(env, KERASTUNER_TUNER_ID="chief"))]
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for i, port in enumerate(worker_metrics):
        argv = python_module("kt_cluster", "worker", *common, "--metrics-port", str(port), "--threads", threads)
        children.append(Child.start(f"worker-{i}", argv, run_dir / f"worker-{i}.log",
                                    dict(env, KERASTUNER_TUNER_ID=f"worker-{i}")))
    address = f"127.0.0.1:{oracle_port}"
    ports = dict(zip([c.name for c in children], [chief_metrics, *worker_metrics]))
    endpoints.write(run_dir / endpoints.FILE, {
        "search_id": config.search_id, "chief": address, "chief_metrics_port": chief_metrics,
        "token_file": str(token_path), "results": config.results, "search_dir": str(config.search_dir),
        "launcher_pid": os.getpid(),
        "processes": {c.name: {"pid": c.pid, "metrics_port": ports[c.name], "log": str(c.log)} for c in children}})
    print(f"ktc local: chief on {address} (metrics :{chief_metrics}), {workers} workers "
          f"(metrics :{','.join(map(str, worker_metrics))}); logs in {run_dir}", flush=True)
    print(f"ktc local: watch from another terminal: ktc status --chief {address} --auth-token-file {token_path}",
          flush=True)
    return children, address


def stop(children: list[Child], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM workers first (they hand back), then the chief; SIGKILL whatever remains."""
    stop_all([c for c in children if c.name != "chief"], grace)
    stop_all([c for c in children if c.name == "chief"], grace)  # it must outlive the hand-backs


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


class NoWorkerLeft(Exception):
    """Every worker exited while the search still had trials to run."""


def monitor(children: list[Child], address: str, token: str, view: ProgressView, final: Path) -> int:
    """Show the chief's status until it exits, then its final status (`final`, written by this
    chief as it finished: polling can miss the last trial's end). Raises `NoWorkerLeft` when
    every worker has exited and the chief does not say the search is over."""
    from kt_cluster.core.protocol import status as ask

    chief, workers, started = children[0], children[1:], time.time()
    while chief.running():
        try:
            view.show(ask(address, token, timeout=2.0))
        except Exception:  # noqa: BLE001 - the chief is still starting or busy; ask again
            pass
        if not any(w.running() for w in workers) and chief.running():
            _check_search_over(chief, workers, address, token)
        time.sleep(POLL_SECONDS)
    if final.exists() and final.stat().st_mtime >= started:
        view.show(json.loads(final.read_text()))
    return chief.returncode


def _check_search_over(chief: Child, workers: list[Child], address: str, token: str) -> None:
    """Workers exit 0 once told the search is over, or after handing their trial back (SIGTERM).
    Ask the chief which it is; give it a moment, as it may be writing the results already."""
    from kt_cluster.core.protocol import status as ask

    deadline, last = time.monotonic() + LAST_WORDS_SECONDS, None
    while chief.running() and time.monotonic() < deadline:
        try:
            last = ask(address, token, timeout=2.0)
        except Exception:  # noqa: BLE001 - busy or finishing; ask again
            pass
        if last is not None and last["done"]:
            return
        time.sleep(POLL_SECONDS)
    if not chief.running():
        return
    exits = ", ".join(f"{w.name} exit {w.returncode}" for w in workers)
    remaining = "" if last is None else (f": {last['completed']} of {last['max_trials']} trials completed, "
                                         f"{last['queued']} handed back and waiting")
    raise NoWorkerLeft(f"every worker has exited ({exits}) but the search is not over{remaining}")


class Interrupted(Exception):
    """SIGINT or SIGTERM reached `ktc local`: stop the search, the children handing back."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, _frame) -> None:
    raise Interrupted(signum)


def run_local(config: SearchConfig, workers: int, base_port: int = 0, quiet: bool = False,
              final_scrape_seconds: float = 0.0) -> int:
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    config = resolve(config)
    search_dir = config.search_dir
    if already_complete(config):
        print(f"ktc local: search {config.search_id!r} is already complete; its results are in {search_dir}", flush=True)
        print((search_dir / SUMMARY_FILE).read_text(), end="", flush=True)
        return 0
    for warning in budget_warnings(config):
        print(f"ktc local: warning: {warning}", flush=True)
    print(f"ktc local: {prepare_data(config)}", flush=True)
    config_path, token_path = write_run_files(config)
    # Both signals, whatever was inherited: a shell starts background jobs with SIGINT ignored,
    # and the children run in sessions of their own, so a default SIGTERM would orphan them.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    children, address = start(config, config_path, token_path, workers, base_port, final_scrape_seconds)
    code, failed = 1, True
    try:
        code = monitor(children, address, token_path.read_text(), ProgressView(quiet), search_dir / STATUS_FILE)
        failed = code != 0
        if code in CHIEF_REFUSALS:
            # The chief's one line names the culprit; the workers never got a chief to hear "over"
            # from, and their exits (stopped here) say nothing more.
            refusal = [line for line in children[0].tail(50).splitlines() if line.startswith("ktc chief: ")]
            print(refusal[-1] if refusal else children[0].tail(), flush=True)
            failed = False
        else:
            # Workers exit once told the search is over (and, with a final scrape, once scraped).
            wait_all(children[1:], STOP_GRACE_SECONDS + final_scrape_seconds)
    except Interrupted as exc:
        print("\nktc local: interrupted; stopping (workers hand their trials back)", flush=True)
        code, failed = 128 + exc.signum, False
    except NoWorkerLeft as exc:
        print(f"ktc local: {exc}; stopping the chief (its state is kept: run the same command to resume)",
              flush=True)
        code, failed = 1, False
    finally:
        stop(children)
    summary = search_dir / SUMMARY_FILE
    if code == 0 and summary.exists():
        print(summary.read_text(), end="", flush=True)
    for child in children[1:] if code not in CHIEF_REFUSALS else ():
        if child.returncode not in (0, None):
            print(f"ktc local: {child.name} exited with {child.returncode}; log: {child.log}", flush=True)
    if failed:
        print(f"ktc local: the search failed (chief exit {code}); chief log: {children[0].log}", flush=True)
        print(children[0].tail(), flush=True)
    return code
