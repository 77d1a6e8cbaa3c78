"""`ktc results`: what a search produced, read from its folder (no chief, no TensorFlow needed)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from kt_cluster.core import summary
from kt_cluster.core.summary import Trial

FORMATS = ("summary", "csv", "json", "keras-tuner")


def search_dir(results: Path, search_id: str | None = None) -> Path:
    """The folder of the search: `results/<search_id>`, the only search in `results`, or
    `results` itself when it is a search's folder."""
    if search_id:
        folder = results / search_id
        if not (folder / summary.STATE_FOLDER).is_dir():
            raise FileNotFoundError(f"--search-id: no search {search_id!r} in {results}")
        return folder
    if (results / summary.STATE_FOLDER).is_dir():
        return results
    found = sorted(p.parent for p in results.glob(f"*/{summary.STATE_FOLDER}"))
    if not found:
        raise FileNotFoundError(f"--results: no search found in {results}")
    if len(found) > 1:
        raise FileNotFoundError(f"--results: {results} holds several searches "
                                f"({', '.join(p.name for p in found)}); pick one with --search-id")
    return found[0]

def rows(trials: list[Trial]) -> list[dict[str, Any]]:
    return [{"trial_id": t["trial_id"], "status": t["status"], "score": t["score"],
             "stopped_early": t.get("stopped_early", False), "error": summary.error_line(t),
             "epochs": len(summary.epochs(t)), **t["hyperparameters"]["values"]} for t in trials]

def search_info(folder: Path) -> dict[str, Any]:
    """The chief's final status (objective, direction, search id and tuner, failure), if written."""
    try:
        return json.loads((folder / summary.STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}

def objective_of(folder: Path, trials: list[Trial]) -> tuple[str, str]:
    """The objective and its direction: from the chief's files, else guessed from the metrics."""
    for name in (summary.STATUS_FILE, summary.BEST_HYPERPARAMETERS_FILE):
        try:
            written = json.loads((folder / name).read_text())
            return written["objective"], written.get("direction", "max")
        except (OSError, ValueError, KeyError):
            continue
    names = [name for t in trials for name in t.get("metrics", {}).get("metrics", {})]
    name = "val_f1" if "val_f1" in names else next((n for n in names if n.startswith("val_")), names[0] if names else "score")
    direction = next((t["metrics"]["metrics"][name].get("direction") for t in trials
                      if name in t.get("metrics", {}).get("metrics", {})), None)
    return name, direction or "max"

def history(trial: Trial, metric: str) -> tuple[list[int], list[float]]:
    """Steps (epochs) and values of one metric of one trial, from trial.json."""
    observations = trial.get("metrics", {}).get("metrics", {}).get(metric, {}).get("observations", [])
    points = sorted((o["step"], o["value"][0]) for o in observations if o.get("value"))
    return [s for s, _ in points], [v for _, v in points]

def lineage_history(chain: list[Trial], metric: str) -> tuple[list[int], list[float]]:
    """One curve for a configuration trained in stages: each stage's epochs after the last one
    of the stage before (a continuation re-reports no epoch of its parent, but a resumed one might)."""
    steps: list[int] = []
    values: list[float] = []
    for trial in chain:
        for step, value in zip(*history(trial, metric)):
            if not steps or step > steps[-1]:
                steps.append(step)
                values.append(value)
    return steps, values

def plot(trials: list[Trial], objective: str, direction: str, out: Path) -> None:
    """Write `figure(...)` to `out` (a PNG)."""
    import matplotlib.pyplot as plt

    fig = figure(trials, objective, direction)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def figure(trials: list[Trial], objective: str, direction: str):
    """(a) the objective of every trial, failed trials marked; (b) its learning curve per
    configuration: a promoted trial's curve continues its parent's."""
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
    # Curves, one per configuration (the last trial of each lineage): the best in green, failed
    # ones red and dashed, others from a palette without either.
    palette = [c for c in map(matplotlib.colors.to_hex, plt.rcParams["axes.prop_cycle"].by_key()["color"])
               if c not in ("#2ca02c", "#d62728")]
    continued = {str(t["trial_id"]) for chain in summary.lineages(trials) for t in chain[:-1]}
    chains = summary.lineage_of(trials)
    for i, t in enumerate(t for t in trials if str(t["trial_id"]) not in continued):
        chain = chains[str(t["trial_id"])]
        steps, values = lineage_history(chain, objective)
        if not steps:
            continue
        state = "stopped early" if t.get("stopped_early") else t["status"].lower()
        colour = "tab:green" if t is best else "tab:red" if t in failed else palette[i % len(palette)]
        name = " > ".join(str(c["trial_id"]) for c in chain)
        curves.plot(steps, values, marker="x" if t in failed else "o", markersize=7 if t in failed else 3,
                    color=colour, zorder=3 if t in failed else 2,
                    linestyle="-" if state == "completed" else "--", linewidth=2.5 if t is best else 1.2,
                    label=f"trial{'s' if len(chain) > 1 else ''} {name} ({state}{', best' if t is best else ''})")
        for stage in chain[1:]:  # where a promoted stage starts
            stage_steps, stage_values = history(stage, objective)
            if stage_steps:
                curves.scatter(stage_steps[0], stage_values[0], marker="|", s=120, color=colour, zorder=4)
    curves.set(title=f"{objective} by epoch (promoted trials continue their parent's curve, | marks a promotion)",
               xlabel="epoch", ylabel=objective)
    curves.xaxis.get_major_locator().set_params(integer=True)
    if curves.lines and len(curves.lines) <= 20:
        curves.legend(fontsize=8)
    return fig

def show_results(results: Path, fmt: str = "summary", search_id: str | None = None,
                 plot_file: Path | None = None) -> int:
    try:
        folder = search_dir(results, search_id)
    except FileNotFoundError as exc:
        print(f"ktc results: {exc}", file=sys.stderr)
        return 1
    trials = summary.load_trials(folder)
    objective, direction = objective_of(folder, trials)
    if plot_file is not None:
        try:
            plot(trials, objective, direction, plot_file)
        except ImportError:
            print("ktc results: --plot needs matplotlib: pip install 'kt-cluster[plot]'", file=sys.stderr)
            return 1
        print(f"ktc results: wrote {plot_file}", file=sys.stderr)
    if fmt == "json":
        print(json.dumps(rows(trials), indent=2))
    elif fmt == "csv":
        table = rows(trials)
        fields = list(dict.fromkeys(k for row in table for k in row))
        writer = csv.DictWriter(sys.stdout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)
    elif fmt == "keras-tuner":
        text = folder / summary.KERAS_TUNER_SUMMARY_FILE
        if not text.exists():
            print(f"ktc results: no {text} yet: the chief writes it when the search ends", file=sys.stderr)
            return 1
        print(text.read_text(), end="")
    else:
        info = search_info(folder)
        print(summary.render(trials, objective, direction, folder, search=info.get("search"),
                             failure=info.get("failure")), end="")
        if not info.get("done"):
            print("(the search is not over: this is how it stands now)")
    return 0
