#!/usr/bin/env python3
"""How fast `ktc` answers when it has nothing heavy to do (target: under 1 s each).

Not part of the test run. From the repository root, in the project's virtualenv:

    python benchmarks/light_commands.py                 # 7 rounds (~2 min on 2 cores)
    python benchmarks/light_commands.py --rounds 3 --json out.json

Measures the wall time and CPU time of `python -m kt_cluster ...` (what the `ktc` script runs)
for every `--help`, `ktc status` against a live chief (by address and token, and through
`--results` with an endpoints file as `ktc local` writes it), `ktc results` on a finished
search, and a sample of argument, config, token and dataset errors; each command once per round,
rounds interleaved so that a burst of load elsewhere does not fall on one command. Baselines
measured in the same run: the interpreter alone (`python -c pass`) and the import every light
path avoids (`python -c "import tensorflow"`).

Before timing, every command is run once with TensorFlow, Keras and keras-tuner made
unimportable (tests/light_support.py) and must still give its expected answer: the figures are
those of the light paths, not of a heavy path that happens to be quick.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from kt_cluster import endpoints  # noqa: E402
from kt_cluster.core.protocol import status  # noqa: E402
from kt_cluster.supervisor import Child, python_module  # noqa: E402
from kt_cluster.worker.data import synth  # noqa: E402
from light_support import LightPath, blocked, light_paths, plain, write_files  # noqa: E402

TARGET_SECONDS = 1.0
TOKEN = "benchmark-token-0123456789"
TIMED = ["help-ktc", "help-local", "help-chief", "help-status", "results-summary", "results-json",
         "chief-no-token", "chief-config-error", "chief-missing-dataset", "worker-chief-like-id", "local-missing-data"]


def start_chief(folder: Path) -> tuple[Child, str, Path]:
    """A chief on a tiny search with no worker: what `ktc status` talks to."""
    data = folder / "data"
    synth.generate(data, count=4, size=32, classes=["table_number", "stamp", "signature"], seed=0)
    (folder / "chief.yaml").write_text(f"search_id: bench\ndata: {{path: {data}, image_size: 32}}\n"
                                       f"results: {folder / 'chief-results'}\n")
    token = folder / "chief-token"
    token.write_text(TOKEN)
    port = _free_port()
    env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port),
               KERASTUNER_TUNER_ID="chief", TF_CPP_MIN_LOG_LEVEL="2")
    chief = Child.start("chief", python_module("kt_cluster", "chief", "--config", str(folder / "chief.yaml"),
                                               "--auth-token-file", str(token), "--metrics-port", str(_free_port())),
                        folder / "chief.log", env)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            status(address, TOKEN, timeout=2.0)
            break
        except Exception:  # noqa: BLE001 - still loading TensorFlow
            if not chief.running():
                raise SystemExit(f"the chief exited:\n{chief.tail()}")
            time.sleep(0.5)
    # The endpoints file `ktc local` would have written for it.
    search = folder / "local-results" / "bench"
    endpoints.run_dir(search).mkdir(parents=True)
    endpoints.write(endpoints.run_dir(search) / endpoints.FILE, {
        "search_id": "bench", "chief": address, "chief_metrics_port": 0, "token_file": str(token),
        "results": str(search.parent), "search_dir": str(search), "launcher_pid": os.getpid(), "processes": {}})
    return chief, address, token


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (user + system of the child), exit code, output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KTC_", "KERASTUNER_"))}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=clean | env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.returncode, out.stdout + out.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ktc-light-") as tmp:
        folder = Path(tmp)
        write_files(folder)
        paths = {p.name: p for p in light_paths(folder)}
        chief, address, token = start_chief(folder)
        try:
            commands = {name: paths[name] for name in TIMED}
            commands["status-live"] = LightPath("status-live", ["status", "--chief", address, "--auth-token-file",
                                                                str(token)], 0, "trials")
            commands["status-results"] = LightPath("status-results", ["status", "--results",
                                                                      str(folder / "local-results")], 0, "trials")
            for name, path in commands.items():  # the light paths, and only they
                _, _, got, said = run(blocked(path.args), path.env)
                if got != path.code or path.says not in said or "is blocked" in said:
                    raise SystemExit(f"{name}: exit {got}, expected {path.code} saying {path.says!r}:\n{said}")
            timed = {name: (plain(path.args), path.env) for name, path in commands.items()}
            timed["baseline: python -c pass"] = ([sys.executable, "-c", "pass"], {})
            timed["baseline: import tensorflow"] = ([sys.executable, "-c", "import tensorflow"], {})
            walls: dict[str, list[float]] = {name: [] for name in timed}
            cpus: dict[str, list[float]] = {name: [] for name in timed}
            for _ in range(args.rounds):
                for name, (argv, env) in timed.items():
                    wall, cpu, _, _ = run(argv, env)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
        finally:
            chief.stop(grace=10)
    rows = [{"command": name, "median_s": statistics.median(walls[name]), "max_s": max(walls[name]),
             "min_s": min(walls[name]), "cpu_median_s": statistics.median(cpus[name])} for name in timed]
    load = os.getloadavg()
    print(f"{args.rounds} rounds; load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print(f"{'command':<32} {'median s':>9} {'min s':>7} {'max s':>7} {'cpu s':>7}")
    for row in rows:
        flag = "" if row["command"].startswith("baseline") or row["median_s"] < TARGET_SECONDS else "  over 1 s"
        print(f"{row['command']:<32} {row['median_s']:>9.3f} {row['min_s']:>7.3f} {row['max_s']:>7.3f} "
              f"{row['cpu_median_s']:>7.3f}{flag}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": args.rounds, "load": load, "rows": rows}, indent=2))
    over = [r["command"] for r in rows if not r["command"].startswith("baseline") and r["median_s"] >= TARGET_SECONDS]
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
