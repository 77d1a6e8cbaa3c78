"""Worker time: what a search's trials have spent, and what they will cost.

Every kt-cluster worker reports, with each epoch's metrics, the wall seconds it spent on that epoch
(`EPOCH_SECONDS`: the first epoch of a run also carries the model's build and the data's set-up,
a later one the previous epoch's checkpoint). The search's spending is therefore derived from its
trials alone, like everything else the chief scores: the journal that restores the trials
restores it, and a trial re-run after a lost lease counts both runs, as both used a worker.
`max_worker_hours` budgets it: with one GPU per worker, GPU hours.
"""

from __future__ import annotations

from statistics import fmean
from typing import Iterable

from keras_tuner.engine import trial as trial_module

EPOCH_SECONDS = "epoch_seconds"


def _seconds(trial: trial_module.Trial) -> list[float]:
    if not trial.metrics.exists(EPOCH_SECONDS):
        return []
    return [value for observation in trial.metrics.get_history(EPOCH_SECONDS) for value in observation.value]


def spent_seconds(trials: Iterable[trial_module.Trial]) -> float:
    """Worker seconds the trials have reported, running ones included."""
    return sum(sum(_seconds(trial)) for trial in trials)


def epochs_reported(trial: trial_module.Trial) -> int:
    return len(_seconds(trial))


def seconds_per_epoch(trial: trial_module.Trial, fallback: float) -> float:
    """The trial's mean epoch so far, else `fallback` (a trial that has reported nothing yet)."""
    seconds = _seconds(trial)
    return fmean(seconds) if seconds else fallback


def mean_epoch_seconds(trials: Iterable[trial_module.Trial]) -> float:
    """The mean epoch over every trial (0.0 before any epoch): the guess for a trial of its own."""
    seconds = [value for trial in trials for value in _seconds(trial)]
    return fmean(seconds) if seconds else 0.0
