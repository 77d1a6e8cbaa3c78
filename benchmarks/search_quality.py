#!/usr/bin/env python3
"""Search quality on real pages: each tuner against a hand-picked U-Net, at equal CPU budget.

Not part of the test run. Needs the real-page set (benchmarks/real_pages.py; its Debian manuals
installed) and matplotlib. From the repository root, in the project's virtualenv:

    python benchmarks/real_pages.py --out /tmp/real-pages
    nice -n 5 python benchmarks/search_quality.py --data /tmp/real-pages --seeds 0,1,2 --json sq.json

Per seed, first the hand-picked configuration (start_neurons 16, net_depth 4, elu, batch norm
before the activation, no dropout, Adam at a constant 1e-3, the weighted BCE with the article's
inverse-frequency class weights, 25 epochs, 128 px) is trained once through the project: a
chief and one worker (`ktc chief`, `ktc worker`, as `ktc local` starts them). Its CPU seconds (user + system of the chief and the worker, from their rusage)
set the budget: every search then gets `--budget-factor` (3) times that, counted the same way
over its chief and `--workers` (2) workers. Each TensorFlow process gets one thread, so CPU
seconds measure work, not the spinning of threads that wait for a core. When a search has spent
its budget its workers get SIGTERM (they hand back) and the chief after them; trials that ended
before count, at the CPU seconds spent when their `trial.json` appeared.

Searches (`--tuners`):
- `default`: only what a user must set: `data.path`, `data.image_size` 128, `data.classes`, the
  budget (`max_trials` 13 and `max_epochs` 27: `--default-trials`, `--default-max-epochs`) and
  the seed; everything else is the config's default (tuner asha, space, score).
- `default-hours`: the same with a budget in worker time instead of trials: `max_worker_hours`
  `--worker-share` (0.9) of the CPU budget (the rest: the processes' start, the chief, a last
  trial running past it) and `max_epochs` (`--default-max-epochs`), `max_trials` left at its
  default;
- `asha-model`: `tuner: asha` set explicitly, with only the budget besides (`max_trials` 13,
  `max_epochs` 27: `--asha-trials`, `--asha-max-epochs`): the model-based, cost-aware sampler,
  first rung derived from the budget and final climb, which are asha's defaults (with the
  default tuner asha, the same search as `default` at the same budget);
- `random`, `bayesian`: the default space, every trial `--epochs` epochs, the median stopping
  rule (their default);
- `hyperband`: the default space, max_epochs `--epochs`;
- `asha`: random configurations, rungs of 1, 3, 9, 25 epochs (`min_epochs: 1`, `sampler: random`).
A trial's score follows the config's `score_window` for every search alike.

A search's result is the score of its best trial (the chief's: the best mean of `score_window`
consecutive epochs), and beside it the best single epoch of any of its trials; the hand-picked
training's are the same two. Margins are given rule for rule (window against window, epoch
against epoch) and across them: the search's window score against the hand-picked single best
epoch, the hardest bar. `--handpicked-momentum`, `--handpicked-power` and `--handpicked-schedule`
train the hand-picked configuration with another batch normalisation momentum than the article's
U-Net (Keras' 0.99), other class weights or the project's cosine schedule; `--handpicked-set
KEY=VALUE` sets any other field of its config (`--epochs 75`, `--handpicked-set batch_size=4`:
what one training could do with a search's whole budget), and `--search-set KEY=VALUE` the
same in the config of every search. Prints a table per seed and
a summary, writes the JSON and plots best score against CPU seconds per tuner and seed (the PNG
in the workdir, or where `--plot` says; `--replot` draws beside its JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TUNERS = ("default", "default-hours", "asha-model", "random", "hyperband", "bayesian", "asha")
COLOURS = {"default": "tab:red", "default-hours": "tab:brown", "asha-model": "tab:purple", "asha": "tab:orange", "hyperband": "tab:blue", "bayesian": "tab:green",
           "random": "tab:grey", "handpicked": "black"}
POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 60.0


def window_best(values: list[float], window: int) -> float:
    from kt_cluster.core.scoring import best_window

    found = best_window(values, window)
    return found[0] if found else float("nan")


def base_config(args, seed: int, results: Path) -> dict:
    return {"seed": seed, "results": str(results),
            "data": {"path": str(args.data), "image_size": args.image_size, "classes": args.classes}}


def handpicked_config(args, seed: int, results: Path) -> dict:
    return base_config(args, seed, results) | {
        "search_id": "handpicked", "tuner": "random", "max_trials": 1, "epochs": args.epochs,
        "early_stopping": False, "learning_rate": 1e-3, "lr_schedule": args.handpicked_schedule, "score_window": 1,
        "space": {"start_neurons": {"min": 16, "max": 16, "step": 16}, "net_depth": {"min": 4, "max": 4},
                  "dropout": False, "bn_after_act": False, "activation": ["elu"],
                  "bn_momentum": [args.handpicked_momentum],
                  "loss": ["weighted_bce"], "pos_weight_power": [args.handpicked_power]}}


def with_overrides(config: dict, overrides: list[str], option: str) -> dict:
    """`config` with each `dotted.key=YAML value` of `option` set (`batch_size=4`,
    `space.start_neurons.min=32`), checked as the chief would check it."""
    from kt_cluster.core.config import ConfigError, from_dict, set_dotted

    try:
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise SystemExit(f"search_quality: {option} {item!r}: expected KEY=VALUE")
            set_dotted(config, key, yaml.safe_load(text), source=f"{option} {item}")
        from_dict(config)
    except ConfigError as exc:
        raise SystemExit(f"search_quality: {option}: {exc}") from None
    return config


def search_config(tuner: str, args, seed: int, results: Path, budget: float) -> dict:
    config = base_config(args, seed, results) | {"search_id": f"quality-{tuner}"}
    if tuner == "default":
        return config | {"max_trials": args.default_trials, "max_epochs": args.default_max_epochs}
    if tuner == "default-hours":
        return config | {"max_worker_hours": args.worker_share * budget / 3600, "max_epochs": args.default_max_epochs}
    if tuner == "asha-model":
        return config | {"tuner": "asha", "max_trials": args.asha_trials, "max_epochs": args.asha_max_epochs}
    config |= {"tuner": tuner, "max_trials": 500}
    if tuner in ("random", "bayesian"):
        return config | {"epochs": args.epochs}
    if tuner == "hyperband":
        return config | {"max_epochs": args.epochs, "hyperband_iterations": 10}
    if tuner == "asha":
        return config | {"max_epochs": args.epochs, "min_epochs": 1, "sampler": "random"}
    raise ValueError(f"unknown tuner {tuner!r}")


class Cluster:
    """A chief and workers as `ktc local` starts them, with their CPU seconds counted."""

    def __init__(self, config: dict, workers: int, where: Path):
        where.mkdir(parents=True, exist_ok=True)
        self.where = where
        self.config_path = where / "search.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        token = where / "token"
        token.touch(mode=0o600)  # as `ktc local` writes it: the chief warns about a token others can read
        token.write_text(secrets.token_urlsafe(32))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port),
                   PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
        common = ["--config", str(self.config_path), "--auth-token-file", str(token)]
        self.procs: dict[str, subprocess.Popen] = {}
        self.cpu: dict[str, float] = {}
        self._spawn("chief", ["chief", *common, "--metrics-port", "0"], dict(env, KERASTUNER_TUNER_ID="chief"))
        for i in range(workers):
            self._spawn(f"worker-{i}", ["worker", *common, "--metrics-port", "0", "--threads", "1"],
                        dict(env, KERASTUNER_TUNER_ID=f"worker-{i}"))

    def _spawn(self, name: str, args: list[str], env: dict) -> None:
        with open(self.where / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "kt_cluster", *args], env=env, cwd=REPO,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.cpu[name] = 0.0

    def cpu_seconds(self) -> float:
        """User + system seconds of every process: live ones from /proc, ended ones from rusage."""
        import psutil

        for name, proc in self.procs.items():
            if proc.returncode is not None:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                self.cpu[name] = usage.ru_utime + usage.ru_stime
                continue
            try:
                times = psutil.Process(proc.pid).cpu_times()
                self.cpu[name] = times.user + times.system + times.children_user + times.children_system
            except psutil.Error:
                pass
        return sum(self.cpu.values())

    def chief_done(self) -> bool:
        self.cpu_seconds()
        return self.procs["chief"].returncode is not None

    def stop(self) -> None:
        """As `ktc local` on Ctrl-C: workers first (they hand back), then the chief."""
        groups = [[p for n, p in self.procs.items() if n != "chief"], [self.procs["chief"]]]
        for group in groups:
            for proc in group:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while any(p.returncode is None for p in group) and time.monotonic() < deadline:
                self.cpu_seconds()
                time.sleep(0.2)
        for proc in self.procs.values():
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
        while any(p.returncode is None for p in self.procs.values()):
            self.cpu_seconds()
            time.sleep(0.1)


def run(config: dict, workers: int, where: Path, budget: float | None) -> dict:
    """Run one search to its end or its CPU budget; its trials with the CPU seconds at their end."""
    cluster = Cluster(config, workers, where)
    trial_dir = Path(config["results"]) / config["search_id"]
    seen: dict[str, dict] = {}
    over_budget = False
    try:
        while True:
            done = cluster.chief_done()
            spent = cluster.cpu_seconds()
            for path in sorted(trial_dir.glob("trial_*/trial.json")):
                if path.parent.name not in seen:
                    seen[path.parent.name] = {"cpu": spent, **_trial(path)}
            if done:
                break
            if budget is not None and spent >= budget:
                over_budget = True
                break
            time.sleep(POLL_SECONDS)
    finally:
        cluster.stop()
    trials = sorted((t for t in seen.values() if t["status"] == "COMPLETED" and t["score"] is not None),
                    key=lambda t: t["cpu"])
    return {"cpu": cluster.cpu_seconds(), "over_budget": over_budget, "exit": cluster.procs["chief"].returncode,
            "trials": trials}


def _trial(path: Path) -> dict:
    state = json.loads(path.read_text())
    history = [o["value"][0] for o in state["metrics"]["metrics"].get("val_f1", {}).get("observations", [])]
    values = state["hyperparameters"]["values"]
    return {"trial_id": state["trial_id"], "status": state["status"], "score": state["score"], "val_f1": history,
            "hps": {k: v for k, v in values.items() if not k.startswith("tuner/")},
            "epochs": values.get("tuner/epochs", len(history)), "promoted": "tuner/trial_id" in values}


def curve(trials: list[dict]) -> list[tuple[float, float]]:
    best, points = float("-inf"), []
    for t in trials:
        if t["score"] > best:
            best = t["score"]
            points.append((t["cpu"], best))
    return points


def run_seed(args, seed: int, workdir: Path) -> dict:
    where = workdir / f"seed{seed}"
    reused = args.reuse_handpicked / f"seed{seed}" / "handpicked" / "result.json" if args.reuse_handpicked else None
    if reused is not None and reused.exists():
        hand = json.loads(reused.read_text())
        print(f"seed {seed}: hand-picked result of an earlier run on this machine: {reused}", flush=True)
    else:
        config = with_overrides(handpicked_config(args, seed, where / "handpicked" / "results"), args.handpicked_set,
                                "--handpicked-set")
        hand = run(config, 1, where / "handpicked", None)
        (where / "handpicked" / "result.json").write_text(json.dumps(hand))
    if not hand["trials"]:
        raise SystemExit(f"seed {seed}: the hand-picked training did not complete; see {where / 'handpicked'}")
    history = hand["trials"][0]["val_f1"]
    result = {"seed": seed, "handpicked": {"cpu": hand["cpu"], "best_epoch": max(history),
                                           "window": window_best(history, args.score_window), "val_f1": history},
              "budget": args.budget_factor * hand["cpu"], "searches": {}}
    print(f"seed {seed}: hand-picked {hand['cpu']:.0f} CPU s, val_f1 best epoch {max(history):.3f}, "
          f"best {args.score_window}-epoch mean {result['handpicked']['window']:.3f}; budget "
          f"{result['budget']:.0f} CPU s", flush=True)
    for tuner in args.tuners:
        config = with_overrides(search_config(tuner, args, seed, where / tuner / "results", result["budget"]),
                                args.search_set,
                                "--search-set")
        r = run(config, args.workers, where / tuner, result["budget"])
        best = max(r["trials"], key=lambda t: t["score"]) if r["trials"] else None
        result["searches"][tuner] = {"cpu": r["cpu"], "over_budget": r["over_budget"], "exit": r["exit"],
                                     "trials": len(r["trials"]), "best": best["score"] if best else None,
                                     "best_trial": best, "curve": curve(r["trials"]),
                                     "best_epoch": max((max(t["val_f1"], default=0.0) for t in r["trials"]),
                                                       default=None),
                                     "epochs": sum(len(t["val_f1"]) for t in r["trials"])}
        s = result["searches"][tuner]
        print(f"seed {seed}: {tuner:<10} {s['trials']:3d} trials, {s['epochs']:4d} epochs, {r['cpu']:6.0f} CPU s, "
              f"best {s['best'] if s['best'] is not None else float('nan'):.3f}"
              + (f"  ({best['hps']}, {len(best['val_f1'])} epochs)" if best else ""), flush=True)
    return result


def report(results: list[dict], args) -> str:
    lines = [f"| seed | hand-picked CPU s | hand-picked val_f1 (best epoch / best {args.score_window}-epoch mean) | "
             "budget CPU s | "
             + " | ".join(args.tuners) + " |", "|---" * (4 + len(args.tuners)) + "|"]
    for r in results:
        h = r["handpicked"]
        cells = []
        for tuner in args.tuners:
            s = r["searches"][tuner]
            best = f"{s['best']:.3f}" if s["best"] is not None else "-"
            cells.append(f"{best} ({s['trials']} trials, {s['cpu']:.0f} s)")
        lines.append(f"| {r['seed']} | {h['cpu']:.0f} | {h['best_epoch']:.3f} / {h['window']:.3f} | "
                     f"{r['budget']:.0f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"| tuner | margins: {args.score_window}-epoch mean over {args.score_window}-epoch mean "
                 "| best epoch over best epoch | search's mean over the hand-picked best epoch |")
    lines.append("|---|---|---|---|")
    for tuner in args.tuners:
        lines.append(f"| {tuner} | " + " | ".join(_margins(results, tuner, ours, theirs) for ours, theirs in
                                                  (("best", "window"), ("best_epoch", "best_epoch"),
                                                   ("best", "best_epoch"))) + " |")
    return "\n".join(lines)


def _margins(results: list[dict], tuner: str, ours: str, theirs: str) -> str:
    """Per-seed margins of a search's `ours` over the hand-picked `theirs`, their median, seeds won."""
    if any(r["searches"][tuner].get(ours) is None for r in results):
        return "-"  # a search without results, or a JSON from before the value was kept
    margins = [r["searches"][tuner][ours] - r["handpicked"][theirs] for r in results]
    return (" ".join(f"{m:+.3f}" for m in margins)
            + f"; median {statistics.median(margins):+.3f}, {sum(m > 0 for m in margins)} of {len(margins)} won")


def plot(results: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.2), dpi=110, squeeze=False, sharey=True)
    for ax, r in zip(axes[0], results):
        for tuner in args.tuners:
            points = r["searches"][tuner]["curve"]
            if points:
                xs = [0.0] + [x for x, _ in points] + [r["budget"]]
                ys = [0.0] + [y for _, y in points] + [points[-1][1]]
                ax.step(xs, ys, where="post", color=COLOURS.get(tuner), linewidth=2, label=tuner)
        h = r["handpicked"]
        ax.axhline(h["best_epoch"], color="black", linestyle="--", linewidth=1, label="hand-picked (best epoch)")
        ax.axhline(h["best_epoch"] + 0.10, color="black", linestyle=":", linewidth=1, label="hand-picked + 0.10")
        ax.axhline(h["window"], color="grey", linestyle="-.", linewidth=1,
                   label=f"hand-picked (best {args.score_window}-epoch mean)")
        ax.axvline(h["cpu"], color="grey", linewidth=0.8)
        ax.set_xlim(0, r["budget"])
        ax.set_title(f"seed {r['seed']}: budget {r['budget']:.0f} CPU s")
        ax.set_xlabel("CPU seconds of the search (chief + workers)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best val_f1 so far")
    axes[0][-1].legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=False, help="the real-page set (benchmarks/real_pages.py --out)")
    p.add_argument("--classes", default="heading,code,furniture")
    p.add_argument("--tuners", default=",".join(TUNERS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=25, help="of the hand-picked training (and the others' longest)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--budget-factor", type=float, default=3.0)
    p.add_argument("--default-trials", type=int, default=13, help="max_trials of the default search")
    p.add_argument("--default-max-epochs", type=int, default=27, help="max_epochs of the default search")
    p.add_argument("--worker-share", type=float, default=0.9,
                   help="max_worker_hours of the default-hours search: this share of its CPU budget")
    p.add_argument("--asha-trials", type=int, default=13, help="max_trials of the asha-model search")
    p.add_argument("--asha-max-epochs", type=int, default=27,
                   help="max_epochs of the asha-model search: with max_trials, its rungs")
    p.add_argument("--reuse-handpicked", type=Path, metavar="WORKDIR",
                   help="take each seed's hand-picked result from an earlier --workdir (its result.json)")
    p.add_argument("--score-window", type=int, default=3, help="as the config's default score_window")
    p.add_argument("--handpicked-momentum", type=float, default=0.99,
                   help="batch normalisation momentum of the hand-picked training (0.99: the article's U-Net)")
    p.add_argument("--handpicked-power", type=float, default=1.0,
                   help="the power of its class weights (1: the article's inverse-frequency weights)")
    p.add_argument("--handpicked-schedule", choices=("constant", "cosine"), default="constant",
                   help="its learning-rate schedule (constant: the article's Adam at 1e-3)")
    p.add_argument("--handpicked-set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field of the hand-picked training, dotted, the value in YAML "
                        "(batch_size=4, space.start_neurons.min=32); repeatable")
    p.add_argument("--search-set", action="append", default=[], metavar="KEY=VALUE",
                   help="the same for the config of every search (data.augment.shift=0.06); repeatable")
    p.add_argument("--workdir", type=Path, default=None, help="default: a fresh directory under /tmp")
    p.add_argument("--plot", type=Path, default=None,
                   help="the PNG (default: search-quality.png in the workdir, or beside the --replot JSON)")
    p.add_argument("--json", type=Path, help="also write every result here")
    p.add_argument("--replot", type=Path, metavar="JSON", help="only redraw the plot and table from a --json")
    args = p.parse_args()
    args.tuners = [t for t in args.tuners.split(",") if t]
    args.classes = args.classes.split(",")
    if args.replot:
        results = json.loads(args.replot.read_text())
        args.tuners = list(results[0]["searches"])
        print(report(results, args))
        plot(results, args, args.plot or args.replot.with_suffix(".png"))
        return 0
    if args.data is None or not (args.data / "classes.txt").exists():
        print("search_quality: --data must be a real-page set (python benchmarks/real_pages.py --out DIR)",
              file=sys.stderr)
        return 2
    args.data = args.data.resolve()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="ktc-quality-"))).resolve()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; data {args.data}; work in {workdir}",
          flush=True)
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        results.append(run_seed(args, seed, workdir))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    print(report(results, args))
    args.plot = args.plot or workdir / "search-quality.png"
    plot(results, args, args.plot)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
