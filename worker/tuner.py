"""The worker's Tuner: trials that resume from per-epoch checkpoints and warm-start from a parent.

Hyperband's only tuner-side behaviour (epochs from `tuner/epochs`, warm start from the parent
trial's checkpoint) applies whenever a trial carries those hyperparameters, so one `WorkerTuner`
serves every tuner kind (ASHA's promotions use the same conventions).
"""

from __future__ import annotations

import logging

from kt_cluster.core import compat
from kt_cluster.core.tuner import SearchTuner
from kt_cluster.worker import checkpoints

log = logging.getLogger("ktc.worker")


class WorkerTuner(compat.TunerSeam, SearchTuner):
    """Trains one trial at a time for `kt_cluster.worker.runner.Worker`."""

    def model_built(self, model, hp) -> None:
        parent = hp.values.get("tuner/trial_id")
        if parent is not None:  # Hyperband: continue from the parent trial's best epoch
            model.load_weights(self.checkpoint_path(parent))

    def run_trial(self, trial, *fit_args, **fit_kwargs) -> dict[str, list[float]]:
        """Train one trial, resuming after its last checkpointed epoch if it has one."""
        hp = trial.hyperparameters
        if "tuner/epochs" in hp.values:
            fit_kwargs["epochs"] = hp.values["tuner/epochs"]
            fit_kwargs["initial_epoch"] = hp.values["tuner/initial_epoch"]
        trial_dir = self.trial_dir(trial.trial_id)
        resumed = checkpoints.load(trial_dir)
        model = self.build_model(hp)
        if resumed is not None:
            checkpoints.restore(model, trial_dir)
            log.info("trial %s: resuming after epoch %d from its checkpoint", trial.trial_id, resumed.epoch)
            fit_kwargs["initial_epoch"] = max(fit_kwargs.get("initial_epoch", 0), resumed.epoch + 1)
        best = compat.save_best_epoch(self.oracle.objective, self.checkpoint_path(trial.trial_id))
        if resumed is not None and resumed.best_value is not None:
            best.best_value = resumed.best_value
        progress = checkpoints.ResumeCheckpoint(trial_dir, self.oracle.objective, resumed)
        fit_kwargs["callbacks"] = list(fit_kwargs.get("callbacks", [])) + [progress, best]
        if fit_kwargs.get("initial_epoch", 0) < fit_kwargs.get("epochs", 1):
            self.hypermodel.fit(hp, model, *fit_args, **fit_kwargs)
        return progress.history


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
