#!/usr/bin/env python3
"""GPU benchmark: how busy do the workers keep one GPU, and at how many trials per hour?

Not part of the test run (tests/test_gpu_bench.py runs it at --tiny size). From the repository
root, with the project, Keras and keras-tuner importable:

    python benchmarks/gpu_bench.py --json gpu-bench.json   # one GPU: under 8 minutes
    python benchmarks/gpu_bench.py --tiny                  # a CPU smoke check of the same path
    python benchmarks/gpu_bench.py --tiny --backend jax --no-tensorflow   # ... without TensorFlow

Keras runs on TensorFlow when it can be imported, else on JAX (`--backend` chooses); the backend
is printed with every figure. With JAX the data come from numpy arrays (`kt_cluster.worker.data.feed`),
not tf.data: the same U-Net, worker loop, checkpoints and chief either way.

Every scenario is a real search on a synthetic set (`kt_cluster.worker.data.synth`, generated
once under --data-dir): a `python -m kt_cluster chief` on the CPU (CUDA_VISIBLE_DEVICES="",
JAX_PLATFORMS=cpu: it never holds GPU memory) and N worker processes on the GPU, started as
`ktc worker --processes N` (the chart's workers.trialsPerGPU) starts them (tuner ids, CPU
threads, environment: `kt_cluster.processes.plan`), each running the production worker loop
in-process, observed as trial_overhead.py observes it:

  N per GPU     N = 1, 2, 4, 8 processes sharing the GPU, each training its own trials
  mixed prec.   1 per GPU with `mixed_precision: true`
  XLA off       1 per GPU with `jit_compile: false` (the others leave it to Keras: XLA on with
                JAX, and with TensorFlow on a GPU; the XLA column says what Keras chose)

Each scenario is measured over a window of --seconds that opens once every process has
finished an epoch (start-up, TensorFlow or JAX import, the data decode and the first compile
are outside it):

  trials/h     trials completed in the window x 3600 / window
  epochs/h     epochs finished, likewise (finer grained than trials)
  steps/s      training steps per second, all processes together
  train %      time in training steps (each counted up to its trial's median step) / (processes x window)
  compile %    first steps' excess over the median (tracing, XLA compilation) / (processes x window)
  stall %      the other steps' excess over the median (waiting for input) / time in steps
  GPU util     mean of nvidia-smi's utilization.gpu, sampled every 0.5 s ("n/a" without nvidia-smi)
  GPU mem      peak memory in use on the GPU during the window

The overhead split (per trial, seconds) is trial_overhead.py's: steps, first step (trace and
compile), stalls, validation, epoch end (checkpoints, UpdateTrial), setup (build, data, restore),
after, rpc, rest.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import statistics
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("trial_overhead", Path(__file__).with_name("trial_overhead.py"))
overhead = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(overhead)

CLASSES = ["table_number", "stamp", "signature"]
FULL = {"startup": 240, "pages": 320, "image_size": 256, "batch_size": 16, "epochs": 3, "seconds": 40,
        "counts": (1, 2, 4, 8),
        "space": {"start_neurons": {"min": 16, "max": 64, "step": 16}, "net_depth": {"min": 3, "max": 5},
                  "activation": ["relu", "elu", "mish", "lrelu"]}}
# Spaces large enough that a random search does not run out of new configurations in a window.
TINY = {"startup": 600, "pages": 24, "image_size": 32, "batch_size": 4, "epochs": 2, "seconds": 15,
        "counts": (1, 2),
        "space": {"start_neurons": {"min": 4, "max": 16, "step": 2}, "net_depth": {"min": 1, "max": 2},
                  "activation": ["relu", "elu", "mish", "lrelu"], "bn_after_act": False}}
BUDGET_SECONDS = 450.0  # the whole run on one GPU: under 8 minutes with the set's generation
STOP_TIMEOUT = 120.0  # a worker told to stop finishes the compile in progress first


# --- the GPU, observed from outside ------------------------------------------------------------

class GpuSampler:
    """nvidia-smi's utilization.gpu and memory.used every 0.5 s, with the time of each sample."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 "-i", "0", "-lms", "500"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            try:
                util, memory = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.monotonic(), util, memory))

    def window(self, start: float, end: float) -> tuple[float | None, float | None]:
        """(mean utilization %, peak memory GiB) between start and end, or (None, None)."""
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not inside:
            return None, None
        return sum(u for u, _ in inside) / len(inside), max(m for _, m in inside) / 1024

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            self.process.wait()


def device_name() -> str:
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip().splitlines()
        if out:
            return out[0]
    return "no GPU (nvidia-smi not found)"


# --- one scenario --------------------------------------------------------------------------------

def chief_status(address: str) -> dict | None:
    from kt_cluster.core.protocol import status

    try:
        return status(address, None, timeout=5.0)
    except Exception:  # noqa: BLE001 - not serving yet
        return None


def scenario_config(preset: dict, data: Path, results: Path, extra: dict) -> dict:
    return {"search_id": "gpu-bench", "tuner": "random", "max_trials": 10_000, "epochs": preset["epochs"],
            "seed": 0, "batch_size": preset["batch_size"], "early_stopping": False, "results": str(results),
            "data": {"path": str(data), "image_size": preset["image_size"], "classes": CLASSES},
            "space": preset["space"], **extra}


def run_scenario(name: str, processes: int, extra: dict, preset: dict, data: Path, env: dict, work: Path,
                 sampler: GpuSampler, seconds: float) -> dict:
    """A search with `processes` worker processes on the GPU, measured over a window of `seconds`
    that opens once each has finished an epoch."""
    import yaml

    from kt_cluster.processes import plan

    work.mkdir(parents=True)
    config_path = work / "search.yaml"
    config_path.write_text(yaml.safe_dump(scenario_config(preset, data, work / "results", extra)))
    port = overhead.free_port()
    address = f"127.0.0.1:{port}"
    env = dict(env, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port))
    chief_env = dict(env, KERASTUNER_TUNER_ID="chief", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    # The processes `ktc worker --processes N` would start (tuner ids, threads, environment), each
    # running the production loop observed in-process.
    slots = plan(["worker"], "worker-0", processes, overhead.free_port(), None, 0, "all", environ=env)
    chief, workers = None, []
    try:
        with open(work / "chief.log", "wb") as log:
            chief = subprocess.Popen([sys.executable, "-m", "kt_cluster", "chief", "--config", str(config_path),
                                      "--insecure", "--metrics-port", str(overhead.free_port())], env=chief_env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for slot in slots:
            threads = slot.argv[slot.argv.index("--threads") + 1]
            argv = [sys.executable, __file__, "--side", "--config", str(config_path), "--address", address,
                    "--tuner-id", slot.tuner_id, "--threads", threads, "--json", str(work / f"{slot.tuner_id}.json")]
            with open(work / f"{slot.tuner_id}.log", "wb") as log:
                workers.append(subprocess.Popen(argv, env=slot.env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True))
        trained, deadline = set(), time.monotonic() + preset["startup"]
        while len(trained) < processes:  # each process has finished an epoch: compiled, data decoded
            status = chief_status(address)
            trained |= {r["tuner_id"] for r in (status or {}).get("running", []) if r["epoch"] >= 0}
            if any(w.poll() is not None for w in workers) or chief.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: not every worker process trained an epoch; logs in {work}")
            time.sleep(0.5)
        start, start_mono = time.time(), time.monotonic()
        time.sleep(seconds)
        end, end_mono = time.time(), time.monotonic()
    finally:
        stop_all(workers, STOP_TIMEOUT)  # they hand their trials back (after a compile in progress)
        overhead.stop_process(chief)
    # A process killed while it compiled leaves what it measured up to its last trial.
    sides = [json.loads(path.read_text()) if path.exists() else {"trials": []}
             for path in (work / f"{slot.tuner_id}.json" for slot in slots)]
    util, memory = sampler.window(start_mono, end_mono)
    row = {"scenario": name, "processes": processes, "window": end - start, "config": extra,
           "gpu_util": util, "gpu_memory_gib": memory, **window_figures(sides, start, end, processes)}
    trials = [t for side in sides for t in side["trials"]]
    row["overhead"] = overhead.summarise(trials)
    row["xla"] = sorted({t["jit_compile"] for t in trials if t.get("jit_compile") is not None})
    row["precision"] = sorted({t["policy"] for t in trials if t.get("policy")})
    return row


def stop_all(processes: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM to every process group at once, SIGKILL to what is left after `timeout`."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def window_figures(sides: list[dict], start: float, end: float, processes: int) -> dict:
    """What happened between start and end, from every process's observed trials."""
    window = end - start
    trials = epochs = steps = 0
    steady = compile_ = stalls = in_steps = 0.0
    for trial in (t for side in sides for t in side["trials"]):
        trials += trial["complete"] and start <= trial["ended_at"] <= end
        epochs += sum(start <= at <= end for at in trial["epochs_at"])
        durations = trial["step_seconds"]
        if not durations:
            continue
        median = statistics.median(durations[1:] or durations)
        for i, (at, seconds) in enumerate(zip(trial["steps_at"], durations)):
            if not start <= at <= end:
                continue
            steps += 1
            in_steps += seconds
            steady += min(seconds, median)
            excess = max(0.0, seconds - median)
            compile_ += excess if i == 0 else 0.0
            stalls += excess if i > 0 else 0.0
    return {"trials_per_hour": trials * 3600 / window, "epochs_per_hour": epochs * 3600 / window,
            "steps_per_second": steps / window, "train_share": steady / (processes * window),
            "compile_share": compile_ / (processes * window), "stall_share": stalls / in_steps if in_steps else None}


# --- the run ---------------------------------------------------------------------------------------

def pick_backend(requested: str | None, no_tensorflow: bool) -> str:
    if requested:
        return requested
    if no_tensorflow or importlib.util.find_spec("tensorflow") is None:
        return "jax"
    return "tensorflow"


def environment(backend: str, no_tensorflow: bool, tmp: Path) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    if no_tensorflow:  # every process started here finds no TensorFlow, as on a machine without it
        blocker = tmp / "no-tensorflow" / "tensorflow"
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text('raise ImportError("TensorFlow is not installed here")\n')
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker.parent), env.get("PYTHONPATH")]))
    return env


def versions(env: dict) -> str:
    code = ("import keras, keras_tuner; b = keras.backend.backend(); "
            "m = __import__('jax' if b == 'jax' else 'tensorflow'); "
            "d = m.devices() if b == 'jax' else m.config.list_physical_devices(); "
            "print(f'Keras {keras.__version__} on {b} {m.__version__} (devices {[str(x) for x in d]}), '"
            "      f'keras-tuner {keras_tuner.__version__}')")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return out.stdout.strip() or f"(versions unavailable: {out.stderr.strip().splitlines()[-1:]})"


def dataset(data_dir: Path, preset: dict) -> Path:
    from kt_cluster.worker.data import synth

    path = data_dir / f"synth-{preset['pages']}-{preset['image_size']}px"
    if not (path / "classes.txt").exists():
        if path.exists():
            shutil.rmtree(path)
        synth.generate(path, count=preset["pages"], size=preset["image_size"], classes=CLASSES, seed=0)
    return path


def scenarios(preset: dict) -> list[tuple[str, int, dict]]:
    out = [(f"{n} per GPU", n, {}) for n in preset["counts"]]
    return out + [("mixed precision", 1, {"mixed_precision": True}), ("XLA off", 1, {"jit_compile": False})]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def print_tables(rows: list[dict], backend: str) -> None:
    print(f"\n| scenario ({backend}) | processes | XLA | precision | trials/h | epochs/h | steps/s | train % | compile % "
          "| stall % | GPU util % | GPU mem GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['scenario']} | {r['processes']} | | | {r['error']} | | | | | | | |")
            continue
        util = "n/a" if r["gpu_util"] is None else f"{r['gpu_util']:.1f}"
        memory = "n/a" if r["gpu_memory_gib"] is None else f"{r['gpu_memory_gib']:.1f}"
        xla = "/".join("on" if x else "off" for x in r["xla"]) or "n/a"
        print(f"| {r['scenario']} | {r['processes']} | {xla} | {'/'.join(r['precision']) or 'n/a'} | "
              f"{r['trials_per_hour']:.0f} | {r['epochs_per_hour']:.0f} | "
              f"{r['steps_per_second']:.1f} | {_pct(r['train_share'])} | {_pct(r['compile_share'])} | "
              f"{_pct(r['stall_share'])} | {util} | {memory} |")
    split = [r for r in rows if r.get("overhead")]
    print(f"\noverhead split, seconds per complete trial ({backend}):\n")
    print("| scenario | trials | wall | train % | " + " | ".join(overhead.PHASES) + " |")
    print("|---|---|---|---|" + "---|" * len(overhead.PHASES))
    for r in split:
        s = r["overhead"]
        n = max(1, s["n"])
        print(f"| {r['scenario']} | {s['n']} | {s['wall'] / n:.1f} | {_pct(s['train_share'])} | "
              + " | ".join(f"{s[p] / n:.2f}" for p in overhead.PHASES) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a small set and short windows: a CPU smoke check")
    p.add_argument("--backend", choices=("tensorflow", "jax"), help="Keras backend (default: TensorFlow if importable)")
    p.add_argument("--no-tensorflow", action="store_true", help="hide TensorFlow from every process (implies JAX)")
    p.add_argument("--seconds", type=float, help="measuring window per scenario")
    p.add_argument("--scenarios", help="comma-separated scenario names to run (default: all)")
    p.add_argument("--data-dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "ktc-gpu-bench"))
    p.add_argument("--json", help="write the rows to this file")
    p.add_argument("--keep", help="keep each scenario's config, logs and results under this directory")
    p.add_argument("--side", action="store_true", help=argparse.SUPPRESS)  # internal: the observed worker
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--tuner-id", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        observed = overhead.observe_worker(args.config, args.address, tuner_id=args.tuner_id, threads=args.threads,
                                           save=Path(args.json))
        Path(args.json).write_text(json.dumps(observed))
        return 0

    sys.path.insert(0, str(REPO))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwind: stop the chief and the workers
    started = time.monotonic()
    preset = TINY if args.tiny else FULL
    seconds = args.seconds or preset["seconds"]
    backend = pick_backend(args.backend, args.no_tensorflow)
    if args.no_tensorflow and backend != "jax":
        p.error("--no-tensorflow needs the JAX backend")
    chosen = [s for s in scenarios(preset) if not args.scenarios or s[0] in args.scenarios.split(",")]
    rows: list[dict] = []
    sampler = GpuSampler()
    with tempfile.TemporaryDirectory(prefix="ktc-gpu-bench-") as tmp:
        tmp = Path(args.keep) if args.keep else Path(tmp)
        env = environment(backend, args.no_tensorflow, tmp)
        data = dataset(Path(args.data_dir), preset)
        print(f"{device_name()}; {versions(env)}; {os.cpu_count()} cores; set {data.name}, batch "
              f"{preset['batch_size']}, {preset['epochs']} epochs per trial; window {seconds:.0f} s", flush=True)
        try:
            for i, (name, processes, extra) in enumerate(chosen):
                if not args.tiny and time.monotonic() - started > BUDGET_SECONDS:
                    rows.append({"scenario": name, "processes": processes, "error": "skipped: time budget"})
                    continue
                try:
                    row = run_scenario(name, processes, extra, preset, data, env, tmp / f"s{i}", sampler, seconds)
                except RuntimeError as exc:
                    row = {"scenario": name, "processes": processes, "error": str(exc)}
                row["backend"] = backend
                rows.append(row)
                print(f"  {name}: " + (row.get("error") or f"{row['trials_per_hour']:.0f} trials/h, "
                      f"{row['steps_per_second']:.1f} steps/s, train {_pct(row['train_share'])} %, "
                      f"GPU {row['gpu_util'] if row['gpu_util'] is not None else 'n/a'} %")
                      + f" ({time.monotonic() - started:.0f} s)", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(rows, indent=2))
        finally:
            sampler.stop()
    print_tables(rows, backend)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0 if all("error" not in r or r["error"].startswith("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
