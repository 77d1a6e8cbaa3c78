"""`jit_compile` (XLA) and `mixed_precision` config options reach the compiled models."""

from __future__ import annotations

import logging
import sys
import textwrap

import keras
import numpy as np
import keras_tuner
import pytest
import tensorflow as tf

from kt_cluster.core.config import ConfigError, from_dict, load
from kt_cluster.core.hypermodel import apply_precision_policy, build_hypermodel

SMALL = {"data": {"image_size": 16}, "space": {"net_depth": {"min": 2, "max": 2},
                                              "start_neurons": {"min": 4, "max": 4, "step": 4}}}


@pytest.fixture
def compile_calls(monkeypatch):
    calls = []
    original = keras.Model.compile

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", spy)
    return calls


@pytest.fixture
def float32_after():
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_jit_compile_false_from_the_config_file_compiles_with_jit_compile_false(tmp_path, compile_calls):
    path = tmp_path / "search.yaml"
    path.write_text("jit_compile: false\ndata: {image_size: 16}\n")
    model = build_hypermodel(load(path, env={}))(keras_tuner.HyperParameters())
    assert compile_calls[-1]["jit_compile"] is False and model.jit_compile is False


def test_jit_compile_true_turns_xla_on(compile_calls):
    model = build_hypermodel(from_dict(dict(SMALL, jit_compile=True)))(keras_tuner.HyperParameters())
    assert compile_calls[-1]["jit_compile"] is True and model.jit_compile is True


def test_jit_compile_unset_leaves_keras_auto(compile_calls):
    build_hypermodel(from_dict(SMALL))(keras_tuner.HyperParameters())
    assert "jit_compile" not in compile_calls[-1]


def test_jit_compile_applies_to_a_users_hypermodel(tmp_path, monkeypatch):
    (tmp_path / "ktc_tmp_xla_model.py").write_text(textwrap.dedent("""
        import keras
        def build(hp):
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
            model.compile(optimizer="adam", loss="mse", jit_compile=True)
            return model
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = from_dict({"hypermodel": "ktc_tmp_xla_model:build", "jit_compile": False})
    assert build_hypermodel(config)(keras_tuner.HyperParameters()).jit_compile is False
    sys.modules.pop("ktc_tmp_xla_model", None)


@pytest.mark.parametrize("text, field", [("jit_compile: sometimes\n", "jit_compile"),
                                         ("mixed_precision: 1\n", "mixed_precision")])
def test_invalid_values_name_the_field(tmp_path, text, field):
    path = tmp_path / "search.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{field}:"):
        load(path, env={})


def test_environment_sets_both_options():
    config = load(None, env={"KTC_JIT_COMPILE": "false", "KTC_MIXED_PRECISION": "true"})
    assert config.jit_compile is False and config.mixed_precision is True


def test_mixed_precision_is_ignored_with_a_warning_on_cpu(caplog, float32_after, monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    with caplog.at_level(logging.WARNING):
        policy = apply_precision_policy(from_dict({"mixed_precision": True}))
    assert policy == "float32"
    assert any("mixed_precision" in r.message and "ignored" in r.message for r in caplog.records)


def test_mixed_precision_on_gpu_sets_mixed_float16_with_a_float32_output(monkeypatch, float32_after):
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")])
    model = build_hypermodel(from_dict(dict(SMALL, mixed_precision=True)))(keras_tuner.HyperParameters())
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    assert model.get_layer("down0_conv1").compute_dtype == "float16"
    assert model.output.dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_mixed_precision_off_by_default(float32_after):
    assert apply_precision_policy(from_dict({})) == "float32"


# --- the real path: a worker trial in mixed precision with XLA ---------------------------------

def _worker_trial(tmp_path, **options):
    import keras_tuner as kt
    from keras_tuner.src.engine import trial as trial_module

    from harness import TINY, make_dataset, merge
    from kt_cluster.core.tuner import build_tuner
    from kt_cluster.worker.data.feed import TrainingData
    from kt_cluster.worker.tuner import WorkerTuner

    data = make_dataset(tmp_path / "data", count=16, size=32)
    config = from_dict(merge(TINY, {"seed": 3, "results": str(tmp_path / "results"), "data": {"path": str(data)},
                                    **options}))
    tuner = build_tuner(config, class_fractions=[0.1, 0.1, 0.1], tuner_class=WorkerTuner, seed=3)
    hp = kt.HyperParameters()
    hp.values.update({"start_neurons": 8, "net_depth": 2, "activation": "relu", "dropout": False, "bn_after_act": False})
    return tuner, trial_module.Trial(hp, trial_id="0"), TrainingData(config)


class Seen(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        from kt_cluster.worker import checkpoints

        self.state = checkpoints.snapshot(self.model)

    def on_train_end(self, logs=None):
        self.jit_compile = self.model.jit_compile
        self.compute_dtype = self.model.get_layer("down0_conv1").compute_dtype
        self.optimizer = type(self.model.optimizer).__name__


def test_a_resumed_mixed_precision_trial_keeps_its_loss_scale(tmp_path, float32_after, monkeypatch):
    """float16 kernels run on the CPU too (slowly): the worker's checkpoints carry the loss-scale
    optimizer's state (the mixed_float16 policy itself needs a GPU, so it is granted here)."""
    from kt_cluster.core import hypermodel
    from kt_cluster.worker import checkpoints
    from kt_cluster.worker.runner import TrialInterrupted

    monkeypatch.setattr(hypermodel, "gpu_visible", lambda: True)
    tuner, trial, data = _worker_trial(tmp_path, mixed_precision=True)

    class StopInEpoch1(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1:
                raise TrialInterrupted()

    with pytest.raises(TrialInterrupted):
        tuner.run_trial(trial, data, epochs=2, verbose=0, callbacks=[StopInEpoch1()])
    saved = checkpoints.read_state(tuner.trial_dir("0") / checkpoints.STATE)
    seen = Seen()
    history = tuner.run_trial(trial, data, epochs=2, verbose=0, callbacks=[seen])
    assert seen.compute_dtype == "float16" and seen.optimizer == "LossScaleOptimizer"
    assert np.isfinite(history["loss"]).all() and len(history["loss"]) == 2
    # Resumed with every variable of epoch 0: weights, Adam's moments, the loss scale and its counter.
    assert len(seen.state) == len(saved) and all(np.array_equal(a, b) for a, b in zip(seen.state, saved))


def _gpus() -> list:
    return tf.config.list_physical_devices("GPU")


@pytest.mark.skipif(not _gpus(), reason="no GPU visible to TensorFlow: the real mixed-precision and XLA path needs one")
def test_on_a_gpu_a_worker_trial_trains_in_mixed_precision_with_xla(tmp_path, float32_after):
    tuner, trial, data = _worker_trial(tmp_path, mixed_precision=True, jit_compile=True)
    seen = Seen()
    history = tuner.run_trial(trial, data, epochs=2, verbose=0, callbacks=[seen])
    assert seen.jit_compile is True and seen.compute_dtype == "float16" and seen.optimizer == "LossScaleOptimizer"
    assert np.isfinite(history["loss"]).all() and np.isfinite(history["val_f1"]).all()
    assert (tuner.trial_dir("0") / "checkpoint.weights.h5").exists()
