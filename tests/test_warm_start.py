"""A resumed or promoted trial continues the same run: weights, optimizer state, random
generators and data position are all restored (real WorkerTuner, real TensorFlow training)."""

from __future__ import annotations

import logging

import keras
import keras_tuner
import numpy as np
import pytest
from keras_tuner.src.engine import trial as trial_module

from harness import TINY, make_dataset, merge
from kt_cluster.core import schedules
from kt_cluster.core.config import from_dict
from kt_cluster.core.tuner import build_tuner
from kt_cluster.worker import checkpoints
from kt_cluster.worker.data.feed import TrainingData
from kt_cluster.worker.runner import TrialInterrupted
from kt_cluster.worker.tuner import WorkerTuner

HP = {"start_neurons": 8, "net_depth": 2, "activation": "relu", "dropout": True, "bn_after_act": False}
SPACE = {"start_neurons": {"min": 8, "max": 8, "step": 8}, "net_depth": {"min": 2, "max": 2},
         "activation": ["relu"], "dropout": True, "bn_after_act": False, "pos_weight_power": [1.0]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("warm") / "data", count=16, size=32)


def _tuner(tmp_path, data_dir, name: str, cosine_horizon: int | None = None) -> tuple[WorkerTuner, TrainingData]:
    config = from_dict(merge(TINY, {"seed": 7, "data": {"path": str(data_dir)}, "results": str(tmp_path / name),
                                    "space": SPACE}))
    tuner = build_tuner(config, class_fractions=[0.1, 0.1, 0.1], tuner_class=WorkerTuner, seed=7,
                        cosine_horizon=cosine_horizon)
    return tuner, TrainingData(config)


def _trial(trial_id: str, **extra) -> trial_module.Trial:
    hp = keras_tuner.HyperParameters()
    hp.values.update(HP, **extra)
    return trial_module.Trial(hp, trial_id=trial_id)


class StopAt(keras.callbacks.Callback):
    """Abandons training mid-epoch, as SIGTERM does (the previous epoch is checkpointed)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.stop_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.stop_epoch and batch == 1:
            raise TrialInterrupted()


class StateAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.state = checkpoints.snapshot(self.model)
        self.iterations = int(self.model.optimizer.iterations.numpy())

    def on_train_end(self, logs=None):
        self.last_rate = float(self.model.optimizer.learning_rate.numpy())


def _final_state(tuner: WorkerTuner, trial_id: str) -> list[np.ndarray]:
    return checkpoints.read_state(tuner.trial_dir(trial_id) / checkpoints.STATE)


def _assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("horizon", [None, 6], ids=["constant rate", "cosine schedule"])
def test_a_trial_interrupted_and_resumed_ends_as_one_run_straight_through(tmp_path, data_dir, horizon):
    straight, data = _tuner(tmp_path, data_dir, "straight", horizon)
    history = straight.run_trial(_trial("0"), data, epochs=4, verbose=0)

    paused, data = _tuner(tmp_path, data_dir, "paused", horizon)
    with pytest.raises(TrialInterrupted):
        paused.run_trial(_trial("0"), data, epochs=4, verbose=0, callbacks=[StopAt(epoch=2)])
    assert checkpoints.load(paused.trial_dir("0")).epoch == 1
    resumed, data = _tuner(tmp_path, data_dir, "paused", horizon)  # another worker: a fresh tuner and data
    start = StateAtStart()
    resumed_history = resumed.run_trial(_trial("0"), data, epochs=4, verbose=0, callbacks=[start])

    assert start.iterations == 2 * data.fit_inputs(7).steps  # Adam's step count came back too
    _assert_same(_final_state(straight, "0"), _final_state(resumed, "0"))  # weights, BN, Adam, dropout RNG
    np.testing.assert_allclose(history["loss"], resumed_history["loss"], rtol=1e-5)
    rate = TINY.get("learning_rate", 1e-3)  # the last epoch's rate, which the schedule sets from the compiled one
    assert start.last_rate == pytest.approx(schedules.cosine(rate, 3, horizon) if horizon else rate)


@pytest.mark.parametrize("horizon", [None, 3], ids=["constant rate", "cosine schedule"])
def test_a_promoted_trial_continues_its_parent_with_the_parents_optimizer_state(tmp_path, data_dir, caplog, horizon):
    straight, data = _tuner(tmp_path, data_dir, "straight", horizon)
    straight.run_trial(_trial("0", dropout=False), data, epochs=3, verbose=0)

    tuner, data = _tuner(tmp_path, data_dir, "promoted", horizon)
    tuner.run_trial(_trial("0", dropout=False), data, epochs=1, verbose=0)  # rung 0: one epoch
    parent_state = _final_state(tuner, "0")
    start = StateAtStart()
    child = _trial("1", dropout=False, **{"tuner/trial_id": "0", "tuner/epochs": 3, "tuner/initial_epoch": 1,
                                          "tuner/bracket": 0, "tuner/round": 1})
    with caplog.at_level(logging.WARNING):
        tuner.run_trial(child, data, epochs=99, verbose=0, callbacks=[start])

    assert not [r for r in caplog.records if "Skipping variable loading" in r.getMessage()]
    assert start.iterations == data.fit_inputs(7).steps  # the parent's step count, not 0
    _assert_same(start.state, parent_state)  # weights and Adam's moments as the parent left them
    # Without dropout nothing else is random: the two rungs make one run of three epochs.
    _assert_same(_final_state(straight, "0"), _final_state(tuner, "1"))


def test_a_checkpoint_of_another_model_is_refused_naming_the_file(tmp_path, data_dir):
    tuner, data = _tuner(tmp_path, data_dir, "other")
    with pytest.raises(TrialInterrupted):
        tuner.run_trial(_trial("0"), data, epochs=3, verbose=0, callbacks=[StopAt(epoch=1)])
    with pytest.raises(checkpoints.CheckpointError, match=r"resume\.npz: .*another model"):
        tuner.run_trial(_trial("0", net_depth=1), data, epochs=3, verbose=0)
