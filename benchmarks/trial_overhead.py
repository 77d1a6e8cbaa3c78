#!/usr/bin/env python3
"""Per-trial overhead of a worker: how much of its wall time is spent inside training steps?

Not part of the test run. From the repository root, in the project's virtualenv:

    python benchmarks/trial_overhead.py --baseline REV      # REV (e.g. main before a change) and this tree
    python benchmarks/trial_overhead.py --sets quickstart --epochs 1,3 --trials 2   # a quick look

For each code tree (this one, uncommitted changes included, and `--baseline`'s commit; each
unpacked with `git archive` into a temp dir and put first on PYTHONPATH), each dataset and each trial length it runs a real search: a
`python -m kt_cluster chief` process (random tuner, seed 0, the quickstart space, `--trials`
trials of E epochs) and one worker process that runs the production worker loop
(`kt_cluster.worker.main.run_worker`) in-process, against that chief, until the search is over.
The worker is observed, not changed: `keras.Model.fit` gets a first and a last callback that
time every phase, and the chief client's calls are timed. Datasets (generated once under
--data-dir by `kt_cluster.worker.data.synth`, seed 0):

  quickstart  48 pages of 48 px, what `ktc local --config examples/quickstart.yaml` generates
  large       384 pages of 128 px (288 train, 96 val)

A trial's wall time (from its CreateTrial call to the end of its EndTrial) splits into:

  steps       training steps, at their own length, less what counts as first step and stalls
  first step  the first step's excess over the median step: tracing the train function (and XLA)
  stalls      the excess over the median of the other steps that lie outside the trial's noise
              band (median + 3 scaled median absolute deviations): waiting for input (first pass
              over the data), slow steps after a trace or beside a checkpoint write. Steps inside
              the band are training whatever their length: their spread is symmetric (as much
              time below the median as above it), the steps' own noise, not waits
  validation  validation passes, the first one's tracing included
  epoch end   the epoch-end callbacks: checkpoint writes and the UpdateTrial call
  setup       from the trial's start to fit's first callback: model build and compile, input
              pipeline, checkpoint restore
  after       from fit's last callback to the trial's end, EndTrial excepted
  rpc         CreateTrial and EndTrial
  rest        everything else (callbacks' per-batch work, fit's own bookkeeping)

and the worker's start-up (devices, class statistics, tuner; TensorFlow is already imported) is
shown once per worker. "train %" is steps / trial wall time; "train+val %" adds the validation
passes (the evaluation that produces the trial's objective every epoch), the target's measure:
>= 90 % for trials of about 60 s.

With `--clock cpu` every phase is timed in the worker process's CPU seconds instead (the worker
gets one TensorFlow thread): on a shared machine other jobs stretch wall time unevenly (a step
that waits for a core counts as a stall), CPU seconds not. One thread busy all the time, as on an
idle machine, makes the two the same; waits (on the chief, on disk) then count as nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETS = {"quickstart": (48, 48), "large": (384, 128)}  # pages, pixels
CLASSES = ["table_number", "stamp", "signature"]
PHASES = ("steps", "first_step", "stalls", "validation", "epoch_end", "setup", "after", "rpc", "rest")


# --- one side: runs inside a worker process ---------------------------------------------------

now = time.perf_counter  # the side's clock: wall time, or the process's CPU time (`--clock cpu`)


class Trial:
    def __init__(self, trial_id: str, create_seconds: float):
        self.trial_id, self.create_seconds = trial_id, create_seconds
        self.start = now()
        self.started_at = time.time() - create_seconds  # wall clock, comparable across processes
        self.epochs_at: list[float] = []
        self.steps_at: list[float] = []
        self.jit_compile: bool | None = None  # as Keras resolved it
        self.policy: str | None = None
        self.end = self.fit_begin = self.fit_end = None
        self.steps: list[tuple[int, float]] = []  # (epoch, seconds)
        self.validation: list[float] = []
        self.epoch_end: list[float] = []
        self.update_seconds = self.end_seconds = 0.0
        self.epochs = 0
        self._step_start = self._test_start = self._epoch_end_start = 0.0


class Recorder:
    """Observes the worker loop through `keras.Model.fit` and the chief client; changes nothing."""

    def __init__(self):
        self.trials: list[Trial] = []
        self.current: Trial | None = None
        self.last_create = 0.0
        self.on_trial = None  # called after every trial

    def install(self, worker_module, client_module) -> None:
        import keras

        recorder = self
        fit = keras.Model.fit

        def timed_fit(model, *args, callbacks=None, **kwargs):
            head, tail = _Head(recorder.current), _Tail(recorder.current)
            return fit(model, *args, callbacks=[head, *(callbacks or []), tail], **kwargs)

        keras.Model.fit = timed_fit
        run_trial = worker_module.Worker.run_trial
        create, update, end = (getattr(client_module.ChiefClient, n) for n in ("create_trial", "update_trial", "end_trial"))

        def timed_create(client, *args, **kwargs):
            started = now()
            trial = create(client, *args, **kwargs)
            recorder.last_create = now() - started
            return trial

        def timed_run_trial(worker, trial):
            recorder.current = Trial(trial.trial_id, recorder.last_create)
            recorder.current.start -= recorder.last_create
            try:
                return run_trial(worker, trial)
            finally:
                recorder.current.end = now()
                recorder.current.ended_at = time.time()
                recorder.trials.append(recorder.current)
                if recorder.on_trial is not None:
                    recorder.on_trial()

        def timed(method, attribute):
            def call(client, *args, **kwargs):
                started = now()
                try:
                    return method(client, *args, **kwargs)
                finally:
                    if recorder.current is not None:
                        setattr(recorder.current, attribute,
                                getattr(recorder.current, attribute) + now() - started)
            return call

        client_module.ChiefClient.create_trial = timed_create
        client_module.ChiefClient.update_trial = timed(update, "update_seconds")
        client_module.ChiefClient.end_trial = timed(end, "end_seconds")
        worker_module.Worker.run_trial = timed_run_trial


@functools.cache
def _callback_classes():
    import keras

    class Head(keras.callbacks.Callback):
        """First in the list: sees each hook before every other callback."""

        def __init__(self, trial):
            super().__init__()
            self.trial = trial

        def on_train_begin(self, logs=None):
            self.trial.fit_begin = now()
            self.trial.jit_compile = bool(self.model.jit_compile)
            self.trial.policy = self.model.dtype_policy.name

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            self.trial.steps.append((self.epoch, now() - self.trial._step_start))
            self.trial.steps_at.append(time.time())

        def on_test_begin(self, logs=None):
            self.trial._test_start = now()

        def on_epoch_end(self, epoch, logs=None):
            self.trial._epoch_end_start = now()

    class Tail(keras.callbacks.Callback):
        """Last in the list: sees each hook after every other callback."""

        def __init__(self, trial):
            super().__init__()
            self.trial = trial

        def on_train_batch_begin(self, batch, logs=None):
            self.trial._step_start = now()

        def on_test_end(self, logs=None):
            self.trial.validation.append(now() - self.trial._test_start)

        def on_epoch_end(self, epoch, logs=None):
            self.trial.epoch_end.append(now() - self.trial._epoch_end_start)
            self.trial.epochs_at.append(time.time())
            self.trial.epochs += 1

        def on_train_end(self, logs=None):
            self.trial.fit_end = now()

    return Head, Tail


def _Head(trial):
    return _callback_classes()[0](trial)


def _Tail(trial):
    return _callback_classes()[1](trial)


def noise_band(durations: list[float], median: float) -> float:
    """The longest step still counted as a plain step: the median plus 3 median absolute
    deviations, scaled to a normal distribution's standard deviation (1.4826)."""
    if not durations:
        return median
    return median + 3 * 1.4826 * statistics.median(abs(d - median) for d in durations)


def split(trial: Trial) -> dict[str, float]:
    """A trial's wall time by phase (seconds); the phases add up to the wall time. `complete`
    is false for a trial cut short (the worker stopped) or that trained nothing."""
    wall = trial.end - trial.start
    out = dict.fromkeys(PHASES, 0.0)
    out["rpc"] = trial.create_seconds + trial.end_seconds
    if trial.fit_begin is None or trial.fit_end is None or not trial.steps:
        out["rest"] = wall - out["rpc"]
        return {**out, "wall": wall, "epochs": trial.epochs, "n_steps": len(trial.steps), "median_step": 0.0,
                "complete": False}
    durations = [s for _, s in trial.steps]
    median = statistics.median(durations[1:] or durations)
    out["first_step"] = max(0.0, durations[0] - median)
    out["stalls"] = sum(d - median for d in durations[1:] if d > noise_band(durations[1:], median))
    out["steps"] = sum(durations) - out["first_step"] - out["stalls"]
    out["validation"] = sum(trial.validation)
    out["epoch_end"] = sum(trial.epoch_end)
    out["setup"] = trial.fit_begin - trial.start - trial.create_seconds
    out["after"] = trial.end - trial.fit_end - trial.end_seconds
    out["rest"] = wall - sum(out.values())
    return {**out, "wall": wall, "epochs": trial.epochs, "n_steps": len(durations), "median_step": median,
            "step_seconds": durations, "complete": True}


def observe_worker(config_path: str, address: str, metrics_port: int | None = None,
                   tuner_id: str = "worker-0", threads: int | None = None, save: Path | None = None,
                   clock: str = "wall") -> dict:
    """Run the production worker loop in this process until the search is over (or SIGTERM),
    observed: the split of every trial, the worker's start-up and wall time (also written to
    `save` after every trial, so that a killed worker leaves what it measured). `clock` "cpu"
    times every phase in this process's CPU seconds instead of wall seconds."""
    global now
    now = time.process_time if clock == "cpu" else time.perf_counter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    import keras  # noqa: F401 - imported before the clock starts, as in a worker's start-up

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from kt_cluster.worker import client as client_module
    from kt_cluster.worker import main as main_module
    from kt_cluster.worker import runner as worker_module
    from kt_cluster.core.config import load

    recorder = Recorder()
    recorder.install(worker_module, client_module)
    config = load(config_path, env={})
    started = now()
    first_create = []
    create = client_module.ChiefClient.create_trial

    def note_first(client, *a, **kw):
        if not first_create:
            first_create.append(now())
        return create(client, *a, **kw)

    client_module.ChiefClient.create_trial = note_first

    def observed() -> dict:
        trials = [dict(split(t), trial_id=t.trial_id, started_at=t.started_at, ended_at=t.ended_at,
                       steps_at=t.steps_at, step_seconds=[d for _, d in t.steps], epochs_at=t.epochs_at,
                       jit_compile=t.jit_compile, policy=t.policy)
                  for t in recorder.trials]
        wall = now() - started
        return {"wall": wall, "startup": (first_create[0] - started) if first_create else wall, "trials": trials}

    if save is not None:
        recorder.on_trial = lambda: Path(save).write_text(json.dumps(observed()))
    main_module.run_worker(config, address, tuner_id, None, metrics_port or free_port(), 25.0, threads=threads)
    return observed()


# --- the driver --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dataset(data_dir: Path, name: str) -> Path:
    from kt_cluster.worker.data import synth

    count, size = SETS[name]
    path = data_dir / f"{name}-{count}-{size}px"
    if not (path / "classes.txt").exists():
        if path.exists():
            shutil.rmtree(path)
        synth.generate(path, count=count, size=size, classes=CLASSES, seed=0)
    return path


def search_config(data: Path, size: int, epochs: int, trials: int, results: Path) -> dict:
    """The quickstart space (examples/quickstart.yaml) with a random tuner: every trial trains `epochs`."""
    return {
        "search_id": "overhead", "tuner": "random", "max_trials": trials, "epochs": epochs, "seed": 0,
        "batch_size": 8, "early_stopping": False, "results": str(results),
        "data": {"path": str(data), "image_size": size, "classes": CLASSES},
        "space": {"start_neurons": {"min": 8, "max": 24, "step": 8}, "net_depth": {"min": 2, "max": 3},
                  "activation": ["mish", "elu", "lrelu"]},
    }


def snapshot_revision() -> str:
    """This tree as a commit, uncommitted changes included (`git stash create` touches nothing)."""
    stash = subprocess.run(["git", "-C", str(REPO), "stash", "create"], check=True, capture_output=True, text=True)
    return stash.stdout.strip() or "HEAD"


def source_tree(rev: str, where: Path) -> Path:
    """`rev`'s source as an importable `kt_cluster` package (first on PYTHONPATH), so that edits
    made while the benchmark runs do not change what it measures."""
    src = where / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    package = where / "path" / "kt_cluster"
    package.mkdir(parents=True)
    for item in (src / "ktc").iterdir():
        (package / item.name).symlink_to(item)
    for sub in ("core", "chief", "worker"):
        (package / sub).symlink_to(src / sub)
    return where / "path"


def run_search(side: str, pythonpath: str | None, data: Path, size: int, epochs: int, args, tmp: Path) -> dict:
    import yaml

    work = tmp / f"{side}-{data.name}-{epochs}"
    work.mkdir(parents=True)
    config_path = work / "search.yaml"
    config_path.write_text(yaml.safe_dump(search_config(data, size, epochs, args.trials, work / "results")))
    port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", KERASTUNER_ORACLE_IP="127.0.0.1",
               KERASTUNER_ORACLE_PORT=str(port))
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    with open(work / "chief.log", "wb") as log:
        chief = subprocess.Popen([sys.executable, "-m", "kt_cluster", "chief", "--config", str(config_path), "--insecure",
                                  "--metrics-port", str(free_port())], env=dict(env, KERASTUNER_TUNER_ID="chief"),
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        out = work / "worker.json"
        with open(work / "worker.log", "wb") as log:
            worker = subprocess.Popen([sys.executable, __file__, "--side", "--config", str(config_path),
                                       "--address", f"127.0.0.1:{port}", "--json", str(out), "--clock", args.clock,
                                       *(["--threads", str(args.threads)] if args.threads else [])],
                                      env=dict(env, KERASTUNER_TUNER_ID="worker-0"), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        if worker.wait() != 0:
            raise SystemExit(f"{side}: the worker failed; log: {work / 'worker.log'}")
        return json.loads(out.read_text())
    finally:
        for process in (worker, chief):
            stop_process(process)


def stop_process(process: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM to its process group (a worker hands its trial back), SIGKILL after `timeout`."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def summarise(trials: list[dict]) -> dict:
    """Sums over the complete trials, their share in training steps, their count and mean wall time."""
    trials = [t for t in trials if t["complete"]]
    if not trials:
        return {**dict.fromkeys((*PHASES, "wall"), 0.0), "train_share": 0.0, "model_share": 0.0, "n": 0,
                "wall_mean": 0.0}
    total = {k: sum(t[k] for t in trials) for k in (*PHASES, "wall")}
    return {**total, "train_share": total["steps"] / total["wall"],
            "model_share": (total["steps"] + total["validation"]) / total["wall"], "n": len(trials),
            "wall_mean": total["wall"] / len(trials)}


def print_table(results: list[dict]) -> None:
    print("\n| code | set | epochs | trial | wall s | train % | train+val % | steps | first step | stalls | validation "
          "| epoch end | setup | after | rpc | rest |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rows = [("first", summarise(r["trials"][:1]))]
        if len(r["trials"]) > 1:
            rows.append((f"later ({len(r['trials']) - 1}, mean)", summarise(r["trials"][1:])))
        for label, s in rows:
            n = s["n"]
            print(f"| {r['side']} | {r['set']} | {r['epochs']} | {label} | {s['wall'] / n:.1f} | {100 * s['train_share']:.1f} | "
                  f"{100 * s['model_share']:.1f} | "
                  + " | ".join(f"{s[p] / n:.2f}" for p in PHASES) + " |")
    print("\nworker start-up (devices, class statistics, tuner), s: "
          + ", ".join(f"{r['side']}/{r['set']}/{r['epochs']}: {r['startup']:.1f}" for r in results))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", help="also measure this git revision (e.g. the commit before a change)")
    p.add_argument("--sets", default="quickstart,large", help=f"datasets, of {', '.join(SETS)}")
    p.add_argument("--epochs", default="1,3,10", help="trial lengths in epochs")
    p.add_argument("--trials", type=int, default=4, help="trials per search (the first one also pays first-time costs)")
    p.add_argument("--data-dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "ktc-overhead-bench"))
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time phases in wall seconds, or in the worker process's CPU seconds (unchanged by "
                        "other jobs' load; with one TensorFlow thread, what an idle machine's wall time would be)")
    p.add_argument("--threads", type=int, help="TensorFlow threads of the worker (default: TensorFlow's choice; "
                                               "1 with --clock cpu)")
    p.add_argument("--side", action="store_true", help=argparse.SUPPRESS)  # internal: one worker process
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.clock == "cpu" and args.threads is None:
        args.threads = 1
    if args.side:
        Path(args.json).write_text(json.dumps(observe_worker(args.config, args.address, threads=args.threads,
                                                             clock=args.clock)))
        return 0

    sys.path.insert(0, str(REPO))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwind: stop the chief and the worker
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    sets = {name: dataset(data_dir, name) for name in args.sets.split(",")}
    lengths = [int(e) for e in args.epochs.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="ktc-overhead-") as tmp:
        tmp = Path(tmp)
        sides = [("this tree", str(source_tree(snapshot_revision(), tmp / "this")))]
        if args.baseline:
            sides.insert(0, (f"baseline {args.baseline}", str(source_tree(args.baseline, tmp / "baseline"))))
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; clock: {args.clock}; "
              f"worker threads: {args.threads or 'TensorFlow default'}; sides: {', '.join(s for s, _ in sides)}",
              flush=True)
        for name, data in sets.items():
            for epochs in lengths:
                for side, path in sides:  # alternate sides per setting, so load changes hit both
                    started = time.perf_counter()
                    r = run_search(side.split()[0], path, data, SETS[name][1], epochs, args, tmp)
                    r.update(side=side, set=name, epochs=epochs)
                    s = summarise(r["trials"])
                    print(f"{side:>20} {name:>10} {epochs:>2} epochs: {s['n']} trials, {s['wall_mean']:.1f} s per trial, "
                          f"train {100 * s['train_share']:.1f} %, train+val {100 * s['model_share']:.1f} % (search {time.perf_counter() - started:.0f} s)", flush=True)
                    results.append(r)
                    if args.json:  # after every search: a long run that stops early keeps what it measured
                        Path(args.json).write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
