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
JAX_PLATFORMS=cpu: it never holds GPU memory) and workers on the GPU, as production runs them:

  1 per GPU     one worker process running the production loop in-process, observed as in
                trial_overhead.py (the per-trial overhead split below comes from these runs)
  N per GPU     `python -m kt_cluster worker --processes N` (the chart's workers.trialsPerGPU):
                N processes sharing the GPU, each with its own trials
  mixed prec.   1 per GPU with `mixed_precision: true`
  XLA off/on    1 per GPU with `jit_compile: false` / `true` (the others leave it to Keras:
                on for JAX, on for TensorFlow on a GPU)

Each scenario is measured over a window of --seconds that opens once every process holds a
trial (start-up, TensorFlow or JAX import and the first data decode are outside it):

  trials/h     trials completed in the window x 3600 / window (from the workers' metrics)
  epochs/h     epochs finished, likewise (finer grained than trials)
  steps/s      training steps per second, all processes together
  train %      time inside training steps / (processes x window): ktc_worker_step_duration_seconds
  GPU util     mean of nvidia-smi's utilization.gpu, sampled every 0.5 s ("n/a" without nvidia-smi)
  GPU mem      peak memory in use on the GPU during the window
  stall %      1-process scenarios: steps' excess over the median step (waiting for input, slow
               steps after a compile) / time in steps, from the observed trials

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
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("trial_overhead", Path(__file__).with_name("trial_overhead.py"))
overhead = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(overhead)

CLASSES = ["table_number", "stamp", "signature"]
FULL = {"pages": 320, "image_size": 256, "batch_size": 16, "epochs": 3, "seconds": 40, "counts": (1, 2, 4, 8),
        "space": {"start_neurons": {"min": 16, "max": 64, "step": 16}, "net_depth": {"min": 3, "max": 5},
                  "activation": ["relu", "elu", "mish", "lrelu"]}}
# Spaces large enough that a random search does not run out of new configurations in a window.
TINY = {"pages": 24, "image_size": 32, "batch_size": 4, "epochs": 2, "seconds": 15, "counts": (1, 2),
        "space": {"start_neurons": {"min": 4, "max": 16, "step": 2}, "net_depth": {"min": 1, "max": 2},
                  "activation": ["relu", "elu", "mish", "lrelu"], "bn_after_act": False}}
STARTUP_TIMEOUT = 240.0
BUDGET_SECONDS = 450.0  # the whole run on one GPU: under 8 minutes with the set's generation


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


# --- the workers, observed through their metrics -----------------------------------------------

def scrape(ports: list[int]) -> dict[str, float]:
    """Sums over the processes of the counters the window needs."""
    from prometheus_client.parser import text_string_to_metric_families

    total = {"steps": 0.0, "step_seconds": 0.0, "epochs": 0.0, "completed": 0.0}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "ktc_worker_step_duration_seconds_count":
                    total["steps"] += sample.value
                elif sample.name == "ktc_worker_step_duration_seconds_sum":
                    total["step_seconds"] += sample.value
                elif sample.name == "ktc_worker_epochs_total":
                    total["epochs"] += sample.value
                elif sample.name == "ktc_worker_trials_total" and sample.labels.get("outcome") == "completed":
                    total["completed"] += sample.value
    return total


def chief_status(address: str) -> dict | None:
    from kt_cluster.core.protocol import status

    try:
        return status(address, None, timeout=5.0)
    except Exception:  # noqa: BLE001 - not serving yet
        return None


# --- one scenario --------------------------------------------------------------------------------

def scenario_config(preset: dict, data: Path, results: Path, extra: dict) -> dict:
    return {"search_id": "gpu-bench", "tuner": "random", "max_trials": 10_000, "epochs": preset["epochs"],
            "seed": 0, "batch_size": preset["batch_size"], "early_stopping": False, "results": str(results),
            "data": {"path": str(data), "image_size": preset["image_size"], "classes": CLASSES},
            "space": preset["space"], **extra}


def run_scenario(name: str, processes: int, extra: dict, preset: dict, data: Path, env: dict, work: Path,
                 sampler: GpuSampler, seconds: float) -> dict:
    import yaml

    work.mkdir(parents=True)
    config_path = work / "search.yaml"
    config_path.write_text(yaml.safe_dump(scenario_config(preset, data, work / "results", extra)))
    port = overhead.free_port()
    address = f"127.0.0.1:{port}"
    env = dict(env, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port))
    chief_env = dict(env, KERASTUNER_TUNER_ID="chief", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    first_metrics = _free_ports(processes)
    chief = worker = None
    try:
        with open(work / "chief.log", "wb") as log:
            chief = subprocess.Popen([sys.executable, "-m", "kt_cluster", "chief", "--config", str(config_path),
                                      "--insecure", "--metrics-port", str(overhead.free_port())], env=chief_env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        worker_env = dict(env, KERASTUNER_TUNER_ID="worker-0", XLA_PYTHON_CLIENT_PREALLOCATE="false")
        if processes == 1:  # observed in-process: the overhead split
            argv = [sys.executable, __file__, "--side", "--config", str(config_path), "--address", address,
                    "--metrics-port", str(first_metrics), "--json", str(work / "side.json")]
        else:
            argv = [sys.executable, "-m", "kt_cluster", "worker", "--config", str(config_path), "--insecure",
                    "--processes", str(processes), "--metrics-port", str(first_metrics)]
        with open(work / "workers.log", "wb") as log:
            worker = subprocess.Popen(argv, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            status = chief_status(address)
            if status and len([r for r in status["running"] if r["epoch"] >= 0]) >= processes:
                break
            if worker.poll() is not None or chief.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the workers did not all start a trial; logs in {work}")
            time.sleep(0.5)
        ports = [first_metrics + i for i in range(processes)]
        before, start = scrape(ports), time.monotonic()
        time.sleep(seconds)
        after, end = scrape(ports), time.monotonic()
    finally:
        for process in (worker, chief):  # SIGTERM: the workers hand their trials back
            overhead.stop_process(process)
    window = end - start
    util, memory = sampler.window(start, end)
    delta = {k: after[k] - before[k] for k in after}
    row = {"scenario": name, "processes": processes, "window": window, "config": extra,
           "trials_per_hour": delta["completed"] * 3600 / window, "epochs_per_hour": delta["epochs"] * 3600 / window,
           "steps_per_second": delta["steps"] / window, "train_share": delta["step_seconds"] / (processes * window),
           "gpu_util": util, "gpu_memory_gib": memory}
    side = work / "side.json"
    if side.exists():
        trials = json.loads(side.read_text())["trials"]
        summary = overhead.summarise(trials)
        steps_time = summary["steps"] + summary["stalls"] + summary["first_step"]
        row["stall_share"] = summary["stalls"] / steps_time if steps_time else None
        row["overhead"] = summary
    return row


def _free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (worker process i serves metrics on it + i)."""
    import socket

    for _ in range(100):
        first = overhead.free_port()
        try:
            sockets = [socket.create_server(("127.0.0.1", first + i)) for i in range(count)]
        except OSError:
            continue
        for s in sockets:
            s.close()
        return first
    raise RuntimeError(f"no {count} consecutive free ports")


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
    return out + [("mixed precision", 1, {"mixed_precision": True}), ("XLA off", 1, {"jit_compile": False}),
                  ("XLA on", 1, {"jit_compile": True})]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def print_tables(rows: list[dict], backend: str) -> None:
    print(f"\n| scenario ({backend}) | processes | trials/h | epochs/h | steps/s | train % | GPU util % | GPU mem GiB | stall % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['scenario']} | {r['processes']} | {r['error']} | | | | | | |")
            continue
        util = "n/a" if r["gpu_util"] is None else f"{r['gpu_util']:.1f}"
        memory = "n/a" if r["gpu_memory_gib"] is None else f"{r['gpu_memory_gib']:.1f}"
        print(f"| {r['scenario']} | {r['processes']} | {r['trials_per_hour']:.0f} | {r['epochs_per_hour']:.0f} | "
              f"{r['steps_per_second']:.1f} | {_pct(r['train_share'])} | {util} | {memory} | {_pct(r.get('stall_share'))} |")
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
    p.add_argument("--metrics-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        Path(args.json).write_text(json.dumps(overhead.observe_worker(args.config, args.address, args.metrics_port)))
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
