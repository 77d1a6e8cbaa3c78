"""The keras-tuner Tuner both roles build from one search config.

The chief builds it to own the oracle (its class wrapped by the chief's mixin) and to write the
results; a worker builds a `kt_cluster.worker.tuner.WorkerTuner` from it to train trials, then swaps
the oracle for a `ChiefClient`. The search state never lives in the Tuner: the chief's journal
holds it, so `save` and `reload` do nothing.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import keras_tuner

from kt_cluster.core.asha import ASHAOracle
from kt_cluster.core.budget import first_rung
from kt_cluster.core.config import SearchConfig
from kt_cluster.core.hypermodel import build_hypermodel, space_cost
from kt_cluster.core.sampler import ModelSampler

ORACLES: dict[str, type] = {
    "hyperband": keras_tuner.oracles.HyperbandOracle,
    "bayesian": keras_tuner.oracles.BayesianOptimizationOracle,
    "random": keras_tuner.oracles.RandomSearchOracle,
    "asha": ASHAOracle,
}


def oracle_kwargs(config: SearchConfig) -> dict[str, Any]:
    common = {
        "objective": keras_tuner.Objective(config.objective, direction=config.direction),
        "seed": config.seed,
        "max_retries_per_trial": config.max_retries_per_trial,
        "max_consecutive_failed_trials": config.max_consecutive_failed_trials,
    }
    if config.tuner == "hyperband":
        # keras-tuner's Hyperband has no max_trials; we cap the trial count on top of it.
        return common | {"max_epochs": config.max_epochs, "factor": config.hyperband_factor,
                         "hyperband_iterations": config.hyperband_iterations}
    if config.tuner == "asha":
        eta = config.hyperband_factor
        min_epochs = first_rung(config)
        sampler = ModelSampler(cost=space_cost(config)) if config.sampler == "model" else None
        return common | {"max_trials": config.max_trials, "min_epochs": min_epochs,
                         "max_epochs": config.max_epochs, "eta": eta, "sampler": sampler}
    return common | {"max_trials": config.max_trials}


def make_oracle(config: SearchConfig, wrap: Callable[[type], type] | None = None) -> keras_tuner.Oracle:
    cls = ORACLES[config.tuner]
    oracle = (wrap(cls) if wrap else cls)(**oracle_kwargs(config))
    oracle.max_trials = config.max_trials
    oracle.max_worker_seconds = config.max_worker_hours * 3600 if config.max_worker_hours else None
    oracle.metric_directions = MappingProxyType(dict(config.metric_directions))
    return oracle


class SearchTuner(keras_tuner.Tuner):
    """A Tuner whose state lives on the chief."""

    def save(self) -> None:
        """Nothing to save here: the chief's journal holds the search state."""

    def reload(self) -> None:
        """Nothing to reload: a worker asks the chief."""

    def trial_dir(self, trial_id: str) -> Path:
        return Path(self.get_trial_dir(trial_id))


def build_tuner(config: SearchConfig, wrap_oracle: Callable[[type], type] | None = None,
                class_fractions: list[float] | None = None,
                tuner_class: type[SearchTuner] = SearchTuner, **tuner_kwargs: Any) -> SearchTuner:
    """`tuner_kwargs` go to `tuner_class` (such as keras-tuner's `distribution_strategy`)."""
    results = Path(config.results)
    results.mkdir(parents=True, exist_ok=True)
    return tuner_class(
        oracle=make_oracle(config, wrap_oracle),
        hypermodel=build_hypermodel(config, class_fractions=class_fractions),
        directory=str(results),
        project_name=config.search_id,
        overwrite=False,
        **tuner_kwargs,
    )
