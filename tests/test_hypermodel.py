"""The default search space, its net_depth clamp, compiled models and `--hypermodel` loading."""

from __future__ import annotations

import logging
import sys
import textwrap

import keras
import keras_tuner
import numpy as np
import pytest

from kt_cluster.core.config import ConfigError, FloatRange, SearchConfig
from kt_cluster.core.hypermodel import (HypermodelError, build_hypermodel, default_space_builder, load_hypermodel,
                                        space_cost)
from kt_cluster.core.losses import WeightedBinaryCrossentropy

MODULE = "ktc_tmp_hypermodel"


def _config(image_size: int = 16, **space) -> SearchConfig:
    config = SearchConfig()
    config.data.image_size = image_size
    for name, value in space.items():
        setattr(config.space, name, value)
    return config


def _space(builder) -> dict[str, keras_tuner.engine.hyperparameters.HyperParameter]:
    hp = keras_tuner.HyperParameters()
    builder(hp)
    return {p.name: p for p in hp.space}


def test_default_space_is_the_articles_hyperparameters_and_the_class_weights_power():
    space = _space(default_space_builder(SearchConfig()))

    assert list(space) == ["start_neurons", "net_depth", "dropout", "bn_after_act", "activation", "pos_weight_power"]
    start, depth = space["start_neurons"], space["net_depth"]
    assert isinstance(start, keras_tuner.engine.hyperparameters.Int)
    assert (start.min_value, start.max_value, start.step) == (16, 128, 16)
    assert isinstance(depth, keras_tuner.engine.hyperparameters.Int)
    assert (depth.min_value, depth.max_value, depth.step) == (2, 6, 1)
    for name in ("dropout", "bn_after_act"):
        assert isinstance(space[name], keras_tuner.engine.hyperparameters.Boolean)
        assert space[name].default is False
    activation = space["activation"]
    assert isinstance(activation, keras_tuner.engine.hyperparameters.Choice)
    assert activation.values == ["mish", "elu", "lrelu"] and activation.ordered is False
    power = space["pos_weight_power"]
    assert isinstance(power, keras_tuner.engine.hyperparameters.Choice)
    assert power.values == [0.0, 0.5] and power.ordered is True


def test_default_batch_norm_momentum_is_0_9_and_two_momenta_are_searched():
    hp = keras_tuner.HyperParameters()
    model = default_space_builder(_config(image_size=16))(hp)
    assert "bn_momentum" not in hp.values
    assert {layer.momentum for layer in _layers(model, keras.layers.BatchNormalization)} == {0.9}

    config = _config(image_size=16)
    config.space.bn_momentum = [0.99, 0.9]
    momentum = _space(default_space_builder(config))["bn_momentum"]
    assert isinstance(momentum, keras_tuner.engine.hyperparameters.Choice)
    assert momentum.values == [0.99, 0.9] and momentum.ordered is False


@pytest.mark.parametrize("value", [0.99, 0.9])
def test_the_sampled_batch_norm_momentum_reaches_every_batch_norm_layer(value):
    hp = keras_tuner.HyperParameters()
    hp.values["bn_momentum"] = value
    model = default_space_builder(_config(image_size=16, bn_momentum=[0.99, 0.9]))(hp)

    norms = _layers(model, keras.layers.BatchNormalization)
    assert norms and {layer.momentum for layer in norms} == {value}


def test_one_batch_norm_momentum_is_fixed_and_not_searched():
    config = _config(image_size=16)
    config.space.bn_momentum = [0.8]
    hp = keras_tuner.HyperParameters()
    model = default_space_builder(config)(hp)

    assert "bn_momentum" not in hp.values
    assert {layer.momentum for layer in _layers(model, keras.layers.BatchNormalization)} == {0.8}


def test_net_depth_max_is_clamped_to_the_image_size_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="kt_cluster.core.hypermodel"):
        builder = default_space_builder(_config(image_size=16))
        hp = keras_tuner.HyperParameters()
        builder(hp)
        hp.values["net_depth"] = 5  # the deepest clamped value still builds
        model = builder(hp)

    assert _space(builder)["net_depth"].max_value == 5
    assert len(_layers(model, keras.layers.MaxPooling2D)) == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "net_depth" in warnings[0].getMessage()


def test_net_depth_min_too_deep_for_the_image_is_a_config_error():
    config = _config(image_size=12)  # 12 -> 6 -> 3: at most depth 3
    config.space.net_depth.min, config.space.net_depth.max = 4, 5

    with pytest.raises(ConfigError, match="space.net_depth.min.*maximum depth that fits is 3"):
        default_space_builder(config)


def test_disabled_booleans_are_fixed_false_and_not_searched():
    builder = default_space_builder(_config(dropout=False, bn_after_act=False))
    hp = keras_tuner.HyperParameters()
    model = builder(hp)

    assert "dropout" not in hp.values and "bn_after_act" not in hp.values
    assert not _layers(model, keras.layers.Dropout)


def test_built_model_matches_the_data_config():
    config = _config(image_size=16)
    config.data.channels, config.data.classes = 1, ["table_number", "stamp"]

    model = default_space_builder(config)(keras_tuner.HyperParameters())

    assert model.input_shape == (None, 16, 16, 1)
    assert model.output_shape == (None, 16, 16, 2)
    assert float(model.optimizer.learning_rate) == pytest.approx(config.learning_rate)


def test_compiled_model_logs_f1_precision_recall_iou_for_validation():
    model = default_space_builder(_config(image_size=16))(keras_tuner.HyperParameters())
    model.run_eagerly = True  # one tiny step; graph mode is covered in test_unet
    rng = np.random.default_rng(0)
    images = rng.random((2, 16, 16, 3), dtype=np.float32)
    masks = (rng.random((2, 16, 16, 3)) > 0.8).astype("float32")

    history = model.fit(images, masks, validation_data=(images, masks), batch_size=2, epochs=1, verbose=0)

    assert {"val_f1", "val_precision", "val_recall", "val_iou"} <= set(history.history)


@pytest.mark.parametrize("fractions,expected", [(None, [1.0, 1.0, 1.0]), ([0.5, 0.1, 0.0], [1.0, 9.0, 100.0])])
def test_loss_pos_weights_come_from_class_fractions(fractions, expected):
    model = default_space_builder(_config(pos_weight_power=[1.0]), class_fractions=fractions)(
        keras_tuner.HyperParameters())

    assert isinstance(model.loss, WeightedBinaryCrossentropy)
    assert model.loss.pos_weights == pytest.approx(expected)


@pytest.mark.parametrize("power, expected", [(0.0, [1.0, 1.0, 1.0]), (0.5, [1.0, 3.0, 10.0]), (1.0, [1.0, 9.0, 100.0])])
def test_the_sampled_power_sets_the_class_weights(power, expected):
    hp = keras_tuner.HyperParameters()
    hp.values["pos_weight_power"] = power
    model = default_space_builder(_config(), class_fractions=[0.5, 0.1, 0.0])(hp)

    assert model.loss.pos_weights == pytest.approx(expected)


@pytest.mark.parametrize("space", [{"pos_weight_power": [0.5]}, {"loss": ["bce_dice"]}])
def test_the_class_weights_power_is_not_searched_when_fixed_or_without_weighted_bce(space):
    hp = keras_tuner.HyperParameters()
    model = default_space_builder(_config(**space), class_fractions=[0.5, 0.1, 0.0])(hp)

    assert "pos_weight_power" not in {p.name for p in hp.space}
    if "pos_weight_power" in space:
        assert model.loss.pos_weights == pytest.approx([1.0, 3.0, 10.0])


def test_class_fractions_must_match_the_classes():
    with pytest.raises(ValueError, match="class_fractions"):
        default_space_builder(_config(), class_fractions=[0.1])


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's hypermodel module on sys.path, plus one whose own import fails."""
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent("""
        NOT_CALLABLE = 3

        def model_builder(hp):
            return "built"
    """))
    (tmp_path / f"{MODULE}_broken.py").write_text("import ktc_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield MODULE
    for name in (MODULE, f"{MODULE}_broken"):
        sys.modules.pop(name, None)


def test_load_hypermodel_returns_the_named_function(user_module):
    builder = load_hypermodel(f"{user_module}:model_builder")

    assert builder(keras_tuner.HyperParameters()) == "built"


@pytest.mark.parametrize("spec,reason", [
    ("no_colon", "must look like package.module:function"),
    (":model_builder", "must look like package.module:function"),
    ("ktc_no_such_module:model_builder", "module 'ktc_no_such_module' not found"),
    (f"{MODULE}:missing", f"module '{MODULE}' has no attribute 'missing'"),
    (f"{MODULE}:NOT_CALLABLE", "'NOT_CALLABLE' is not callable (got int)"),
    (f"{MODULE}_broken:model_builder", "failed: No module named 'ktc_missing_dependency'"),
])
def test_load_hypermodel_errors_name_the_spec_and_the_reason(user_module, spec, reason):
    with pytest.raises(HypermodelError) as error:
        load_hypermodel(spec)

    assert isinstance(error.value, ValueError)
    assert str(error.value).startswith(f"hypermodel {spec!r}: ")
    assert reason in str(error.value)


def test_build_hypermodel_prefers_the_configured_function(user_module):
    config = _config()
    config.hypermodel = f"{user_module}:model_builder"

    assert build_hypermodel(config)(keras_tuner.HyperParameters()) == "built"


def test_build_hypermodel_defaults_to_the_unet_space():
    model = build_hypermodel(_config())(keras_tuner.HyperParameters())

    assert isinstance(model, keras.Model) and isinstance(model.loss, WeightedBinaryCrossentropy)


def _layers(model: keras.Model, kind: type) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, kind)]


def test_the_loss_and_learning_rate_join_the_space_only_when_asked():
    config = _config(learning_rate=FloatRange(min=1e-4, max=1e-2), loss=["weighted_bce", "bce_dice"])
    hp = keras_tuner.HyperParameters()
    model = default_space_builder(config)(hp)
    space = {p.name: p for p in hp.space}
    assert space["loss"].values == ["weighted_bce", "bce_dice"] and not space["loss"].ordered
    rates = space["learning_rate"]
    assert (rates.min_value, rates.max_value, rates.sampling) == (1e-4, 1e-2, "log")
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(rates.default, rel=1e-6)
    assert isinstance(model.loss, WeightedBinaryCrossentropy)  # the first choice is the default

    hp = keras_tuner.HyperParameters()
    model = default_space_builder(_config(loss=["bce_dice"], learning_rate=FloatRange(min=3e-4, max=3e-4)))(hp)
    assert {p.name for p in hp.space}.isdisjoint({"loss", "learning_rate"})  # one value: fixed
    assert model.loss.name == "bce_dice"
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(3e-4)


def test_space_cost_grows_with_filters_and_depth_and_is_unknown_for_a_users_hypermodel():
    cost = space_cost(_config(image_size=128))
    small = cost({"start_neurons": 16, "net_depth": 4})
    assert cost({"start_neurons": 32, "net_depth": 4}) == pytest.approx(4 * small, rel=0.05)
    assert cost({"start_neurons": 16, "net_depth": 2}) < small < cost({"start_neurons": 16, "net_depth": 6})
    config = _config()
    config.hypermodel = "pkg.mod:build"
    assert space_cost(config) is None
