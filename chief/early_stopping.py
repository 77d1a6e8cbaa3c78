"""The median stopping rule (Golovin et al., Google Vizier, 2017).

Stop a running trial at epoch `e` when its best objective so far is worse than the median of what
finished trials had reached by epoch `e`. Needs `min_trials` finished trials with a value at that
epoch before it judges anyone, and never stops a trial before `min_epochs` epochs.
"""

from __future__ import annotations

import bisect
import statistics

from keras_tuner.engine import trial as trial_module


class MedianStoppingRule:
    def __init__(self, objective_name: str, direction: str, min_trials: int = 3, min_epochs: int = 1):
        self.objective_name = objective_name
        self.maximize = direction == "max"
        self.min_trials = min_trials
        self.min_epochs = min_epochs

    def _best_until(self, trial: trial_module.Trial, epoch: int) -> float | None:
        if not trial.metrics.exists(self.objective_name):
            return None
        values = [_mean(o) for o in trial.metrics.get_history(self.objective_name) if o.step <= epoch]
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

    # --- the same rule, incrementally --------------------------------------------------------
    # `should_stop` rescans every finished trial's history on each UpdateTrial: O(trials) per call,
    # which made UpdateTrial the chief's hot spot at thousands of trials. The chief instead indexes
    # each finished trial once (`finished`), keeping per epoch the sorted "best until that epoch"
    # values of the trials that trained that long, and `should_stop_indexed` takes the median from
    # there: the same decision as `should_stop(trial, epoch, finished_trials)`.

    def _index(self) -> dict[int, list[float]]:
        if "_by_epoch" not in self.__dict__:
            self._by_epoch: dict[int, list[float]] = {}  # epoch -> sorted values
            self._indexed: dict[str, dict[int, float]] = {}  # trial id -> its values by epoch
        return self._by_epoch

    def finished(self, trial: trial_module.Trial) -> None:
        """Index a trial that ended COMPLETED (again if its history changed since)."""
        by_epoch = self._index()
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
                bisect.insort(by_epoch.setdefault(epoch, []), best)
        self._indexed[trial.trial_id] = values

    def forget(self, trial_id: str) -> None:
        by_epoch = self._index()
        for epoch, value in self._indexed.pop(trial_id, {}).items():
            sorted_values = by_epoch[epoch]
            del sorted_values[bisect.bisect_left(sorted_values, value)]

    def should_stop_indexed(self, trial: trial_module.Trial, epoch: int) -> bool:
        if epoch + 1 < self.min_epochs:
            return False
        current = self._best_until(trial, epoch)
        if current is None:
            return False
        reached = self._index().get(epoch, ())
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


def _last_step(trial: trial_module.Trial, name: str) -> int:
    return max(o.step for o in trial.metrics.get_history(name))
