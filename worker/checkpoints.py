"""Per-epoch checkpoints that let any worker resume a trial exactly where its last holder stopped.

After every epoch the state of training goes to `trial_<id>/resume.npz`: every variable of the
model (weights, batch-norm statistics, the state of its random generators) and of its optimizer
(Adam's step count and moments), so a resumed trial continues the same run. The progress (last
finished epoch, the per-epoch logs so far, the best score) goes to `trial_<id>/resume.json`.
When the score improves (the objective's best mean of `score_window` consecutive epochs,
`kt_cluster.core.scoring`), that epoch's state also goes to `best.npz`; when the trial ends it
becomes keras-tuner's best-epoch checkpoint (`checkpoint.weights.h5`, weights and optimizer),
which the chief loads for the best model and a promoted trial starts from.

Writing does not hold up training: at the end of an epoch the variables are copied to host
memory (a fraction of a step) and a background thread writes the files, each whole or not at all
(`kt_cluster.core.atomic_files`), so a kill never leaves a torn checkpoint. The JSON is written
last: it names an epoch only once that epoch's state is in place. A trial waits for its writes
before it ends or hands its trial back.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from kt_cluster.core.atomic_files import atomic_output, atomic_write
from kt_cluster.core.scoring import WindowTracker

STATE = "resume.npz"
PROGRESS = "resume.json"
BEST = "best.npz"


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model being trained; the message names the file."""


@dataclass
class Progress:
    epoch: int  # last finished epoch, 0-based
    history: dict[str, list[float]] = field(default_factory=dict)
    best_value: float | None = None


def training_variables(model: keras.Model) -> list:
    """What a resumed run needs: the model's variables (weights, batch-norm statistics, random
    generator states) and, once built, its optimizer's. The optimizer must exist first."""
    optimizer = model.optimizer.variables if model.optimizer is not None else []
    return list(model.variables) + list(optimizer)


def build_optimizer(model: keras.Model) -> None:
    """Create the optimizer's variables now, before any state is loaded into them (else Keras
    skips the optimizer's saved state) and before tracing (faster than inside the trace)."""
    if model.optimizer is not None and not model.optimizer.built:
        strategy = getattr(model, "distribute_strategy", None)  # TensorFlow only
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model.optimizer.build(model.trainable_variables)


def snapshot(model: keras.Model) -> list[np.ndarray]:
    """Host copies of `training_variables`, safe to write while training goes on (a value read
    from a variable is not changed by later updates of the variable)."""
    return [_host(v.value) for v in training_variables(model)]


def _host(value) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)  # TensorFlow, else JAX


def assign(model: keras.Model, values: list[np.ndarray], source: Path) -> None:
    variables = training_variables(model)
    if len(values) != len(variables):
        raise CheckpointError(f"{source}: holds {len(values)} variables but this trial's model and optimizer "
                              f"have {len(variables)}; it was written for another model")
    for variable, value in zip(variables, values):
        if tuple(variable.shape) != tuple(value.shape):
            raise CheckpointError(f"{source}: variable {variable.path} has shape {tuple(value.shape)} there but "
                                  f"{tuple(variable.shape)} in this trial's model")
    for variable, value in zip(variables, values):
        variable.assign(value)


def load(trial_dir: Path) -> Progress | None:
    path = Path(trial_dir) / PROGRESS
    if not path.exists() or not (Path(trial_dir) / STATE).exists():
        return None
    return Progress(**json.loads(path.read_text()))


def restore(model: keras.Model, trial_dir: Path) -> None:
    """The state of the last checkpointed epoch: weights, optimizer and random generators."""
    build_optimizer(model)
    path = Path(trial_dir) / STATE
    assign(model, read_state(path), path)


def restore_best_epoch(model: keras.Model, path: Path) -> None:
    """Weights and optimizer state from keras-tuner's best-epoch checkpoint (a promotion's parent)."""
    build_optimizer(model)
    model.load_weights(path)


def read_state(path: Path) -> list[np.ndarray]:
    with np.load(path) as arrays:
        return [arrays[str(i)] for i in range(len(arrays.files))]


def write_state(path: Path, values: list[np.ndarray]) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as out:
        np.savez(out, **{str(i): v for i, v in enumerate(values)})


def write_progress(trial_dir: Path, progress: Progress) -> None:
    atomic_write(Path(trial_dir) / PROGRESS, json.dumps(asdict(progress)), fsync=False)


class Writer:
    """One background thread that runs file writes in order; `wait` raises the first failure."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="checkpoint-writer")
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._raise()
        self._jobs.put(job)

    def wait(self) -> None:
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None:
                    job()
            except BaseException as exc:  # noqa: BLE001 - surfaced by the next submit or wait
                self._error = exc
            finally:
                self._jobs.task_done()
        self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class ResumeCheckpoint(keras.callbacks.Callback):
    """Checkpoints each epoch in the background; `history` covers epochs from before a resume too.

    `finish` (after fit, also after an interruption) waits for the writes and, once the trial
    is complete, writes the best-epoch checkpoint to `best_path`.
    """

    def __init__(self, trial_dir: Path, objective, resumed: Progress | None, best_path: Path,
                 score_window: int = 1):
        super().__init__()
        self.trial_dir = Path(trial_dir)
        self.objective = objective
        self.best_path = Path(best_path)
        self.history: dict[str, list[float]] = dict(resumed.history) if resumed else {}
        # "Best" as the chief scores the trial: the end of the best window of `score_window`
        # epochs, followed from the epochs before a resume on.
        self.window = WindowTracker(score_window, objective.direction, self.history.get(objective.name, ()))
        self.best: list[np.ndarray] | None = None  # the best epoch's state, once this run has one
        self.writer = Writer()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))
        state = snapshot(self.model)
        improved = not self.objective.has_value(logs)  # no objective to compare: keep the latest
        if self.objective.has_value(logs):
            improved = self.window.add(float(self.objective.get_value(logs)))
        if improved:
            self.best = state
        progress = Progress(epoch, {k: list(v) for k, v in self.history.items()}, self.window.best)
        self.writer.submit(lambda: self._write(state, improved, progress))

    def finish(self, model: keras.Model, complete: bool) -> None:
        """Wait for the background writes; then, if the trial is complete, write the best-epoch
        checkpoint (from memory, or from `best.npz` when that epoch came before a resume)."""
        try:
            self.writer.wait()
        finally:
            self.writer.close()
        best_file = self.trial_dir / BEST
        if not complete or (self.best is None and not best_file.exists()):
            return
        if self.best is None:
            self.best = read_state(best_file)
        assign(model, self.best, best_file)
        with atomic_output(self.best_path) as tmp:
            model.save_weights(tmp)
        best_file.unlink(missing_ok=True)  # now in the best-epoch checkpoint

    def _write(self, state: list[np.ndarray], improved: bool, progress: Progress) -> None:
        write_state(self.trial_dir / STATE, state)
        if improved:
            # The same bytes: a second name for the file just written (later epochs replace
            # resume.npz by a new file, so this one stays the best epoch's).
            with atomic_output(self.trial_dir / BEST) as tmp:
                try:
                    os.link(self.trial_dir / STATE, tmp)
                except OSError:  # a file system without hard links
                    with open(tmp, "wb") as out:
                        np.savez(out, **{str(i): v for i, v in enumerate(state)})
        write_progress(self.trial_dir, progress)
