"""Render a chief's status (the `ktc.Coordinator/Status` reply) for people."""

from __future__ import annotations

from typing import Any

BAR_WIDTH = 30


def bar(done: int, total: int) -> str:
    return _bar(done / total if total else 0.0, f"{done}/{total}")


def bar_hours(spent: float, budget: float) -> str:
    return _bar(spent / budget, f"{spent / 3600:.2f}/{budget / 3600:g}")


def _bar(share: float, label: str) -> str:
    """A bar filled to `share` (clamped to 0..1: a budget can be overrun by the trials running at
    its end), then the label."""
    filled = max(0, min(BAR_WIDTH, int(BAR_WIDTH * share)))
    return "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + f"] {label}"


def render(status: dict[str, Any]) -> str:
    ended = status["completed"] + status["failed"]
    best = status["best"]
    best_text = f"{status['objective']} {best['score']:.4f} (trial {best['trial_id']})" if best else "none yet"
    lines = [
        f"{bar(ended, status['max_trials'] or status['total'])} trials  "
        f"completed {status['completed']}  running {len(status['running'])}  failed {status['failed']}  "
        f"queued {status['queued']}  stopped early {status['stopped_early']}",
        f"best: {best_text}",
    ]
    if status.get("max_worker_seconds"):
        lines.append(f"{bar_hours(status['worker_seconds'], status['max_worker_seconds'])} worker hours")
    lines += [f"warning: {w}" for w in status.get("search", {}).get("warnings", [])]
    for running in status["running"]:
        epoch = running["epoch"] + 1 if running["epoch"] >= 0 else "-"
        lines.append(f"  {running['tuner_id']}: trial {running['trial_id']}, epochs done {epoch}")
    if status["done"]:
        lines.append("search failed: " + status["failure"] if status["failure"] else "search complete")
    return "\n".join(lines)
