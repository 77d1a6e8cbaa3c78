"""What a search produced, for people: the end-of-search summary and the files it lives in.

Read from the search's folder, `<results>/<search_id>/`, where the chief keeps one
`trial_<id>/trial.json` per trial (keras-tuner's trial state plus `stopped_early`) and, once
the search is over, the files named below. The chief renders the summary into `summary.txt`
when the search ends; `ktc results` renders the same from the trial files at any time. Plain
JSON and text: no TensorFlow, no keras-tuner.

Promoted trials (Hyperband's and ASHA's continuations) name the trial whose weights they
continue in the hyperparameter `tuner/trial_id`; a chain of them is one configuration trained
in stages, its lineage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

SUMMARY_FILE = "summary.txt"
KERAS_TUNER_SUMMARY_FILE = "summary-keras-tuner.txt"  # keras-tuner's own results_summary text
STATUS_FILE = "status.json"  # the chief's final status, as `ktc status` shows it
BEST_HYPERPARAMETERS_FILE = "best_hyperparameters.json"
BEST_MODEL_FILE = "best_model.keras"
STATE_FOLDER = "ktc-state"
PARENT = "tuner/trial_id"
TABLE_ROWS = 20  # ranked trials shown; `ktc results --format csv` has them all
LINEAGES = 10
ERROR_CHARS = 160

Trial = dict[str, Any]


def load_trials(search_dir: Path) -> list[Trial]:
    """Every `trial_*/trial.json` of a search, in trial id order."""
    trials = [json.loads(p.read_text()) for p in Path(search_dir).glob("trial_*/trial.json")]
    return sorted(trials, key=lambda t: trial_order(t["trial_id"]))


def trial_order(trial_id: str) -> tuple:
    return (0, int(trial_id), "") if str(trial_id).isdigit() else (1, 0, str(trial_id))


def searched(trial: Trial) -> dict[str, Any]:
    """The hyperparameters the user searched: keras-tuner's `tuner/*` bookkeeping left out."""
    return {k: v for k, v in trial["hyperparameters"]["values"].items() if not k.startswith("tuner/")}


def epochs(trial: Trial) -> list[int]:
    """The epochs (0-based steps) this trial trained and reported, in order."""
    steps = {o["step"] for m in trial.get("metrics", {}).get("metrics", {}).values()
             for o in m.get("observations", []) if o.get("value")}
    return sorted(steps)


def outcome(trial: Trial) -> str:
    if trial["status"] == "COMPLETED":
        return "stopped early" if trial.get("stopped_early") else "completed"
    return trial["status"].lower()


def error_line(trial: Trial) -> str:
    """The first line of a failed trial's message (an exception: its type and text)."""
    lines = [line for line in (trial.get("message") or "").strip().splitlines() if line.strip()]
    text = lines[0].strip() if lines else ""
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS - 3] + "..."


def ranked(trials: Iterable[Trial], direction: str) -> list[Trial]:
    """Completed trials with a score, best first (ties: the earlier trial)."""
    scored = [t for t in trials if t["status"] == "COMPLETED" and t.get("score") is not None]
    sign = -1 if direction == "max" else 1
    return sorted(scored, key=lambda t: (sign * t["score"], trial_order(t["trial_id"])))


def lineages(trials: Iterable[Trial]) -> list[list[Trial]]:
    """Chains of promoted trials, each from the first stage to the last (only chains of two or
    more); a trial promoted twice (two children) starts two chains that share their first part."""
    by_id = {str(t["trial_id"]): t for t in trials}
    parents = {tid: str(t["hyperparameters"]["values"][PARENT]) for tid, t in by_id.items()
               if t["hyperparameters"]["values"].get(PARENT) is not None}
    has_child = set(parents.values())
    chains = []
    for leaf in (tid for tid in by_id if tid in parents and tid not in has_child):
        chain, seen = [leaf], {leaf}
        while chain[-1] in parents and parents[chain[-1]] in by_id and parents[chain[-1]] not in seen:
            chain.append(parents[chain[-1]])
            seen.add(chain[-1])
        chains.append([by_id[tid] for tid in reversed(chain)])
    return chains


def lineage_of(trials: Iterable[Trial]) -> dict[str, list[Trial]]:
    """Trial id -> the chain of trials that ends with it (the trial alone when not promoted)."""
    trials = list(trials)
    chains = {str(c[-1]["trial_id"]): c for c in lineages(trials)}
    return {str(t["trial_id"]): chains.get(str(t["trial_id"]), [t]) for t in trials}


def render(trials: list[Trial], objective: str, direction: str, search_dir: Path,
           search: dict[str, Any] | None = None, failure: str | None = None, top: int = TABLE_ROWS,
           writing: Iterable[str] = ()) -> str:
    """The summary: a headline, a ranked table of trials, the lineage of promoted trials, the
    trials that did not complete and where each results file is (those that exist, and the
    `writing` ones that the caller is about to write)."""
    search = search or {}
    best = ranked(trials, direction)
    counts: dict[str, int] = {}
    for t in trials:
        counts[outcome(t)] = counts.get(outcome(t), 0) + 1
    name = search.get("search_id") or Path(search_dir).name
    tuner = f" ({search['tuner']})" if search.get("tuner") else ""
    lines = [f"Search {name}{tuner}: {len(trials)} trials, "
             + ", ".join(f"{n} {what}" for what, n in sorted(counts.items(), key=lambda kv: -kv[1]))
             + (f"; best {objective} {best[0]['score']:.4f} (trial {best[0]['trial_id']})" if best
                else f"; no trial has a {objective} score")]
    if failure:
        lines.append(f"The search failed: {failure}")
    lines += ["", *_table(trials, best, objective, direction, top)]
    chains = sorted(lineages(trials), key=lambda c: _rank_key(c[-1], best))
    if chains:
        lines += ["", "Promoted configurations (a trial continues the training of the one before it; "
                      "epochs counted from 1):"]
        for chain in chains[:LINEAGES]:
            lines.append("  " + " -> ".join(f"{t['trial_id']} ({_epochs_text(t)}, {_score(t)})" for t in chain))
        if len(chains) > LINEAGES:
            lines.append(f"  ... and {len(chains) - LINEAGES} more")
    setbacks = [t for t in trials if outcome(t) not in ("completed", "stopped early", "running", "idle")]
    if setbacks:
        lines += ["", "Trials that did not complete:"]
        lines += [f"  {t['trial_id']} {t['status']}: {error_line(t) or 'no message'}" for t in setbacks]
    lines += ["", *_files(Path(search_dir), set(writing))]
    return "\n".join(lines) + "\n"


def _rank_key(trial: Trial, best: list[Trial]) -> tuple:
    position = next((i for i, t in enumerate(best) if t is trial), len(best))  # unranked last
    return position, trial_order(trial["trial_id"])


def _score(trial: Trial) -> str:
    return "-" if trial.get("score") is None else f"{trial['score']:.4f}"


def _epoch_span(trial: Trial) -> str:
    """The epochs a trial trained, counted from 1: `3-4` for a trial that continued another."""
    done = epochs(trial)
    if not done:
        return "-"
    return str(done[0] + 1) if len(done) == 1 else f"{done[0] + 1}-{done[-1] + 1}"


def _epochs_text(trial: Trial) -> str:
    span = _epoch_span(trial)
    if span == "-":
        return "no epoch"
    return f"epochs {span}" if "-" in span else f"epoch {span}"


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(trials: list[Trial], best: list[Trial], objective: str, direction: str, top: int) -> list[str]:
    names = list(dict.fromkeys(name for t in trials for name in searched(t)))
    rank = {id(t): i + 1 for i, t in enumerate(best)}
    shown = best[:top] + [t for t in trials if id(t) not in rank]  # unranked: failed, running, unscored
    header = ["rank", "trial", f"{objective} ({direction})", *names, "epochs", "status"]
    rows = []
    for t in shown:
        values = searched(t)
        rows.append([str(rank.get(id(t), "-")), str(t["trial_id"]), _score(t),
                     *(_value(values.get(n)) for n in names), _epoch_span(t), outcome(t)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {0, 2, len(header) - 2}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), *map(line, rows)]
    if len(best) > top:
        out.append(f"... and {len(best) - top} more completed trials (ktc results --format csv lists them all)")
    return out


def _files(search_dir: Path, writing: set[str]) -> list[str]:
    named = [("best model", BEST_MODEL_FILE), ("best hyperparameters", BEST_HYPERPARAMETERS_FILE),
             ("this summary", SUMMARY_FILE), ("keras-tuner's summary", KERAS_TUNER_SUMMARY_FILE),
             ("final status", STATUS_FILE)]
    files = [(what, search_dir / name) for what, name in named if name in writing or (search_dir / name).exists()]
    files += [("trials", search_dir / "trial_<id>" / "trial.json"), ("chief state", search_dir / STATE_FOLDER)]
    width = max(len(what) for what, _ in files)
    return ["Files:", *(f"  {what.ljust(width)}  {path}" for what, path in files),
            f"  (ktc results --results {search_dir.parent} --format csv|json|keras-tuner, --plot FILE.png)"]
