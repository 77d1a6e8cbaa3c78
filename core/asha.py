"""Asynchronous successive halving (ASHA; Li et al., "A System for Massively Parallel
Hyperparameter Tuning", MLSys 2020, arXiv:1810.05934 from 2018) as a keras-tuner `Oracle`.

Rungs are trained for r, r*eta, r*eta^2, ... epochs, the last one capped at R (`min_epochs`,
`max_epochs`, `eta`). Whenever a worker asks for a trial, `populate_space`:

1. looks for a promotable trial, highest rung first: one that COMPLETED at rung k, is among the
   best floor(n_k / eta) of the n_k trials completed at rung k, and has not been promoted yet.
   It comes back as a NEW trial with the same hyperparameters plus keras-tuner's Hyperband
   conventions, so `kt_cluster.worker.tuner.WorkerTuner` warm-starts it from the parent's checkpoint:
   `tuner/epochs` = epochs of rung k+1, `tuner/initial_epoch` = epochs of rung k,
   `tuner/trial_id` = the parent, `tuner/bracket` = 0, `tuner/round` = k+1;
2. otherwise starts a new configuration at rung 0 (`tuner/epochs` = r, `tuner/initial_epoch` = 0,
   `tuner/round` = 0): drawn by a `kt_cluster.core.sampler.ModelSampler` fit on the rung-0 results
   when the oracle has one (model-based and cost-aware, BOHB-style, never costing more per
   epoch than `exploration_cap`), else at random.

The end of a `max_trials` budget is kept for the final climb: once the trials left are no more
than the promotions still needed to bring the furthest configuration to `max_epochs`, each one
promotes the best completed trial at the highest rung reached, whatever its rank there (without
this, rung-0 trials started while the last promotions were due would use up the budget and no
configuration would train for `max_epochs`).

A worker-time budget (`max_worker_seconds`, the config's `max_worker_hours`) is kept for the
final climb the same way, planned from what the trials reported (`kt_cluster.core.compute`): the
climb starts once the time left, less what running trials still need, pays for no more than
carrying the furthest configuration to `max_epochs` at its seconds per epoch so far, plus the
trial that would start otherwise (a promotion of a configuration that may cost far more per epoch,
or a first-rung trial); and no other trial starts that could not finish in the time left (the
worker waits while others run, and the search ends when none is left), so no trial started late
overruns the budget beside the climb. The climb itself goes on when costs turned out higher than
planned (a better configuration that costs more per epoch came last): its end is what the
budget was kept for. (The chief's oracle also starts no trial of any tuner
once the time is spent.)

It never answers IDLE while the trial budget lasts (no worker waits for a rung to fill, unlike
Hyperband's brackets), with two exceptions where it waits for running trials: during the final
climb while the highest rung's results are still running, and in a search space with no unseen
configuration left (where it carries the best configuration of the highest rung reached up
instead, when it can). Once `max_trials` trials exist it answers STOPPED.

State: `get_state()` adds three numbers to keras-tuner's Oracle state (min_epochs, max_epochs,
eta) and nothing per trial. Rung results and promotions are derived from the trials themselves
(each promoted trial names its parent in `tuner/trial_id`, its rung in `tuner/round`), which
the chief's journal and keras-tuner's `reload()` both restore before `set_state`; the index is
rebuilt lazily from `self.trials` after `set_state`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import keras_tuner
from keras_tuner.engine import trial as trial_module

from kt_cluster.core import compat, compute
from kt_cluster.core.sampler import ModelSampler

TrialStatus = trial_module.TrialStatus


@dataclass(frozen=True)
class TimePlan:
    """Worker seconds, as `ASHAOracle.time_plan` estimates them."""

    left: float  # of the budget, less what running trials still need
    climb: float  # to carry the furthest configuration to max_epochs
    following: float  # the trial that would start if the climb did not


TUNER_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/trial_id", "tuner/bracket", "tuner/round")


def rung_epochs(min_epochs: int, max_epochs: int, eta: int) -> list[int]:
    """Epochs of each rung: min_epochs * eta**k below max_epochs, then max_epochs itself."""
    rungs, epochs = [], min_epochs
    while epochs < max_epochs:
        rungs.append(epochs)
        epochs *= eta
    return rungs + [max_epochs]


class ASHAOracle(compat.ValuesHashIgnoring, keras_tuner.Oracle):
    """Asynchronous successive halving over random or model-sampled configurations."""

    # A configuration is "tried" whatever its rung: a sampled configuration is never sampled again.
    unhashed_prefix = "tuner/"

    def __init__(self, objective=None, max_trials: int | None = None, min_epochs: int = 1,
                 max_epochs: int = 20, eta: int = 3, seed: int | None = None, hyperparameters=None,
                 allow_new_entries: bool = True, tune_new_entries: bool = True,
                 max_retries_per_trial: int = 0, max_consecutive_failed_trials: int = 3,
                 sampler: ModelSampler | None = None):
        if min_epochs < 1 or max_epochs < min_epochs:
            raise ValueError(f"ASHA needs 1 <= min_epochs <= max_epochs, got {min_epochs} and {max_epochs}")
        if eta < 2:
            raise ValueError(f"ASHA's reduction factor eta must be >= 2, got {eta}")
        super().__init__(objective=objective, max_trials=max_trials, hyperparameters=hyperparameters,
                         allow_new_entries=allow_new_entries, tune_new_entries=tune_new_entries, seed=seed,
                         max_retries_per_trial=max_retries_per_trial,
                         max_consecutive_failed_trials=max_consecutive_failed_trials)
        self.min_epochs, self.max_epochs, self.eta = min_epochs, max_epochs, eta
        self.sampler = sampler
        self.max_worker_seconds: float | None = None  # the worker-time budget the final climb fits in
        self._index_stale = True
        self._results: list[dict[str, float]] = []  # per rung: trial id -> score, completed trials only
        self._promoted: set[str] = set()  # ids of trials that already have a promoted child

    @property
    def rungs(self) -> list[int]:
        return rung_epochs(self.min_epochs, self.max_epochs, self.eta)

    # --- the index of rung results, derived from the trials ----------------------------------

    def _index(self) -> tuple[list[dict[str, float]], set[str]]:
        if self._index_stale:
            self._results = [{} for _ in self.rungs]
            self._promoted = set()
            for trial in self.trials.values():
                self._note_created(trial)
                self._note_ended(trial)
            self._index_stale = False
        return self._results, self._promoted

    def _note_created(self, trial: trial_module.Trial) -> None:
        parent = trial.hyperparameters.values.get("tuner/trial_id")
        if parent is not None:
            self._promoted.add(parent)

    def _note_ended(self, trial: trial_module.Trial) -> None:
        rung = trial.hyperparameters.values.get("tuner/round")
        if (trial.status == TrialStatus.COMPLETED and trial.score is not None
                and rung is not None and 0 <= rung < len(self._results)):
            self._results[rung][trial.trial_id] = trial.score

    @keras_tuner.synchronized
    def end_trial(self, trial: trial_module.Trial) -> None:
        super().end_trial(trial)
        if not self._index_stale:
            self._note_ended(self.trials[trial.trial_id])

    # --- choosing the next trial -------------------------------------------------------------

    def promotable(self) -> tuple[str, int] | None:
        """(trial id, its rung) of the best trial waiting for promotion, highest rung first."""
        results, promoted = self._index()
        for rung in reversed(range(len(results) - 1)):
            scores = results[rung]
            top = len(scores) // self.eta
            if top == 0:
                continue
            ranked = sorted(scores, key=scores.__getitem__, reverse=self.objective.direction == "max")
            for trial_id in ranked[:top]:
                if trial_id not in promoted:
                    return trial_id, rung
        return None

    def final_climb_left(self) -> int | None:
        """Promotions still needed to carry the furthest configuration to max_epochs: the rungs
        above the highest one that a running or completed trial has reached (None before any)."""
        results, _ = self._index()
        reached = [rung for rung, scores in enumerate(results) if scores]
        reached += [t.hyperparameters.values.get("tuner/round", 0) for t in self.ongoing_trials.values()]
        return len(results) - 1 - max(reached) if reached else None

    def climb_candidate(self) -> tuple[str, int] | None:
        """(trial id, its rung) of the best completed trial at the highest rung reached, whatever
        its rank among its rung's results: the trial the last of the budget carries upwards."""
        results, promoted = self._index()
        climb = self.final_climb_left()
        if not climb:
            return None
        top = len(results) - 1 - climb
        scores = {t: s for t, s in results[top].items() if t not in promoted}
        if not scores:
            return None
        pick = max if self.objective.direction == "max" else min
        return pick(scores, key=scores.__getitem__), top

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        if self.max_trials and len(self.trials) >= self.max_trials:
            return {"status": TrialStatus.STOPPED}
        climb = self.final_climb_left()
        found = self.promotable()
        plan = self.time_plan(found)
        if climb and ((self.max_trials and self.max_trials - len(self.trials) <= climb)
                      or (plan is not None and plan.left < plan.climb + plan.following)):
            # The rest of the budget is only enough to carry one configuration to max_epochs:
            # spend it there rather than on rung 0 trials that will never be promoted.
            found = self.climb_candidate()
            if found is None:  # the highest rung's results are still running: wait for them
                return self._nothing_to_start()
            return self._promotion(*found)  # even past the budget: what its end was kept for
        if plan is not None and plan.left < plan.following:
            return self._nothing_to_start()  # it could not finish in the worker time left
        if found is not None:
            return self._promotion(*found)
        values = self._new_values()
        if values is None:  # every configuration of the space has been sampled: carry the best up
            found = self.climb_candidate()
            return self._promotion(*found) if found is not None else self._nothing_to_start()
        values.update({"tuner/epochs": self.rungs[0], "tuner/initial_epoch": 0, "tuner/bracket": 0, "tuner/round": 0})
        return {"status": TrialStatus.RUNNING, "values": values}

    def _nothing_to_start(self) -> dict[str, Any]:
        """Wait while trials run (one may free a promotion or come back), else the search is over."""
        return {"status": TrialStatus.IDLE if self.ongoing_trials else TrialStatus.STOPPED}

    def time_plan(self, promotion: tuple[str, int] | None = None) -> TimePlan | None:
        """The worker-time budget's plan (None without `max_worker_seconds`): the time left less
        what running trials still need, the furthest configuration's climb to max_epochs, and
        the trial that would start otherwise, `promotion` (trial id, rung) or a new first-rung
        one. Costs are what the trials reported: a configuration's seconds per epoch so far, a
        first-rung trial's mean duration."""
        if self.max_worker_seconds is None:
            return None
        trials = list(self.trials.values())
        fallback = compute.mean_epoch_seconds(trials)
        left = self.max_worker_seconds - compute.spent_seconds(trials)
        for trial in self.ongoing_trials.values():
            values = trial.hyperparameters.values
            epochs = values.get("tuner/epochs", 0) - values.get("tuner/initial_epoch", 0)
            left -= max(0, epochs - compute.epochs_reported(trial)) * compute.seconds_per_epoch(trial, fallback)
        following = (self._promotion_seconds(*promotion, fallback) if promotion is not None
                     else self._first_rung_seconds(fallback))
        return TimePlan(left, self._climb_seconds(fallback), following)

    def _promotion_seconds(self, parent_id: str, rung: int, fallback: float) -> float:
        rungs = self.rungs
        return (rungs[rung + 1] - rungs[rung]) * compute.seconds_per_epoch(self.trials[parent_id], fallback)

    def _climb_seconds(self, fallback: float) -> float:
        """Worker seconds to carry the furthest configuration (the climb's candidate, else the
        running trial at the highest rung) from its rung to max_epochs."""
        found = self.climb_candidate()
        if found is not None:
            trial, rung = self.trials[found[0]], found[1]
        elif self.ongoing_trials:
            trial = max(self.ongoing_trials.values(), key=lambda t: t.hyperparameters.values.get("tuner/round", 0))
            rung = trial.hyperparameters.values.get("tuner/round", 0)
        else:
            return 0.0
        rungs = self.rungs
        return (rungs[-1] - rungs[rung]) * compute.seconds_per_epoch(trial, fallback)

    def _first_rung_seconds(self, fallback: float) -> float:
        results, _ = self._index()
        spent = [compute.spent_seconds([self.trials[t]]) for t in results[0]]
        return fmean(spent) if spent else self.rungs[0] * fallback

    def _promotion(self, parent_id: str, rung: int) -> dict[str, Any]:
        """A new trial that trains `parent_id`'s configuration on from rung `rung` to the next."""
        rungs = self.rungs
        values = {k: v for k, v in self.trials[parent_id].hyperparameters.values.items() if k not in TUNER_KEYS}
        values.update({"tuner/epochs": rungs[rung + 1], "tuner/initial_epoch": rungs[rung],
                       "tuner/trial_id": parent_id, "tuner/bracket": 0, "tuner/round": rung + 1})
        self._promoted.add(parent_id)
        return {"status": TrialStatus.RUNNING, "values": values}

    def _new_values(self) -> dict[str, Any] | None:
        """A rung-0 configuration never tried before: from the sampler's model, else at random."""
        if self.sampler is None:
            return compat.random_values(self)
        results, _ = self._index()
        # Rung 0 holds every configuration: higher rungs hold only the promoted, too alike to
        # tell a model what is bad.
        scored = [({k: v for k, v in self.trials[t].hyperparameters.values.items() if k not in TUNER_KEYS}, s)
                  for t, s in results[0].items()]
        # Candidates come from a stream of their own, seeded by the oracle's seed state (hashed
        # from a string): keras-tuner's draws seed each value with consecutive integers, whose
        # first outputs are correlated enough that eight draws in a row can all land in the
        # space's expensive half.
        rng = random.Random(f"asha-{compat.next_seed(self)}")

        def draw() -> dict[str, Any] | None:
            return compat.unseen_values(self, lambda: rng.getrandbits(63))

        cap = self.exploration_cap(scored)
        values = self.sampler.sample(self.hyperparameters.space, draw, scored,
                                     self.objective.direction == "max", rng, cap)
        if values is not None and compat.tried_before(self, values):
            values = self.sampler.capped(draw, cap)()  # a model draw that repeats a tried configuration
        return values

    def exploration_cap(self, scored: list[tuple[dict[str, Any], float]]) -> float | None:
        """The most a new configuration may cost per epoch: what makes its first rung cost as much
        as carrying the best rung-0 configuration so far to max_epochs (None without a cost or a
        score). Looking at one more configuration is never worth more than finishing the best
        one: under a budget of a few trainings, one U-Net of 80 filters would otherwise take the
        budget of dozens of small trials, and with it the best configuration's last rungs."""
        cost = self.sampler.cost if self.sampler is not None else None
        if cost is None or not scored:
            return None
        pick = max if self.objective.direction == "max" else min
        best, _ = pick(scored, key=lambda vs: vs[1])
        return cost(best) * self.max_epochs / self.rungs[0]

    # --- state -------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state.update({"min_epochs": self.min_epochs, "max_epochs": self.max_epochs, "eta": self.eta})
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self.min_epochs, self.max_epochs, self.eta = state["min_epochs"], state["max_epochs"], state["eta"]
        self._index_stale = True
