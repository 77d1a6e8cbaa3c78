"""`jit_compile` (XLA) and `mixed_precision` config options reach the compiled models."""

from __future__ import annotations

import logging
import sys
import textwrap

import keras
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
