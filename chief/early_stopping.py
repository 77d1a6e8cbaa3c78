"""The median stopping rule (Golovin et al., Google Vizier, 2017).

Stop a running trial at epoch `e` when its best objective so far is worse than the median of what
finished trials had reached by epoch `e`. Needs `min_trials` finished trials with a value at that
epoch before it judges anyone, and never stops a trial before `min_epochs` epochs.
"""

from __future__ import annotations

import statistics

from keras_tuner.src.engine import trial as trial_module


class MedianStoppingRule:
    def __init__(self, objective_name: str, direction: str, min_trials: int = 3, min_epochs: int = 1):
        self.objective_name = objective_name
        self.maximize = direction == "max"
        self.min_trials = min_trials
        self.min_epochs = min_epochs

    def _best_until(self, trial: trial_module.Trial, epoch: int) -> float | None:
        if not trial.metrics.exists(self.objective_name):
            return None
        values = [o.mean() for o in trial.metrics.get_history(self.objective_name) if o.step <= epoch]
        if not values:
            return None
        return max(values) if self.maximize else min(values)

    def should_stop(self, trial: trial_module.Trial, epoch: int,
                    finished: list[trial_module.Trial]) -> bool:
        if epoch + 1 < self.min_epochs:
            return False
        current = self._best_until(trial, epoch)
        if current is None:
            return False
        # Only trials that trained at least this long say what epoch `epoch` can reach.
        reached = [v for t in finished
                   if (v := self._best_until(t, epoch)) is not None and _last_step(t, self.objective_name) >= epoch]
        if len(reached) < self.min_trials:
            return False
        median = statistics.median(reached)
        return current < median if self.maximize else current > median


def _last_step(trial: trial_module.Trial, name: str) -> int:
    return max(o.step for o in trial.metrics.get_history(name))
