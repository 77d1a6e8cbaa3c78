"""Learning-rate schedules that follow a trial's epoch in the search, not its own fit call.

A trial of a successive-halving search trains in pieces: a rung-0 trial its first epochs, each
promotion the next ones from its parent's checkpoint, a resumed trial from its last checkpointed
epoch. A schedule that restarted with every `fit` would anneal every piece on its own; this one
is a function of the absolute epoch (the `epoch` Keras passes, which counts from `initial_epoch`)
and of the search's horizon, the most epochs any configuration can train (`max_epochs` under
asha and hyperband, `epochs` under bayesian and random). Every piece of a configuration's
training therefore lies on one curve, and a configuration carried to the horizon ends annealed.

`cosine` decays Adam's rate along half a cosine from its configured (or sampled) value at epoch 0
to `COSINE_FLOOR` of it at the horizon: at the end of training, steps small enough to settle in a
minimum rather than swing between epochs, as a constant rate does on a few dozen pages.
"""

from __future__ import annotations

import math

import keras

COSINE_FLOOR = 0.05  # the last epoch's rate, as a share of the first's


def cosine(base: float, epoch: int, horizon: int) -> float:
    """The rate of 0-based `epoch` of a training that can last `horizon` epochs."""
    progress = min(max(epoch, 0), horizon) / horizon
    return base * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


class EpochCosine(keras.callbacks.Callback):
    """Sets the optimizer's rate at the start of each epoch to `cosine(base, epoch, horizon)`.

    `base` is the rate the model was compiled with, read before any checkpoint is restored (a
    checkpoint holds the rate of its last epoch, not the first). Unlike Keras'
    `LearningRateScheduler` it adds nothing to the epoch's logs, which are the trial's metrics.
    """

    def __init__(self, base: float, horizon: int):
        super().__init__()
        if horizon < 1:
            raise ValueError(f"a schedule's horizon must be at least one epoch, got {horizon}")
        self.base, self.horizon = base, horizon

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.model.optimizer.learning_rate = cosine(self.base, epoch, self.horizon)


def compiled_rate(model: keras.Model) -> float | None:
    """The model's optimizer's constant learning rate; None when it has no optimizer or a
    `LearningRateSchedule` of its own, which a search schedule must not override."""
    optimizer = model.optimizer
    if optimizer is None:
        return None
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # mixed precision wraps the optimizer
    if isinstance(getattr(inner, "_learning_rate", None), keras.optimizers.schedules.LearningRateSchedule):
        return None
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
