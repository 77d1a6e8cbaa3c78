"""The worker's Tuner: trials that resume exactly from per-epoch checkpoints and warm-start from a parent.

Hyperband's only tuner-side behaviour (epochs from `tuner/epochs`, warm start from the parent
trial's checkpoint) applies whenever a trial carries those hyperparameters, so one `WorkerTuner`
serves every tuner kind (ASHA's promotions use the same conventions).

A trial is reproducible: its initial weights and random layers are seeded from (search seed,
trial id), and its training examples come in the order of `kt_cluster.worker.data.order` for the
search seed. A resumed trial restores weights, optimizer state and random generator states and
starts its data stream at its next epoch, so it trains as if it had never stopped; a promoted
trial starts from its parent's best epoch (the end of its best window of `score_window`
epochs, as the chief scores it), optimizer state included. Under `lr_schedule: cosine` every
piece sets its learning rate from the epoch it is at in its configuration's training
(`kt_cluster.core.schedules`), so the pieces make one schedule.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import zlib
from pathlib import Path

import keras
from keras_tuner import errors as kt_errors

from kt_cluster.core import compat, schedules
from kt_cluster.core.config import SearchConfig
from kt_cluster.core.tuner import SearchTuner
from kt_cluster.worker import checkpoints
from kt_cluster.worker.data.feed import TrainingData

log = logging.getLogger("ktc.worker")


def search_seed(config: SearchConfig) -> int:
    """The search's seed: `seed`, or one derived from `search_id` (the same on every worker)."""
    return config.seed if config.seed is not None else zlib.crc32(config.search_id.encode())


def trial_seed(seed: int, trial_id: str) -> int:
    return zlib.crc32(f"{seed}/{trial_id}".encode())


class WorkerTuner(compat.TunerSeam, SearchTuner):
    """Trains one trial at a time for `kt_cluster.worker.runner.Worker`."""

    def __init__(self, *args, seed: int = 0, score_window: int = 1, cosine_horizon: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.score_window = score_window  # the chief's rule for a trial's score, which the best checkpoint follows
        self.cosine_horizon = cosine_horizon  # None: the rate the model was compiled with, throughout

    def build_model(self, hp, seed: int) -> keras.Model:
        """The trial's compiled model, on a fresh Keras session, under the distribution strategy
        if there is one, with its optimizer built (so state can be loaded into it, and the first
        step traces faster than when the optimizer creates its variables inside the trace)."""
        keras.backend.clear_session()
        gc.collect()
        keras.utils.set_random_seed(seed)
        strategy = self.distribution_strategy
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            model = self.hypermodel.build(hp)
            if not isinstance(model, keras.Model):
                raise kt_errors.FatalTypeError(f"the model builder returned {type(model).__name__}, not a keras.Model")
            checkpoints.build_optimizer(model)
        return model

    def run_trial(self, trial, data: TrainingData, epochs: int, callbacks=(), **fit_kwargs) -> dict[str, list[float]]:
        """Train one trial, resuming after its last checkpointed epoch if it has one."""
        hp = trial.hyperparameters
        initial_epoch = 0
        if "tuner/epochs" in hp.values:
            epochs, initial_epoch = hp.values["tuner/epochs"], hp.values["tuner/initial_epoch"]
        trial_dir = self.trial_dir(trial.trial_id)
        resumed = checkpoints.load(trial_dir)
        model = self.build_model(hp, trial_seed(self.seed, trial.trial_id))
        schedule = self._schedule(model)  # before a checkpoint replaces the compiled rate with its last one
        parent = hp.values.get("tuner/trial_id")
        if resumed is not None:
            checkpoints.restore(model, trial_dir)
            log.info("trial %s: resuming after epoch %d from its checkpoint", trial.trial_id, resumed.epoch)
            initial_epoch = max(initial_epoch, resumed.epoch + 1)
        elif parent is not None:  # Hyperband, asha: continue from the parent trial's best epoch
            checkpoints.restore_best_epoch(model, Path(self.checkpoint_path(parent)))
        progress = checkpoints.ResumeCheckpoint(trial_dir, self.oracle.objective, resumed,
                                                Path(self.checkpoint_path(trial.trial_id)), self.score_window)
        complete = False
        try:
            if initial_epoch < epochs:
                inputs = data.fit_inputs(self.seed, initial_epoch)
                self.hypermodel.fit(hp, model, inputs.train, validation_data=inputs.val, epochs=epochs,
                                    initial_epoch=initial_epoch, steps_per_epoch=inputs.steps,
                                    validation_steps=inputs.val_steps, callbacks=[*schedule, *callbacks, progress],
                                    shuffle=False, **fit_kwargs)  # the order is the stream's
            complete = True
        finally:
            progress.finish(model, complete)
        return progress.history

    def _schedule(self, model: keras.Model) -> list[keras.callbacks.Callback]:
        """The learning-rate schedule's callback, if one is configured and the model's rate is constant."""
        base = schedules.compiled_rate(model) if self.cosine_horizon else None
        return [] if base is None else [schedules.EpochCosine(base, self.cosine_horizon)]
