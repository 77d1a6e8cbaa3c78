"""The keras-tuner Tuner both roles build from one search config.

The chief builds it to own the oracle (its class wrapped by the chief's mixin); a worker builds
it to train trials, then swaps the oracle for a `ChiefClient`. One `ClusterTuner` serves every
tuner kind: Hyperband's only tuner-side behaviour (epochs from `tuner/epochs`, warm start from
the parent trial's checkpoint) applies whenever a trial carries those hyperparameters.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import keras_tuner
from keras_tuner.src.engine import tuner_utils

from worker import checkpoints
from worker.asha import ASHAOracle
from worker.config import SearchConfig
from worker.hypermodel import build_hypermodel

log = logging.getLogger("ktc.worker")

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
        return common | {"max_trials": config.max_trials, "min_epochs": config.min_epochs,
                         "max_epochs": config.max_epochs, "eta": config.hyperband_factor}
    return common | {"max_trials": config.max_trials}


def make_oracle(config: SearchConfig, wrap: Callable[[type], type] | None = None) -> keras_tuner.Oracle:
    cls = ORACLES[config.tuner]
    oracle = (wrap(cls) if wrap else cls)(**oracle_kwargs(config))
    oracle.max_trials = config.max_trials
    return oracle


class ClusterTuner(keras_tuner.Tuner):
    """A Tuner whose trials resume from per-epoch checkpoints; its state lives on the chief."""

    def save(self) -> None:
        """Nothing to save here: the chief's journal holds the search state."""

    def reload(self) -> None:
        """Nothing to reload: a worker asks the chief."""

    def trial_dir(self, trial_id: str) -> Path:
        return Path(self.get_trial_dir(trial_id))

    def _build_hypermodel(self, hp):
        model = super()._build_hypermodel(hp)
        parent = hp.values.get("tuner/trial_id")
        if parent is not None:  # Hyperband: continue from the parent trial's best epoch
            model.load_weights(self._get_checkpoint_fname(parent))
        return model

    def run_trial(self, trial, *fit_args, **fit_kwargs) -> dict[str, list[float]]:
        """Train one trial, resuming after its last checkpointed epoch if it has one."""
        hp = trial.hyperparameters
        if "tuner/epochs" in hp.values:
            fit_kwargs["epochs"] = hp.values["tuner/epochs"]
            fit_kwargs["initial_epoch"] = hp.values["tuner/initial_epoch"]
        trial_dir = self.trial_dir(trial.trial_id)
        resumed = checkpoints.load(trial_dir)
        model = self._try_build(hp)
        if resumed is not None:
            checkpoints.restore(model, trial_dir)
            log.info("trial %s: resuming after epoch %d from its checkpoint", trial.trial_id, resumed.epoch)
            fit_kwargs["initial_epoch"] = max(fit_kwargs.get("initial_epoch", 0), resumed.epoch + 1)
        best = tuner_utils.SaveBestEpoch(self.oracle.objective, self._get_checkpoint_fname(trial.trial_id))
        if resumed is not None and resumed.best_value is not None:
            best.best_value = resumed.best_value
        progress = checkpoints.ResumeCheckpoint(trial_dir, self.oracle.objective, resumed)
        fit_kwargs["callbacks"] = list(fit_kwargs.get("callbacks", [])) + [progress, best]
        if fit_kwargs.get("initial_epoch", 0) < fit_kwargs.get("epochs", 1):
            self.hypermodel.fit(hp, model, *fit_args, **fit_kwargs)
        return progress.history


def build_tuner(config: SearchConfig, wrap_oracle: Callable[[type], type] | None = None,
                class_fractions: list[float] | None = None) -> ClusterTuner:
    results = Path(config.results)
    results.mkdir(parents=True, exist_ok=True)
    return ClusterTuner(
        oracle=make_oracle(config, wrap_oracle),
        hypermodel=build_hypermodel(config, class_fractions=class_fractions),
        directory=str(results),
        project_name=config.search_id,
        overwrite=False,
    )


def configure_devices(threads: int | None = None) -> list[str]:
    """Use the pod's GPUs with memory growth, so TensorFlow does not grab all memory up front.

    `threads` caps TensorFlow's CPU thread pools: processes sharing a machine (`ktc local`)
    would otherwise each start one thread per core and spend their time switching.
    """
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    return [gpu.name for gpu in gpus]

