#!/usr/bin/env python3
"""Chief benchmark: simulated workers against the stock keras-tuner chief, ours and a do-nothing server.

Not part of the test run. Run from the repository root, in the project's virtualenv:

    python benchmarks/chief_bench.py                 # the full run (~25 minutes on 2 cores)
    python benchmarks/chief_bench.py --quick         # a scaled-down smoke run (~5 minutes)
    python benchmarks/chief_bench.py --scenarios 16x8000 --servers ours,null --json out.json

What it measures
----------------
Each simulated worker speaks keras-tuner's `keras_tuner.Oracle` protocol, one trial at a time:
CreateTrial, 5 x UpdateTrial (one per "epoch", reporting a synthetic objective), EndTrial; with
`--trial-seconds`-style scenarios ("512x3000x2s") it sleeps trial_length/5 before each UpdateTrial
to model training. It sends what a kt-cluster worker sends (bearer token, session and tuner-id
metadata; servers that do not know them ignore them), backs off on IDLE (0.1 s doubling to 1 s,
as `worker/runner.py` does) and leaves on STOPPED. Replies asking for an early stop are ignored
(as stock workers do), so every server sees exactly the same work per trial.

Servers, each started fresh for every scenario in its own subprocess, on loopback:
  stock        keras-tuner 1.4.8's own chief: `oracle_chief.start_server` (one-thread gRPC pool)
               around a `RandomSearchOracle`, default display (verbose), files in a temp dir.
  ours         `python -m kt_cluster chief` (the production entry point: `run_chief`, Prometheus endpoint,
               lease expiry loop, journal) with `--auth-token-file`, tuner `random` (so the median
               early-stopping rule is on, its default), scraped every 10 s as Prometheus would.
  ours-noauth  the same with `--insecure`.
  null         a do-nothing `OracleServicer` answering from canned protos: a synchronous gRPC
               server with a 64-thread pool, as the issue's do-nothing server (and our chief before
               it moved to grpc.aio): the ceiling of this machine (load generator included).
  null-aio     the same servicer on a grpc.aio server (one event loop), as our chief now serves:
               the ceiling of that transport here.
All use the same tiny search space (a log-uniform float and an int).

Rounds: every server but stock runs `--rounds` times per scenario (default 3), in an order rotated
each round; stock runs once (its ratios are far from their targets and it is slow). Before each
server the previous one's disk writes are synced and the machine gets a few seconds. A target's
ratio is taken per round between servers measured in that round, minutes apart, and judged on
the median of the rounds: the machine is shared and its load moves ratios by up to +-25 % between
runs, while the order of servers within a run put whichever came after the stock chief's heavy
writes at a disadvantage.

Reported per (scenario, server): trials/s (trials ended / time from the start signal to the last
EndTrial), client-side latency p50/p99 per RPC (CreateTrial counts only calls that handed out a
trial), the fraction of time workers spend training ("busy": sleep time inside the window from the
start to the first IDLE/STOPPED reply, i.e. before the trial budget runs out and the tail begins;
the whole-run figure is also given), and CPU seconds per trial of the server and of the load
generator (read from /proc and `time.process_time`). Then the restart case:
`ClusterOracle.restore()` timed on the state of a search of 10,000 ended trials (built by driving
the oracle in-process), once just after a compaction and once with a full journal to replay (the
worst case of the compaction policy). Then the hand-back (`--no-handback` skips it): two
production clients pass a one-trial search back and forth on `ktc chief`, and the time from a
HandBack reply until the other worker's CreateTrial returns the trial is recorded. When `worker/asha.py` exists (tuner "asha"), Hyperband and
ASHA are compared at 64 workers on a synthetic objective: busy fraction and best score over time.

Load generator: workers are threads in `--client-procs` processes (default: one per 64 workers,
at least 2). The processes import only grpc and keras-tuner's generated protos (not TensorFlow),
about 2 ms of CPU per simulated trial. Measured against the do-nothing server with 512 workers
and 2-s trials, 1, 2, 8 and 16 processes gave the same busy fraction (88-91%): sleeping threads
cost nothing and one process keeps up, so the default is about headroom, not a measured need.
The machine's cores are shared by the load generator and the server under test, which is why the
do-nothing server is measured in the same run: it shows what this machine can do at all.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TOKEN = "bench-token-0123456789abcdef"
OBJECTIVE = "score"
EPOCHS = 5
RPCS = ("CreateTrial", "UpdateTrial", "EndTrial")
SCRAPE_SECONDS = 10.0
NULL_THREADS = 64  # the sync do-nothing server of the issue, with the pool our chief had before grpc.aio
SERVERS = ("stock", "ours", "ours-noauth", "null", "null-aio")
SCENARIOS = ("16x1000", "16x8000", "64x2000", "512x3000x2s")
QUICK_SCENARIOS = ("16x300", "16x1200", "64x600", "256x600x1s")
ROUNDS = 3  # per scenario, for every server but stock (see run_scenario)
SETTLE_SECONDS = 3.0


# --- shared helpers ------------------------------------------------------------------------------


def load_protos():
    """keras-tuner's generated protos without importing keras_tuner (and so TensorFlow).

    Registers empty `keras_tuner` and `keras_tuner.src` packages pointing at the real directories,
    so that `keras_tuner.src.protos` imports alone. Only for processes that never need the real
    keras_tuner (the load generator)."""
    if "keras_tuner" not in sys.modules:
        spec = importlib.util.find_spec("keras_tuner")
        root = Path(spec.origin).parent
        for name, path in (("keras_tuner", root), ("keras_tuner.src", root / "src")):
            module = types.ModuleType(name)
            module.__path__ = [str(path)]
            sys.modules[name] = module
    from keras_tuner.src import protos

    return protos.get_proto(), protos.get_service(), protos.get_service_grpc()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12)) / ticks  # utime, stime (fields 14, 15)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def synthetic_score(values: dict, epoch: int) -> float:
    """A smooth objective to maximise: best near lr=3e-3, units=200, rising with epochs."""
    lr = float(values.get("lr", 1e-3))
    units = float(values.get("units", 128))
    quality = 1.0 - 0.15 * (math.log10(lr) + 2.5) ** 2 - ((units - 200.0) / 400.0) ** 2
    return quality * (1.0 - 0.6 * 0.7 ** (epoch + 1))


def build_space(hp):
    """The tiny search space, as a `--hypermodel` for `ktc chief` (chief side only: it never trains)."""
    import keras

    hp.Float("lr", 1e-4, 1e-1, sampling="log")
    hp.Int("units", 8, 512)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


# --- the load generator (a child process) -------------------------------------------------------


def client_main(args) -> None:
    import grpc

    pb, service, service_grpc = load_protos()
    status = pb.TrialStatus
    first, count = args.first, args.count
    channels = [grpc.insecure_channel(args.address, options=[("grpc.keepalive_time_ms", 60_000)])
                for _ in range(count)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=120)
    stubs = [service_grpc.OracleStub(c) for c in channels]
    print("ready", flush=True)
    t0 = float(sys.stdin.readline())
    cpu0 = time.process_time()  # every thread of this process, gRPC's own included
    trial_seconds = args.trial_seconds
    lock = threading.Lock()
    out = {"lat": {m: [] for m in RPCS}, "ends": [], "busy": [], "refused": None, "errors": {},
           "workers_done": []}

    def record_error(where: str, exc: grpc.RpcError) -> None:
        with lock:
            key = f"{where}:{exc.code().name}"
            out["errors"][key] = out["errors"].get(key, 0) + 1

    def work(index: int) -> None:
        stub = stubs[index]
        tuner_id = f"sim-{first + index}"
        metadata = [("authorization", f"Bearer {TOKEN}"), ("x-ktc-session", f"s{first + index}-{os.getpid()}"),
                    ("x-ktc-tuner-id", tuner_id)]
        lat = {m: [] for m in RPCS}
        ends, busy = [], []
        refused = None
        pause = 0.1
        call = {"wait_for_ready": True, "timeout": 600, "metadata": metadata}
        time.sleep(max(0.0, t0 - time.time()))
        while True:
            start = time.perf_counter()
            try:
                reply = stub.CreateTrial(service.CreateTrialRequest(tuner_id=tuner_id), **call)
            except grpc.RpcError as exc:
                record_error("CreateTrial", exc)
                time.sleep(0.5)
                continue
            took = time.perf_counter() - start
            trial = reply.trial
            if trial.status == status.STOPPED:
                refused = refused or time.time()
                break
            if trial.status != status.RUNNING:  # IDLE: the budget is handed out, some still run
                refused = refused or time.time()
                time.sleep(pause)
                pause = min(2 * pause, 1.0)
                continue
            pause = 0.1
            lat["CreateTrial"].append(took)
            values = {k: getattr(v, v.WhichOneof("kind")) for k, v in trial.hyperparameters.values.values.items()}
            first_epoch = int(values.get("tuner/initial_epoch", 0))
            last_epoch = int(values.get("tuner/epochs", EPOCHS))
            epochs = max(1, last_epoch - first_epoch)
            score = float("-inf")
            for epoch in range(first_epoch, first_epoch + epochs):
                if trial_seconds:
                    began = time.time()
                    time.sleep(trial_seconds / EPOCHS)
                    busy.append((began, time.time()))
                value = synthetic_score(values, epoch)
                score = max(score, value)
                start = time.perf_counter()
                try:
                    stub.UpdateTrial(service.UpdateTrialRequest(trial_id=trial.trial_id, metrics={OBJECTIVE: value},
                                                                step=epoch), **call)
                except grpc.RpcError as exc:
                    record_error("UpdateTrial", exc)
                lat["UpdateTrial"].append(time.perf_counter() - start)
            trial.status = status.COMPLETED
            start = time.perf_counter()
            try:
                stub.EndTrial(service.EndTrialRequest(trial=trial), **call)
            except grpc.RpcError as exc:
                record_error("EndTrial", exc)
            lat["EndTrial"].append(time.perf_counter() - start)
            ends.append((time.time(), score))
        with lock:
            for m in RPCS:
                out["lat"][m].extend(lat[m])
            out["ends"].extend(ends)
            out["busy"].extend(busy)
            out["workers_done"].append(time.time())
            if refused is not None:
                out["refused"] = min(out["refused"] or refused, refused)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["cpu"] = time.process_time() - cpu0
    for channel in channels:
        channel.close()
    with open(args.out, "w") as handle:
        json.dump(out, handle)


# --- servers (child processes) ------------------------------------------------------------------


def serve_stock(args) -> None:
    """keras-tuner's own chief, as `tuner.search()` starts it on the process whose id has 'chief'."""
    import keras_tuner
    from keras_tuner.src.distribute import oracle_chief

    hp = keras_tuner.HyperParameters()
    build_space_no_model(hp)
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective(OBJECTIVE, "max"), max_trials=args.max_trials, hyperparameters=hp, seed=1)
    oracle._set_project_dir(args.dir, "stock")
    os.environ.update(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(args.port))
    oracle_chief.start_server(oracle)


def build_space_no_model(hp) -> None:
    hp.Float("lr", 1e-4, 1e-1, sampling="log")
    hp.Int("units", 8, 512)


def serve_null(args) -> None:
    """A do-nothing Oracle servicer: canned replies, our server's options and thread pool."""
    from concurrent import futures
    import itertools

    import grpc
    from keras_tuner.src import protos

    from kt_cluster.chief import service as chief_service

    pb, messages = protos.get_proto(), protos.get_service()
    counter = itertools.count()
    space = pb.HyperParameters()
    template = pb.Trial(status=pb.TrialStatus.RUNNING)
    template.hyperparameters.values.values["lr"].float_value = 3e-3
    template.hyperparameters.values.values["units"].int_value = 200
    stopped = messages.CreateTrialResponse(trial=pb.Trial(status=pb.TrialStatus.STOPPED))

    class Null(protos.get_service_grpc().OracleServicer):
        def GetSpace(self, request, context):
            return messages.GetSpaceResponse(hyperparameters=space)

        def CreateTrial(self, request, context):
            n = next(counter)
            if n >= args.max_trials:
                return stopped
            trial = pb.Trial()
            trial.CopyFrom(template)
            trial.trial_id = f"{n:05d}"
            return messages.CreateTrialResponse(trial=trial)

        def UpdateTrial(self, request, context):
            return messages.UpdateTrialResponse(trial=pb.Trial(trial_id=request.trial_id, status=pb.TrialStatus.RUNNING))

        def EndTrial(self, request, context):
            return messages.EndTrialResponse()

    if args.kind == "null-aio":
        import asyncio

        class AsyncNull(protos.get_service_grpc().OracleServicer):
            pass

        for name in ("GetSpace", "CreateTrial", "UpdateTrial", "EndTrial"):
            setattr(AsyncNull, name, _as_coroutine(getattr(Null, name)))

        async def serve() -> None:
            server = grpc.aio.server(options=chief_service.SERVER_OPTIONS)
            protos.get_service_grpc().add_OracleServicer_to_server(AsyncNull(), server)
            server.add_insecure_port(f"127.0.0.1:{args.port}")
            await server.start()
            await server.wait_for_termination()

        asyncio.run(serve())
        return
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=NULL_THREADS, thread_name_prefix="rpc"),
                         options=chief_service.SERVER_OPTIONS)
    protos.get_service_grpc().add_OracleServicer_to_server(Null(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    server.wait_for_termination()


def _as_coroutine(method):
    async def handler(self, request, context):
        return method(self, request, context)
    return handler


def serve_restore(args) -> None:
    """Drive a ClusterOracle through N ended trials in-process, then time a fresh chief's restore().

    Twice: with the journal just folded into a snapshot (best case), and with the journal holding
    the last SNAPSHOT_EVERY records, all to be replayed (worst case under the compaction policy)."""
    import keras_tuner

    from kt_cluster.chief import oracle as chief_oracle
    from kt_cluster.chief import persistence

    def make(state: Path):
        hp = keras_tuner.HyperParameters()
        build_space_no_model(hp)
        oracle = chief_oracle.cluster_oracle_class(keras_tuner.oracles.RandomSearchOracle)(
            objective=keras_tuner.Objective(OBJECTIVE, "max"), max_trials=args.max_trials + 10, hyperparameters=hp,
            seed=1)
        oracle._set_project_dir(args.dir, "restore")
        oracle.setup_cluster(state, 60.0, 21600.0, early_stopping=True)
        return oracle

    def build(state: Path, compact_at: int | None) -> float:
        oracle = make(state)
        oracle.save()
        started = time.perf_counter()
        for i in range(args.max_trials):
            if i == compact_at:
                oracle._compact()
            tuner_id = f"w{i % 16}"
            trial = oracle.create_trial(tuner_id, session=tuner_id)
            values = trial.hyperparameters.values
            for epoch in range(EPOCHS):
                oracle.update_trial(trial.trial_id, {OBJECTIVE: synthetic_score(values, epoch)}, step=epoch,
                                    tuner_id=tuner_id, session=tuner_id)
            trial.status = "COMPLETED"
            oracle.end_trial(trial, tuner_id=tuner_id, session=tuner_id)
        oracle.create_trial("w-running", session="s")  # one trial still running at the "kill"
        oracle.journal.close()
        return time.perf_counter() - started

    def restore(state: Path) -> float:
        again = make(state)
        started = time.perf_counter()
        assert again.restore()
        took = time.perf_counter() - started
        assert len(again.end_order) == args.max_trials and "w-running" in again.ongoing_trials
        return took

    out = {"trials": args.max_trials}
    built = build(Path(args.dir) / "best", None)  # default policy: compacted every SNAPSHOT_EVERY records
    out["files_best"] = {p.name: p.stat().st_size for p in sorted((Path(args.dir) / "best").iterdir())}
    out["restore_seconds_best"] = restore(Path(args.dir) / "best")
    # Worst case: no compaction for the last SNAPSHOT_EVERY records (10 records a trial here).
    every, persistence.SNAPSHOT_EVERY = persistence.SNAPSHOT_EVERY, 10**9
    build(Path(args.dir) / "worst", max(1, args.max_trials - every // 10 + 1))
    persistence.SNAPSHOT_EVERY = every
    out["files_worst"] = {p.name: p.stat().st_size for p in sorted((Path(args.dir) / "worst").iterdir())}
    out["restore_seconds_worst"] = restore(Path(args.dir) / "worst")
    out["restore_seconds"] = max(out["restore_seconds_best"], out["restore_seconds_worst"])
    out["build_seconds"] = built
    print(json.dumps(out), flush=True)


# --- the orchestrator ---------------------------------------------------------------------------


def parse_scenario(name: str) -> tuple[int, int, float]:
    parts = name.split("x")
    workers, trials = int(parts[0]), int(parts[1])
    seconds = float(parts[2].rstrip("s")) if len(parts) > 2 else 0.0
    return workers, trials, seconds


class Server:
    """One server under test in a subprocess, stopped (killed) on exit."""

    def __init__(self, kind: str, max_trials: int, workdir: Path, tuner: str = "random",
                 extra_config: dict | None = None):
        self.kind, self.port, self.metrics_port = kind, free_port(), free_port()
        self.dir = workdir / kind
        self.dir.mkdir(parents=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]))
        me = [sys.executable, str(Path(__file__).resolve())]
        if kind in ("stock", "null", "null-aio"):
            cmd = me + ["_serve", kind, "--port", str(self.port), "--dir", str(self.dir),
                        "--max-trials", str(max_trials)]
            env["KERASTUNER_TUNER_ID"] = "chief"
        else:
            import yaml

            from kt_cluster.worker.data import synth

            # The chief checks the dataset at start; the bench's clients never read it.
            data = self.dir / "data"
            synth.generate(data, count=4, size=32, classes=["table_number", "stamp", "signature"], seed=0)
            config = {"search_id": "bench", "tuner": tuner, "objective": OBJECTIVE, "direction": "max",
                      "max_trials": max_trials, "hypermodel": "chief_bench:build_space", "seed": 1,
                      "results": str(self.dir / "results"), "data": {"path": str(data)}}
            config.update(extra_config or {})
            (self.dir / "search.yaml").write_text(yaml.safe_dump(config))
            (self.dir / "token").write_text(TOKEN)
            auth = ["--insecure"] if kind == "ours-noauth" else ["--auth-token-file", str(self.dir / "token")]
            cmd = [sys.executable, "-m", "kt_cluster", "chief", "--config", str(self.dir / "search.yaml"), *auth,
                   "--metrics-port", str(self.metrics_port)]
            env.update(KERASTUNER_TUNER_ID="chief", KERASTUNER_ORACLE_IP="127.0.0.1",
                       KERASTUNER_ORACLE_PORT=str(self.port))
        self.log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                     start_new_session=True)
        self._scraping = threading.Event()
        self.scrapes: list[float] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 180.0) -> None:
        import grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} server exited:\n{self.tail()}")
                try:
                    grpc.channel_ready_future(channel).result(timeout=1)
                    return
                except grpc.FutureTimeoutError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.kind} server not up after {timeout}s:\n{self.tail()}") from None

    def start_scraping(self) -> None:
        """Prometheus-like scrapes of ours' /metrics during the run (the collector reads the oracle)."""
        if not self.kind.startswith("ours"):
            return

        def loop():
            while not self._scraping.wait(SCRAPE_SECONDS):
                start = time.perf_counter()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30) as r:
                        r.read()
                    self.scrapes.append(time.perf_counter() - start)
                except OSError:
                    pass

        threading.Thread(target=loop, daemon=True).start()

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = (self.dir / "server.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        self._scraping.set()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def run_clients(address: str, workers: int, trial_seconds: float, procs: int, workdir: Path) -> dict:
    """Start the load generator, release all workers at once, merge what they measured."""
    procs = max(1, min(procs, workers))
    me = [sys.executable, str(Path(__file__).resolve()), "_client"]
    children = []
    per = [workers // procs + (1 if i < workers % procs else 0) for i in range(procs)]
    first = 0
    for i, count in enumerate(per):
        out = workdir / f"client-{i}.json"
        cmd = me + ["--address", address, "--first", str(first), "--count", str(count),
                    "--trial-seconds", str(trial_seconds), "--out", str(out)]
        children.append((subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                          env=dict(os.environ, PYTHONPATH=str(HERE))), out))
        first += count
    for child, _ in children:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("a load generator process failed to connect")
    t0 = time.time() + 0.3
    for child, _ in children:
        child.stdin.write(f"{t0}\n")
        child.stdin.flush()
    for child, _ in children:
        child.wait()
    merged = {"lat": {m: [] for m in RPCS}, "ends": [], "busy": [], "refused": None, "errors": {},
              "workers_done": []}
    for child, out in children:
        if child.returncode != 0:
            raise RuntimeError(f"a load generator process exited with {child.returncode}")
        data = json.loads(out.read_text())
        for m in RPCS:
            merged["lat"][m].extend(data["lat"][m])
        merged["ends"].extend(data["ends"])
        merged["busy"].extend(data["busy"])
        merged["workers_done"].extend(data["workers_done"])
        for k, v in data["errors"].items():
            merged["errors"][k] = merged["errors"].get(k, 0) + v
        if data["refused"] is not None:
            merged["refused"] = min(merged["refused"] or data["refused"], data["refused"])
    merged["t0"] = t0
    merged["client_cpu"] = sum(json.loads(out.read_text())["cpu"] for _, out in children)
    return merged


def busy_fraction(busy: list, workers: int, start: float, end: float) -> float:
    if end <= start:
        return float("nan")
    inside = sum(max(0.0, min(b, end) - max(a, start)) for a, b in busy)
    return inside / (workers * (end - start))


def summarise(kind: str, workers: int, trials: int, seconds: float, data: dict, server_cpu: float,
              scrapes: list[float]) -> dict:
    ends = sorted(t for t, _ in data["ends"])
    t0 = data["t0"]
    wall = (ends[-1] - t0) if ends else float("nan")
    result = {
        "server": kind, "workers": workers, "trials": trials, "trial_seconds": seconds,
        "ended": len(ends), "wall_s": wall, "trials_per_s": len(ends) / wall if ends else 0.0,
        "errors": data["errors"], "server_cpu_per_trial_ms": 1000 * server_cpu / max(1, len(ends)),
        "client_cpu_per_trial_ms": 1000 * data["client_cpu"] / max(1, len(ends)),
        "scrape_max_s": max(scrapes) if scrapes else None,
    }
    for m in RPCS:
        lat = data["lat"][m]
        result[f"{m}_p50_ms"] = 1000 * percentile(lat, 50)
        result[f"{m}_p99_ms"] = 1000 * percentile(lat, 99)
    if seconds:
        refused = data["refused"] or (ends[-1] if ends else t0)
        result["busy_steady"] = busy_fraction(data["busy"], workers, t0, refused)
        result["busy_whole"] = busy_fraction(data["busy"], workers, t0, ends[-1] if ends else t0)
        result["steady_window_s"] = refused - t0
    return result


def run_scenario(name: str, servers: list[str], procs: int | None, workdir: Path, log, rounds: int = 1) -> list[dict]:
    """Each server in turn, `rounds` times, the order rotated each round so that no server always
    runs first or after the same neighbour; stock (slow, with ratios far from their targets) runs
    in the first round only. Before each server: the previous one's writes are synced and the
    machine gets SETTLE_SECONDS, so no server pays for its predecessor's disk writeback."""
    workers, trials, seconds = parse_scenario(name)
    procs = procs or max(2, math.ceil(workers / 64))
    results = []
    for round_ in range(rounds):
        order = servers[round_ % len(servers):] + servers[:round_ % len(servers)]
        for kind in order:
            if kind == "stock" and round_ > 0:
                continue
            os.sync()
            time.sleep(SETTLE_SECONDS)
            result = run_server(name, kind, workers, trials, seconds, procs, workdir / f"{name}-{kind}-{round_}", log)
            result["round"] = round_
            results.append(result)
            log(f"  {'' if rounds == 1 else f'round {round_ + 1} '}" + one_line(result))
    return results


def run_server(name: str, kind: str, workers: int, trials: int, seconds: float, procs: int, where: Path,
               log) -> dict:
    """One server, started fresh in `where`, under one scenario's load."""
    where.mkdir()
    server = Server(kind, trials, where)
    try:
        server.wait_ready()
        time.sleep(0.5)
        cpu0 = server.cpu()
        server.start_scraping()
        data = run_clients(server.address, workers, seconds, procs, where)
        cpu = server.cpu() - cpu0
        result = summarise(kind, workers, trials, seconds, data, cpu, server.scrapes)
        result["scenario"], result["client_procs"] = name, procs
    except Exception:
        log(f"  {kind}: failed; server log tail:\n{server.tail()}")
        raise
    finally:
        server.stop()
    return result


def one_line(r: dict) -> str:
    text = (f"{r['server']:<12} {r['trials_per_s']:8.1f} trials/s  "
            f"Create p50/p99 {r['CreateTrial_p50_ms']:7.1f}/{r['CreateTrial_p99_ms']:7.1f} ms  "
            f"Update {r['UpdateTrial_p50_ms']:6.1f}/{r['UpdateTrial_p99_ms']:7.1f}  "
            f"End {r['EndTrial_p50_ms']:6.1f}/{r['EndTrial_p99_ms']:7.1f}  "
            f"cpu/trial srv {r['server_cpu_per_trial_ms']:5.2f} ms, gen {r['client_cpu_per_trial_ms']:5.2f} ms")
    if "busy_steady" in r:
        text += f"  busy {100 * r['busy_steady']:.0f}% (whole run {100 * r['busy_whole']:.0f}%)"
    if r["ended"] != r["trials"]:
        text += f"  ENDED {r['ended']} of {r['trials']}"
    if r["errors"]:
        text += f"  errors {r['errors']}"
    if r.get("scrape_max_s") is not None:
        text += f"  scrape max {1000 * r['scrape_max_s']:.0f} ms"
    return text


def run_restore(trials: int, workdir: Path) -> dict:
    where = workdir / "restore"
    where.mkdir()
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_serve", "restore", "--dir", str(where),
                          "--max-trials", str(trials), "--port", "0"], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                                  PYTHONPATH=os.pathsep.join([str(HERE), str(REPO)])))
    if out.returncode != 0:
        raise RuntimeError(f"restore benchmark failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_handback(workdir: Path, rounds: int = 20) -> dict:
    """Seconds from a HandBack reply until another worker's CreateTrial hands it the trial.

    Two workers (`kt_cluster.worker.client.ChiefClient`, the production client) share a one-trial search on
    `ktc chief` and pass the trial back and forth: the holder keeps it a random 0.5-3 s, so the
    waiter is anywhere in its IDLE back-off (`kt_cluster.worker.runner.IDLE_BACKOFF`), then hands it back."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # worker.runner imports TensorFlow
    from kt_cluster.worker.client import ChiefClient
    from kt_cluster.worker.runner import IDLE_BACKOFF

    (workdir / "handback").mkdir()
    server = Server("ours", 1, workdir / "handback")
    delays: list[float] = []
    try:
        server.wait_ready()
        settings = types.SimpleNamespace(objective=None, max_trials=1)
        clients = [ChiefClient(settings, server.address, f"worker-{i}", TOKEN) for i in range(2)]
        holder, waiter = clients
        trial = holder.create_trial(holder.tuner_id)
        rng = random.Random(0)
        for _ in range(rounds):
            taken: list[float] = []

            def wait_for_it(client=waiter) -> None:
                pause = IDLE_BACKOFF[0]
                while client.create_trial(client.tuner_id).status != "RUNNING":
                    time.sleep(pause)
                    pause = min(pause * 2, IDLE_BACKOFF[1])
                taken.append(time.perf_counter())

            polling = threading.Thread(target=wait_for_it)
            polling.start()
            time.sleep(rng.uniform(0.5, 3.0))
            assert holder.hand_back(trial.trial_id, timeout=10), "hand-back refused"
            handed = time.perf_counter()
            polling.join(30)
            delays.append(taken[0] - handed)
            holder, waiter = waiter, holder
        for client in clients:
            client.close()
    finally:
        server.stop()
    delays.sort()
    return {"rounds": rounds, "p50_s": percentile(delays, 50), "max_s": delays[-1], "idle_backoff_s": IDLE_BACKOFF}


def run_tuners(workdir: Path, log, workers: int = 64, epoch_seconds: float = 1.0, max_trials: int = 300) -> list[dict]:
    """Hyperband vs ASHA on ours: busy fraction and best score over time (synthetic objective).

    Same space, same trial budget, max_epochs 27 and reduction factor 3 for both (ASHA's rungs:
    1, 3, 9, 27 epochs); Hyperband may repeat its iterations until the budget is spent. A worker
    trains from `tuner/initial_epoch` to `tuner/epochs`, epoch_seconds per epoch; the objective
    (`synthetic_score`, best 1.0) improves with the epochs trained."""
    results = []
    for tuner in ("hyperband", "asha"):
        where = workdir / f"tuners-{tuner}"
        where.mkdir()
        server = Server("ours", max_trials, where, tuner=tuner,
                        extra_config={"max_epochs": 27, "hyperband_factor": 3, "hyperband_iterations": 100,
                                      "early_stopping": False})
        try:
            server.wait_ready()
            time.sleep(0.5)
            # run_clients sleeps trial_seconds / EPOCHS per epoch actually trained.
            data = run_clients(server.address, workers, epoch_seconds * EPOCHS, max(2, workers // 64), where)
        finally:
            server.stop()
        ends = sorted(data["ends"])
        t0 = data["t0"]
        best, curve = float("-inf"), []
        for when, score in ends:
            best = max(best, score)
            curve.append((when - t0, best))
        wall = (ends[-1][0] - t0) if ends else float("nan")
        reach = {f"seconds_to_{q}": next((w for w, b in curve if b >= q), None) for q in (0.9, 0.95, 0.98)}
        at = {f"best_at_{t}s": max((b for w, b in curve if w <= t), default=None) for t in (10, 20, 40)}
        r = {"tuner": tuner, "workers": workers, "trials": len(ends), "wall_s": wall,
             "busy_whole": busy_fraction(data["busy"], workers, t0, ends[-1][0] if ends else t0),
             "best": best, **reach, **at, "curve": curve[:: max(1, len(curve) // 50)]}
        results.append(r)

        def fmt(v, unit=""):
            return "-" if v is None else f"{v:.3f}{unit}" if not unit else f"{v:.1f}{unit}"

        log(f"  {tuner:<10} {len(ends)} trials in {wall:.1f} s, workers busy {100 * r['busy_whole']:.0f}%, "
            f"best {best:.4f}; best at 10/20/40 s: {', '.join(fmt(at[k]) for k in at)}; "
            f"reached 0.90/0.95/0.98 after {', '.join(fmt(reach[k], ' s') for k in reach)}")
    return results


def machine() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} cores, load average {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
            f"Python {sys.version.split()[0]}")


def targets(results: list[dict], restore: dict | None) -> list[tuple[str, str, bool | None]]:
    """Each target's ratio per round, of servers measured in the same round (minutes apart; a server
    measured once, stock, pairs with every round), and its verdict on the median of the rounds."""
    def rounds_of(scenario, server):
        return {r.get("round", 0): r for r in results if r["scenario"] == scenario and r["server"] == server}

    out = []

    def check(name, scenario_a, server_a, scenario_b, server_b, key, factor, cmp, unit=""):
        a, b = rounds_of(scenario_a, server_a), rounds_of(scenario_b, server_b)
        if not a or not b:
            out.append((name, "not measured in this run", None))
            return
        pairs = [(a[k][key], (b[k] if k in b else b[min(b)])[key]) for k in sorted(a)]
        ratios = [x / y if y else float("inf") for x, y in pairs]
        ratio = statistics.median(ratios)
        ok = ratio >= factor if cmp == ">=" else ratio <= factor
        detail = "; ".join(f"{x:.3g}{unit} vs {y:.3g}{unit}: {r:.2f}x" for (x, y), r in zip(pairs, ratios))
        if len(ratios) > 1:
            detail = f"rounds {detail}; median {ratio:.2f}x"
        out.append((name, f"{detail} (need {cmp} {factor}x)", ok))

    check("trials/s at 16 workers, 8,000 trials >= 10x stock", "16x8000", "ours", "16x8000", "stock",
          "trials_per_s", 10, ">=")
    check("trials/s at 16 workers, 8,000 trials >= 0.6x do-nothing", "16x8000", "ours", "16x8000", "null",
          "trials_per_s", 0.6, ">=")
    check("flat cost: ours at 8,000 trials >= 0.8x ours at 1,000", "16x8000", "ours", "16x1000", "ours",
          "trials_per_s", 0.8, ">=")
    check("CreateTrial p99 at 64 workers <= 2x do-nothing", "64x2000", "ours", "64x2000", "null",
          "CreateTrial_p99_ms", 2, "<=", " ms")
    check("512 workers, 2-s trials: busy >= 0.9x do-nothing", "512x3000x2s", "ours", "512x3000x2s", "null",
          "busy_steady", 0.9, ">=")
    if restore is not None:
        out.append((f"restore of a {restore['trials']:,}-trial search <= 3 s",
                    f"{restore['restore_seconds_best']:.2f} s / {restore['restore_seconds_worst']:.2f} s "
                    "(just compacted / full journal)",
                    restore["restore_seconds"] <= 3.0))
    else:
        out.append(("restore of a 10,000-trial search <= 3 s", "not measured in this run", None))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", help=f"comma-separated WORKERSxTRIALS[xSECONDSs] (default {','.join(SCENARIOS)})")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of " + ",".join(SERVERS))
    parser.add_argument("--client-procs", type=int, help="load generator processes (default: 1 per 64 workers, >= 2)")
    parser.add_argument("--restore-trials", type=int, default=10_000, help="0 to skip the restore measurement")
    parser.add_argument("--tuners", action=argparse.BooleanOptionalAction, default=True,
                        help="hyperband vs asha at 64 workers")
    parser.add_argument("--handback", action=argparse.BooleanOptionalAction, default=True,
                        help="time a hand-back until another worker takes the trial")
    parser.add_argument("--rounds", type=int, help=f"runs of each server per scenario (default {ROUNDS}, 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"scaled-down scenarios ({','.join(QUICK_SCENARIOS)})")
    parser.add_argument("--json", help="also write every result to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server logs, journals)")
    args = parser.parse_args(argv)

    scenarios = (args.scenarios.split(",") if args.scenarios else list(QUICK_SCENARIOS if args.quick else SCENARIOS))
    servers = args.servers.split(",")
    rounds = args.rounds or (1 if args.quick else ROUNDS)
    workdir = Path(tempfile.mkdtemp(prefix="chief-bench-"))

    def log(text: str) -> None:
        print(text, flush=True)

    log(f"chief_bench: {machine()}; {rounds} round(s); work dir {workdir}")
    started = time.monotonic()
    results = []
    for name in scenarios:
        workers, trials, seconds = parse_scenario(name)
        log(f"{name}: {workers} workers, {trials} trials, trial length {seconds:g} s")
        results.extend(run_scenario(name, servers, args.client_procs, workdir, log, rounds))
    restore = None
    if args.restore_trials:
        log(f"restore: ClusterOracle.restore() of a {args.restore_trials}-trial search")
        restore = run_restore(args.restore_trials, workdir)
        log(f"  restore {restore['restore_seconds_best']:.2f} s just after a compaction "
            f"(files {restore['files_best']}), {restore['restore_seconds_worst']:.2f} s with a full journal "
            f"(files {restore['files_worst']}); the {restore['trials']:,} trials took {restore['build_seconds']:.1f} s in-process")
    handback = None
    if args.handback:
        log("hand-back: a trial handed back, until another worker's CreateTrial gets it (20 rounds)")
        handback = run_handback(workdir)
        log(f"  p50 {handback['p50_s']:.2f} s, max {handback['max_s']:.2f} s "
            f"(waiting workers poll every {handback['idle_backoff_s'][0]:g} s doubling to {handback['idle_backoff_s'][1]:g} s)")
    tuners = None
    if args.tuners:
        log("tuners: hyperband vs asha on ours, 64 workers, 1 s epochs, 300 trials, max_epochs 27, factor 3")
        tuners = run_tuners(workdir, log)
    log(f"\ntargets ({machine()}):")
    verdicts = targets(results, restore)
    for name, detail, ok in verdicts:
        log(f"  [{'met' if ok else 'NOT met' if ok is False else '-'}] {name}: {detail}")
    log(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results, "restore": restore,
                                               "handback": handback, "tuners": tuners, "targets": verdicts}, indent=1))
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def hidden_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    client = sub.add_parser("_client")
    client.add_argument("--address", required=True)
    client.add_argument("--first", type=int, required=True)
    client.add_argument("--count", type=int, required=True)
    client.add_argument("--trial-seconds", type=float, default=0.0)
    client.add_argument("--out", required=True)
    serve = sub.add_parser("_serve")
    serve.add_argument("kind", choices=("stock", "null", "null-aio", "restore"))
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--dir", required=True)
    serve.add_argument("--max-trials", type=int, required=True)
    args = parser.parse_args(argv)
    if args.role == "_client":
        client_main(args)
    else:
        {"stock": serve_stock, "null": serve_null, "null-aio": serve_null, "restore": serve_restore}[args.kind](args)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_client", "_serve"):
        sys.exit(hidden_main(sys.argv[1:]))
    sys.exit(main())
