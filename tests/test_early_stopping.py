"""The median stopping rule: its incremental index decides as the plain rule does."""

import random
import statistics

import pytest
from keras_tuner.engine import trial as trial_module

from kt_cluster.chief.early_stopping import MedianStoppingRule

OBJECTIVE = "val_f1"


class PlainMedianRule:
    """The rule as written (Golovin et al.): rescan every finished trial at each decision. The
    reference for `MedianStoppingRule`, which indexes finished trials instead."""

    def __init__(self, direction: str, min_trials: int, min_epochs: int):
        self.maximize = direction == "max"
        self.min_trials, self.min_epochs = min_trials, min_epochs

    def best_until(self, trial, epoch):
        if not trial.metrics.exists(OBJECTIVE):
            return None
        values = [o.mean() for o in trial.metrics.get_history(OBJECTIVE) if o.step <= epoch]
        if not values:
            return None
        return max(values) if self.maximize else min(values)

    def should_stop(self, trial, epoch, finished) -> bool:
        if epoch + 1 < self.min_epochs:
            return False
        current = self.best_until(trial, epoch)
        if current is None:
            return False
        # Only trials that trained at least this long say what epoch `epoch` can reach.
        reached = [v for t in finished if (v := self.best_until(t, epoch)) is not None
                   and max(o.step for o in t.metrics.get_history(OBJECTIVE)) >= epoch]
        if len(reached) < self.min_trials:
            return False
        median = statistics.median(reached)
        return current < median if self.maximize else current > median


def random_trial(rng: random.Random, trial_id: str) -> trial_module.Trial:
    """A trial with a history as workers report it: steps from a resume point or from 0, gaps,
    repeated steps (several values, averaged), ties, sometimes no objective at all."""
    trial = trial_module.Trial(None, trial_id=trial_id)
    if rng.random() < 0.05:
        trial.metrics.register("loss", direction="min")
        trial.metrics.update("loss", rng.random(), step=0)
        return trial
    trial.metrics.register(OBJECTIVE, direction="max")
    step = rng.choice([0, 0, 0, 1, 3])
    for _ in range(rng.randint(1, 8)):
        trial.metrics.update(OBJECTIVE, rng.choice([0.5, round(rng.random(), 2), rng.random()]), step=step)
        if rng.random() < 0.1:
            trial.metrics.update(OBJECTIVE, rng.random(), step=step)  # a second value at this step
        step += rng.choice([1, 1, 1, 2])
    return trial


@pytest.mark.parametrize("direction", ["max", "min"])
@pytest.mark.parametrize("seed", range(2))
def test_the_indexed_rule_decides_as_the_plain_rule_on_random_histories(direction, seed):
    rng = random.Random(seed)
    min_trials, min_epochs = rng.choice([1, 3, 5]), rng.choice([1, 2])
    rule = MedianStoppingRule(OBJECTIVE, direction, min_trials=min_trials, min_epochs=min_epochs)
    plain = PlainMedianRule(direction, min_trials, min_epochs)
    finished: dict[str, trial_module.Trial] = {}
    stops = decisions = 0
    for n in range(60):
        if finished and rng.random() < 0.1:  # a finished trial reported again (a stock client): re-indexed
            trial_id = rng.choice(sorted(finished))
            finished[trial_id] = random_trial(rng, trial_id)
            rule.finished(finished[trial_id])
        elif rng.random() < 0.4:
            trial = random_trial(rng, f"t{n}")
            finished[trial.trial_id] = trial
            rule.finished(trial)
        running = random_trial(rng, f"r{n}")
        for epoch in range(-1, 10):
            expected = plain.should_stop(running, epoch, list(finished.values()))
            assert rule.should_stop(running, epoch) == expected, (n, epoch)
            stops += expected
            decisions += 1
    assert 0 < stops < decisions  # both answers were exercised


def test_a_forgotten_trial_no_longer_counts():
    rule = MedianStoppingRule(OBJECTIVE, "max", min_trials=1)
    good = trial_module.Trial(None, trial_id="good")
    good.metrics.register(OBJECTIVE, direction="max")
    good.metrics.update(OBJECTIVE, 0.9, step=0)
    rule.finished(good)
    running = trial_module.Trial(None, trial_id="running")
    running.metrics.register(OBJECTIVE, direction="max")
    running.metrics.update(OBJECTIVE, 0.1, step=0)
    assert rule.should_stop(running, 0)
    rule.forget("good")
    assert not rule.should_stop(running, 0)
