"""The median stopping rule (Golovin et al., Google Vizier, 2017).

Stop a running trial at epoch `e` when its best objective so far is worse than the median of what
finished trials had reached by epoch `e`. Needs `min_trials` finished trials with a value at that
epoch before it judges anyone, and never stops a trial before `min_epochs` epochs.

Only trials that trained at least until epoch `e` say what epoch `e` can reach. Rescanning every
finished trial's history on each UpdateTrial would cost O(trials) per call, which made UpdateTrial
the chief's hot spot at thousands of trials; the rule instead indexes each finished trial once
(`finished`), keeping per epoch the sorted "best until that epoch" values of the trials that
trained that long, and `should_stop` takes the median from there (tests/test_early_stopping.py
checks it against the plain rescan on random histories).
"""

from __future__ import annotations

import bisect

from keras_tuner.engine import trial as trial_module


class MedianStoppingRule:
    def __init__(self, objective_name: str, direction: str, min_trials: int = 3, min_epochs: int = 1):
        self.objective_name = objective_name
        self.maximize = direction == "max"
        self.min_trials = min_trials
        self.min_epochs = min_epochs
        self._by_epoch: dict[int, list[float]] = {}  # epoch -> sorted "best until then" of finished trials
        self._indexed: dict[str, dict[int, float]] = {}  # trial id -> its values by epoch

    def _best_until(self, trial: trial_module.Trial, epoch: int) -> float | None:
        if not trial.metrics.exists(self.objective_name):
            return None
        values = [_mean(o) for o in trial.metrics.get_history(self.objective_name) if o.step <= epoch]
        if not values:
            return None
        return max(values) if self.maximize else min(values)

    def finished(self, trial: trial_module.Trial) -> None:
        """Index a trial that ended COMPLETED (again if its history changed since)."""
        self.forget(trial.trial_id)
        if not trial.metrics.exists(self.objective_name):
            return
        history = trial.metrics.get_history(self.objective_name)
        if not history:
            return
        values, best = {}, None
        # Epochs from the first reported step to the last one: `_best_until` is defined there.
        steps = [o.step for o in history]
        means = [_mean(o) for o in history]
        position = 0
        for epoch in range(min(steps), max(steps) + 1):
            while position < len(history) and steps[position] <= epoch:
                value = means[position]
                best = value if best is None else (max(best, value) if self.maximize else min(best, value))
                position += 1
            if best == best:  # a NaN has no place in a sorted list (nor a meaningful median)
                values[epoch] = best
                bisect.insort(self._by_epoch.setdefault(epoch, []), best)
        self._indexed[trial.trial_id] = values

    def forget(self, trial_id: str) -> None:
        """Drop a trial from the index."""
        for epoch, value in self._indexed.pop(trial_id, {}).items():
            sorted_values = self._by_epoch[epoch]
            del sorted_values[bisect.bisect_left(sorted_values, value)]

    def should_stop(self, trial: trial_module.Trial, epoch: int) -> bool:
        """Whether the running `trial`, having reported `epoch`, is worse than the median."""
        if epoch + 1 < self.min_epochs:
            return False
        current = self._best_until(trial, epoch)
        if current is None:
            return False
        reached = self._by_epoch.get(epoch, ())
        if len(reached) < self.min_trials:
            return False
        n = len(reached)
        median = reached[n // 2] if n % 2 else (reached[n // 2 - 1] + reached[n // 2]) / 2
        return current < median if self.maximize else current > median


def _mean(observation) -> float:
    """`observation.mean()` (numpy) without numpy's per-call cost in the usual case of one value,
    whose mean is that value exactly."""
    values = observation.value
    return values[0] if len(values) == 1 else observation.mean()

