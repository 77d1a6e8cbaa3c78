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
    return [json.loads(p.read_text()) for p in sorted(projects[0].glob("trial_*/trial.json"))]


def rows(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in trials:
        message = (t.get("message") or "").strip().splitlines()
        out.append({"trial_id": t["trial_id"], "status": t["status"], "score": t["score"],
                    "stopped_early": t.get("stopped_early", False), "error": message[0] if message else "",
                    **t["hyperparameters"]["values"]})
    return out


def show_results(results: Path, fmt: str = "summary", search_id: str | None = None) -> int:
    try:
        table = rows(load_trials(results, search_id))
    except FileNotFoundError as exc:
        print(f"ktc results: {exc}", file=sys.stderr)
        return 1
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
