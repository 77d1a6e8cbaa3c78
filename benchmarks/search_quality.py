#!/usr/bin/env python3
"""Search quality: best val_f1 against wall time for hyperband, asha, bayesian and random.

Not part of the test run. From the repository root, in the project's virtualenv (needs matplotlib):

    python benchmarks/search_quality.py                          # 4 tuners x 210 s (~15 min on 2 cores)
    python benchmarks/search_quality.py --seconds 60 --tuners asha,random --plot /tmp/sq.png

Every tuner gets the same budget: `--seconds` of wall time of `ktc local --workers 2` (the
production chief and worker processes; each worker gets one TensorFlow thread of this machine's
two cores), on the same fixed synthetic dataset (`ktc data synth`, seed 0) and the same small
search space, with the same seed. When the time is up the launcher gets SIGINT (as Ctrl-C): its
workers hand back their running trials, which do not count. A trial counts when the chief wrote
its `trial.json` (at EndTrial), at that file's modification time, measured from the launch (so
process start-up, the same for every tuner, is inside the budget).

Tuner settings: every configuration may be trained up to `--max-epochs` (R = 9) epochs.
hyperband: factor 3, iterations as many as fit; asha: rungs 1, 3, 9 epochs (r = 1, eta 3);
random and bayesian: every trial trains R epochs, with kt-cluster's default median stopping rule
(on for them). Trial budgets are set high enough that the wall time is the only limit.

Prints, per tuner, trials ended, epochs trained, best val_f1 at 25/50/75/100% of the budget, and
plots the best-so-far curves to `--plot` (default docs/search_quality.png). One run per tuner, one
seed: differences of a few hundredths are within run-to-run noise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TUNERS = ("hyperband", "asha", "bayesian", "random")
CLASSES = ["table_number", "stamp", "signature"]
COLOURS = {"hyperband": "tab:blue", "asha": "tab:red", "bayesian": "tab:green", "random": "tab:grey"}


def config_for(tuner: str, args, data: Path, results: Path) -> dict:
    return {
        "search_id": f"quality-{tuner}", "tuner": tuner, "seed": args.seed,
        "max_trials": 500, "max_epochs": args.max_epochs, "min_epochs": 1, "epochs": args.max_epochs,
        "hyperband_factor": 3, "hyperband_iterations": 20, "batch_size": 8,
        "data": {"path": str(data), "image_size": args.image_size, "classes": CLASSES},
        "results": str(results),
        "space": {"start_neurons": {"min": 8, "max": 32, "step": 8}, "net_depth": {"min": 2, "max": 4},
                  "activation": ["relu", "elu", "mish"], "dropout": True, "bn_after_act": True},
    }


def run_tuner(tuner: str, args, data: Path, workdir: Path) -> dict:
    where = workdir / tuner
    where.mkdir(parents=True)
    results = where / "results"
    config = config_for(tuner, args, data, results)
    (where / "search.yaml").write_text(yaml.safe_dump(config))
    log = open(where / "ktc-local.log", "wb")
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "kt_cluster", "local", "--workers", str(args.workers), "--quiet",
                             "--config", str(where / "search.yaml")], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), start_new_session=True)
    try:
        proc.wait(timeout=args.seconds)
        finished = True  # the search ended by itself within the budget
    except subprocess.TimeoutExpired:
        finished = False
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: workers hand back, everything stops
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.close()
    if finished and proc.returncode != 0:
        chief_log = results / config["search_id"] / "local" / "chief.log"
        tail = chief_log.read_text(errors="replace").splitlines()[-5:] if chief_log.exists() else []
        print(f"{tuner}: the search FAILED (ktc local exit {proc.returncode}); chief log ends:\n  "
              + "\n  ".join(tail), flush=True)
    trials = []
    for path in (results / config["search_id"]).glob("trial_*/trial.json"):
        state = json.loads(path.read_text())
        when = path.stat().st_mtime - started
        if state.get("status") != "COMPLETED" or state.get("score") is None or when > args.seconds:
            continue
        observations = state["metrics"]["metrics"].get("val_f1", {}).get("observations", [])
        trials.append({"trial_id": state["trial_id"], "t": when, "score": state["score"], "epochs": len(observations),
                       "hps": {k: v for k, v in state["hyperparameters"]["values"].items()}})
    trials.sort(key=lambda t: t["t"])
    best, curve = float("-inf"), []
    for t in trials:
        if t["score"] > best:
            best = t["score"]
        curve.append((t["t"], best))
    marks = {}
    for frac in (0.25, 0.5, 0.75, 1.0):
        marks[int(frac * 100)] = max((b for w, b in curve if w <= frac * args.seconds), default=None)
    first = trials[0]["t"] if trials else None
    return {"tuner": tuner, "trials": len(trials), "epochs": sum(t["epochs"] for t in trials),
            "promoted": sum(1 for t in trials if "tuner/trial_id" in t["hps"]),
            "best": best if trials else None, "marks": marks, "curve": curve, "first_result_s": first,
            "finished_early": finished, "exit_code": proc.returncode, "best_trial": max(trials, key=lambda t: t["score"]) if trials else None}


def plot(results: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5), dpi=120)
    for r in results:
        if not r["curve"]:
            continue
        xs = [0.0] + [w for w, _ in r["curve"]] + [args.seconds]
        ys = [None] + [b for _, b in r["curve"]] + [r["curve"][-1][1]]
        xs, ys = zip(*[(x, y) for x, y in zip(xs, ys) if y is not None])
        ax.step(xs, ys, where="post", label=f"{r['tuner']} ({r['trials']} trials, {r['epochs']} epochs)",
                color=COLOURS.get(r["tuner"]), linewidth=2)
    ax.set_xlim(0, args.seconds)
    ax.set_xlabel(f"wall time since launch (s), ktc local --workers {args.workers} on {os.cpu_count()} CPU cores")
    ax.set_ylabel("best val_f1 so far")
    ax.set_title(f"Search quality: same {args.seconds:.0f} s budget, same space, seed {args.seed}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tuners", default=",".join(TUNERS))
    p.add_argument("--seconds", type=float, default=210.0, help="wall-time budget per tuner")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-epochs", type=int, default=9)
    p.add_argument("--count", type=int, default=128, help="synthetic scans (75%% train)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="default: a fresh directory under /tmp")
    p.add_argument("--plot", default=str(REPO / "docs" / "search_quality.png"))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--replot", metavar="JSON", help="only redraw the plot from a previous run's --json")
    args = p.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), args, Path(args.plot))
        print(f"plot: {args.plot}")
        return 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("search_quality: needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 2
    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ktc-quality-"))
    data = workdir / "data"
    if not (data / "classes.txt").exists():
        subprocess.run([sys.executable, "-m", "kt_cluster", "data", "synth", "--out", str(data), "--count", str(args.count),
                        "--size", str(args.image_size), "--classes", ",".join(CLASSES), "--seed", "0"],
                       cwd=REPO, check=True, capture_output=True)
    load = os.getloadavg()
    print(f"{os.cpu_count()} cores, load average {load[0]:.2f}; {args.count} scans of {args.image_size} px; "
          f"budget {args.seconds:.0f} s per tuner; work in {workdir}", flush=True)
    results = []
    for tuner in args.tuners.split(","):
        r = run_tuner(tuner, args, data, workdir)
        results.append(r)
        marks = "  ".join(f"{k}%: {v:.4f}" if v is not None else f"{k}%: -" for k, v in r["marks"].items())
        print(f"{tuner:<10} {r['trials']:3d} trials ({r['promoted']} promoted), {r['epochs']:4d} epochs, "
              f"first result at {r['first_result_s'] or float('nan'):.0f} s; best val_f1 {marks}", flush=True)
    print("\n| tuner | trials ended | epochs trained | best val_f1 at 25% | 50% | 75% | 100% of the budget |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        cells = " | ".join(f"{v:.3f}" if v is not None else "-" for v in r["marks"].values())
        print(f"| {r['tuner']} | {r['trials']} | {r['epochs']} | {cells} |")
    for r in results:
        if r["best_trial"]:
            hps = {k: v for k, v in r["best_trial"]["hps"].items() if not k.startswith("tuner/")}
            print(f"best {r['tuner']}: trial {r['best_trial']['trial_id']} ({r['best_trial']['epochs']} epochs) {hps}")
    plot(results, args, Path(args.plot))
    print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
