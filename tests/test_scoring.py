"""A trial's score is the best mean of consecutive epochs: one lucky epoch does not win, the
chief ranks by it, and the worker's best checkpoint is the epoch that ends that window."""

import keras
import keras_tuner
import numpy as np
import pytest

from kt_cluster.core.scoring import WindowTracker, best_window, window_scores
from kt_cluster.worker import checkpoints

from oracle_support import Status, make_oracle


def test_window_scores_average_the_epochs_ending_at_each_epoch():
    assert window_scores([0.3, 0.0, 0.6, 0.3], 2) == pytest.approx([0.3, 0.15, 0.3, 0.45])
    assert window_scores([0.2, 0.4], 3) == pytest.approx([0.2, 0.3])
    assert window_scores([], 3) == []
    with pytest.raises(ValueError):
        window_scores([0.1], 0)


def test_a_single_spike_loses_to_a_steady_curve():
    spiky = [0.02, 0.05, 0.37, 0.09, 0.08, 0.1]
    steady = [0.1, 0.2, 0.25, 0.27, 0.28, 0.27]
    assert max(spiky) > max(steady)  # keras-tuner's rule prefers the spike
    assert best_window(spiky, 3)[0] < best_window(steady, 3)[0]


def test_best_window_names_the_epoch_that_ends_it_and_honours_direction():
    assert best_window([0.1, 0.5, 0.6, 0.2], 2) == (pytest.approx(0.55), 2)
    assert best_window([0.9, 0.2, 0.3, 0.8], 2, direction="min") == (pytest.approx(0.25), 2)
    assert best_window([0.4, 0.4], 1) == (0.4, 0)  # the first of equals
    assert best_window([0.3, 0.1, 0.7], 1) == (0.7, 2)  # window 1: the best epoch, exactly
    assert best_window([], 3) is None


def test_only_full_windows_count_unless_the_trial_is_shorter_than_one():
    curve = [0.9, 0.0, 0.0, 0.3, 0.35, 0.4]
    assert best_window(curve, 3) == (pytest.approx(0.35), 5)  # not a window of the lone 0.9
    assert best_window([0.9, 0.1], 3) == (pytest.approx(0.5), 1)  # all it has: the mean, at the end
    tracker = WindowTracker(3)
    assert [tracker.add(v) for v in curve] == [True, True, True, False, False, True]


def test_tracker_resumes_from_the_history_before_a_restart():
    whole = WindowTracker(3)
    flags = [whole.add(v) for v in [0.1, 0.3, 0.5, 0.2, 0.6]]
    resumed = WindowTracker(3, history=[0.1, 0.3, 0.5])
    assert [resumed.add(v) for v in [0.2, 0.6]] == flags[3:]
    assert resumed.best == pytest.approx(whole.best)


def _model() -> keras.Model:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    checkpoints.build_optimizer(model)
    return model


def _epochs(callback, model, first, values):
    """Epochs `first`, ... with these objective values; the kernel holds the epoch's number."""
    callback.set_model(model)
    for epoch, value in enumerate(values, start=first):
        model.layers[0].kernel.assign(np.full((2, 1), float(epoch)))
        callback.on_epoch_end(epoch, {"val_f1": value})


def _saved_epoch(path) -> float:
    model = _model()
    checkpoints.restore_best_epoch(model, path)
    return float(model.layers[0].kernel.numpy()[0, 0])


def test_worker_checkpoint_holds_the_weights_at_the_end_of_the_best_window(tmp_path):
    objective = keras_tuner.Objective("val_f1", "max")
    model, best = _model(), tmp_path / "checkpoint.weights.h5"
    callback = checkpoints.ResumeCheckpoint(tmp_path, objective, None, best, score_window=2)
    # full windows from epoch 1 on: 0.5, 0.45, 0.25, 0.55, 0.35 -> the best ends at epoch 4
    _epochs(callback, model, 0, [0.1, 0.9, 0.0, 0.5, 0.6, 0.1])
    callback.finish(model, complete=True)
    assert _saved_epoch(best) == 4.0


def test_a_resumed_trial_keeps_the_best_window_from_before_its_restart(tmp_path):
    objective = keras_tuner.Objective("val_f1", "max")
    model, best = _model(), tmp_path / "checkpoint.weights.h5"
    first = checkpoints.ResumeCheckpoint(tmp_path, objective, None, best, score_window=2)
    _epochs(first, model, 0, [0.1, 0.9, 0.0])  # best window so far: epochs 0-1 (0.5)
    first.finish(model, complete=False)  # interrupted
    resumed = checkpoints.load(tmp_path)
    assert resumed.epoch == 2 and resumed.best_value == pytest.approx(0.5)
    again = checkpoints.ResumeCheckpoint(tmp_path, objective, resumed, best, score_window=2)
    _epochs(again, model, 3, [0.3, 0.2])  # windows 0.15 and 0.25: worse than 0.5
    again.finish(model, complete=True)
    assert _saved_epoch(best) == 1.0  # a tracker that forgot the history would have taken epoch 3
    assert again.window.best == pytest.approx(0.5)


def test_chief_scores_and_ranks_trials_by_the_window(tmp_path):
    oracle = make_oracle(tmp_path)
    oracle.score_window = 3
    scores = {}
    for name, curve in {"spiky": [0.02, 0.05, 0.37, 0.09, 0.08], "steady": [0.1, 0.2, 0.25, 0.27, 0.28]}.items():
        trial = oracle.create_trial("w0", "s0")
        for step, value in enumerate(curve):
            oracle.update_trial(trial.trial_id, {"val_f1": value}, step=step, tuner_id="w0", session="s0")
        trial.status = Status.COMPLETED
        oracle.end_trial(trial, tuner_id="w0", session="s0")
        scores[name] = oracle.trials[trial.trial_id]
    assert scores["steady"].score == pytest.approx((0.25 + 0.27 + 0.28) / 3)
    assert scores["steady"].best_step == 4
    assert scores["spiky"].score == pytest.approx((0.37 + 0.09 + 0.08) / 3)
    assert oracle.get_best_trials(1)[0].trial_id == scores["steady"].trial_id
