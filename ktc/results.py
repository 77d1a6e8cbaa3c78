"""`ktc results`: what a search produced, read from its results directory (no chief needed)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any


def load_trials(results: Path, search_id: str | None = None) -> list[dict[str, Any]]:
    projects = [results / search_id] if search_id else [p.parent for p in results.glob("*/ktc-state")]
    if not projects or not projects[0].is_dir():
        raise FileNotFoundError(f"--results: no search found in {results}")
    trials = [json.loads(p.read_text()) for p in projects[0].glob("trial_*/trial.json")]
    return sorted(trials, key=lambda t: _trial_order(t["trial_id"]))


def _trial_order(trial_id: str) -> tuple:
    return (0, int(trial_id), "") if str(trial_id).isdigit() else (1, 0, str(trial_id))


def rows(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in trials:
        message = (t.get("message") or "").strip().splitlines()
        out.append({"trial_id": t["trial_id"], "status": t["status"], "score": t["score"],
                    "stopped_early": t.get("stopped_early", False), "error": message[0] if message else "",
                    **t["hyperparameters"]["values"]})
    return out


def objective_of(results: Path, trials: list[dict[str, Any]]) -> tuple[str, str]:
    """The objective and its direction: from best_hyperparameters.json, else guessed from the metrics."""
    best = results / "best_hyperparameters.json"
    if best.exists():
        written = json.loads(best.read_text())
        return written["objective"], written.get("direction", "max")
    names = [name for t in trials for name in t.get("metrics", {}).get("metrics", {})]
    name = "val_f1" if "val_f1" in names else next((n for n in names if n.startswith("val_")), names[0] if names else "score")
    direction = next((t["metrics"]["metrics"][name].get("direction") for t in trials
                      if name in t.get("metrics", {}).get("metrics", {})), None)
    return name, direction or "max"


def history(trial: dict[str, Any], metric: str) -> tuple[list[int], list[float]]:
    """Steps (epochs) and values of one metric of one trial, from trial.json."""
    observations = trial.get("metrics", {}).get("metrics", {}).get(metric, {}).get("observations", [])
    points = sorted((o["step"], o["value"][0]) for o in observations if o.get("value"))
    return [s for s, _ in points], [v for _, v in points]


def plot(trials: list[dict[str, Any]], objective: str, direction: str, out: Path) -> None:
    """(a) the objective of every trial, failed trials marked; (b) its learning curve per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (per_trial, curves) = plt.subplots(1, 2, figsize=(14, 5.5), constrained_layout=True)
    ids = [str(t["trial_id"]) for t in trials]
    at = {trial_id: i for i, trial_id in enumerate(ids)}  # numeric x: trials stay in id order
    scored = [t for t in trials if t["score"] is not None]
    best = (max if direction == "max" else min)(scored, key=lambda t: t["score"]) if scored else None
    colours = {"COMPLETED": "tab:blue", "stopped_early": "tab:orange", "best": "tab:green"}
    for t in scored:
        kind = "best" if t is best else "stopped_early" if t.get("stopped_early") else "COMPLETED"
        per_trial.bar(at[str(t["trial_id"])], t["score"], color=colours[kind])
    failed = [t for t in trials if t["status"] in ("FAILED", "INVALID") or t["score"] is None]
    for t in failed:
        per_trial.scatter(at[str(t["trial_id"])], 0, marker="x", s=90, color="tab:red", zorder=3, clip_on=False)
        per_trial.annotate(t["status"], (at[str(t["trial_id"])], 0), xytext=(0, 8), textcoords="offset points",
                           rotation=90, ha="center", va="bottom", color="tab:red", fontsize=8)
    per_trial.set_xticks(range(len(ids)), ids, rotation=90 if len(ids) > 20 else 0,
                         fontsize=8 if len(ids) > 20 else 10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in ("COMPLETED", "stopped_early", "best")]
    handles.append(plt.Line2D([], [], marker="x", color="tab:red", linestyle=""))
    per_trial.legend(handles, ["completed", "stopped early", "best", "failed / invalid"], fontsize=8)
    per_trial.set(title=f"{objective} per trial ({direction}){' - best: trial ' + str(best['trial_id']) if best else ''}",
                  xlabel="trial", ylabel=objective)
    # Curves: the best in green, failed ones red and dashed, others from a palette without either.
    palette = [c for c in map(matplotlib.colors.to_hex, plt.rcParams["axes.prop_cycle"].by_key()["color"])
               if c not in ("#2ca02c", "#d62728")]
    for i, t in enumerate(trials):
        steps, values = history(t, objective)
        if not steps:
            continue
        state = "stopped early" if t.get("stopped_early") else t["status"].lower()
        colour = "tab:green" if t is best else "tab:red" if t in failed else palette[i % len(palette)]
        curves.plot(steps, values, marker="x" if t in failed else "o", markersize=7 if t in failed else 3,
                    color=colour, zorder=3 if t in failed else 2,
                    linestyle="-" if state == "completed" else "--", linewidth=2.5 if t is best else 1.2,
                    label=f"trial {t['trial_id']} ({state}{', best' if t is best else ''})")
    curves.set(title=f"{objective} by epoch", xlabel="epoch", ylabel=objective)
    curves.xaxis.get_major_locator().set_params(integer=True)
    if curves.lines and len(curves.lines) <= 20:
        curves.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def show_results(results: Path, fmt: str = "summary", search_id: str | None = None,
                 plot_file: Path | None = None) -> int:
    try:
        trials = load_trials(results, search_id)
    except FileNotFoundError as exc:
        print(f"ktc results: {exc}", file=sys.stderr)
        return 1
    table = rows(trials)
    if plot_file is not None:
        try:
            plot(trials, *objective_of(results, trials), plot_file)
        except ImportError:
            print("ktc results: --plot needs matplotlib: pip install 'kt-cluster[plot]'", file=sys.stderr)
            return 1
        print(f"ktc results: wrote {plot_file}", file=sys.stderr)
    if fmt == "json":
        print(json.dumps(table, indent=2))
    elif fmt == "csv":
        fields = list(dict.fromkeys(k for row in table for k in row))
        writer = csv.DictWriter(sys.stdout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)
    else:
        summary = results / "summary.txt"
        print(summary.read_text() if summary.exists() else "(search not finished: no summary.txt yet)")
        for row in table:
            if row["status"] != "COMPLETED" or row["stopped_early"]:
                reason = "stopped early" if row["stopped_early"] else row["error"]
                print(f"trial {row['trial_id']}: {row['status']} {reason}")
    return 0
