"""Per-epoch checkpoints that let any worker resume a trial where its last holder stopped.

After every epoch the model's weights go to `trial_<id>/resume.weights.h5` and the progress
(last finished epoch, the per-epoch logs so far, the best objective) to `trial_<id>/resume.json`,
each written whole or not at all (`kt_cluster.core.atomic_files`), so a kill never leaves a torn
checkpoint. The JSON is written last: it names an epoch only once that epoch's weights are in place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras

from kt_cluster.core.atomic_files import atomic_output, atomic_write

WEIGHTS = "resume.weights.h5"
PROGRESS = "resume.json"


@dataclass
class Progress:
    epoch: int  # last finished epoch, 0-based
    history: dict[str, list[float]] = field(default_factory=dict)
    best_value: float | None = None


def load(trial_dir: Path) -> Progress | None:
    path = Path(trial_dir) / PROGRESS
    if not path.exists() or not (Path(trial_dir) / WEIGHTS).exists():
        return None
    return Progress(**json.loads(path.read_text()))


def restore(model: keras.Model, trial_dir: Path) -> None:
    """Weights and optimizer state (the optimizer must exist before its variables can load)."""
    if model.optimizer is not None:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(Path(trial_dir) / WEIGHTS)


def save(trial_dir: Path, model: keras.Model, progress: Progress) -> None:
    trial_dir = Path(trial_dir)
    with atomic_output(trial_dir / WEIGHTS) as weights:
        model.save_weights(weights)
    atomic_write(trial_dir / PROGRESS, json.dumps(asdict(progress)), fsync=False)


class ResumeCheckpoint(keras.callbacks.Callback):
    """Saves progress after each epoch; `history` covers epochs from before a resume too."""

    def __init__(self, trial_dir: Path, objective, resumed: Progress | None):
        super().__init__()
        self.trial_dir = Path(trial_dir)
        self.objective = objective
        self.history: dict[str, list[float]] = dict(resumed.history) if resumed else {}
        self.best_value = resumed.best_value if resumed else None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))
        if self.objective.has_value(logs):
            value = float(self.objective.get_value(logs))
            if self.best_value is None or self.objective.better_than(value, self.best_value):
                self.best_value = value
        save(self.trial_dir, self.model, Progress(epoch, self.history, self.best_value))
