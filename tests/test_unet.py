"""The U-Net: structure per hyperparameter, training at the search-space corners, errors, saving."""

from __future__ import annotations

import numpy as np
import pytest
import keras

from kt_cluster.core.losses import WeightedBinaryCrossentropy
from kt_cluster.core.segmentation_metrics import F1Score, IoU, Precision, Recall
from kt_cluster.core.unet import max_depth, unet

SIZE = 32
DEEPEST = max_depth(SIZE)  # 6 for 32x32: the bottleneck is 1x1
CLASSES = 3


def _data(size: int = SIZE, batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((batch, size, size, 3), dtype=np.float32)
    masks = (rng.random((batch, size, size, CLASSES)) > 0.8).astype("float32")
    return images, masks


def _compile(model: keras.Model, run_eagerly: bool) -> keras.Model:
    model.compile(optimizer="adam", loss=WeightedBinaryCrossentropy([2.0] * CLASSES),
                  metrics=[F1Score(), Precision(), Recall(), IoU()], run_eagerly=run_eagerly)
    return model


def _layers_of(model: keras.Model, kind: type) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if isinstance(layer, kind)]


# start_neurons, net_depth, activation, dropout, bn_after_act: every activation, both depth
# extremes, both booleans both ways. Eager steps keep the deep nets fast; graph mode is tested below.
CORNERS = [
    (16, 2, "mish", False, False),
    (32, 2, "elu", True, True),
    (16, DEEPEST, "lrelu", True, False),
    (16, DEEPEST, "relu", False, True),
    (8, DEEPEST, "mish", True, True),
]


@pytest.mark.parametrize("start_neurons,net_depth,activation,dropout,bn_after_act", CORNERS)
def test_unet_trains_one_step_at_search_space_corners(start_neurons, net_depth, activation, dropout,
                                                      bn_after_act):
    model = _compile(unet((SIZE, SIZE, 3), start_neurons, net_depth, CLASSES, dropout=dropout,
                          bn_after_act=bn_after_act, activation=activation), run_eagerly=True)
    images, masks = _data()
    before = [w.copy() for w in model.get_weights()]

    history = model.fit(images, masks, batch_size=2, epochs=1, verbose=0)

    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    predictions = model.predict(images, verbose=0)
    assert predictions.shape == (2, SIZE, SIZE, CLASSES)
    assert predictions.min() >= 0.0 and predictions.max() <= 1.0


def test_unet_trains_one_step_in_graph_mode():
    model = _compile(unet((SIZE, SIZE, 3), 16, 2, CLASSES, activation="mish"), run_eagerly=False)
    images, masks = _data()

    history = model.fit(images, masks, batch_size=2, epochs=1, verbose=0)

    assert np.isfinite(history.history["loss"][0])
    assert {"f1", "precision", "recall", "iou"} <= set(history.history)


@pytest.mark.parametrize("net_depth", [1, 2, 3, 4])
def test_net_depth_counts_cascades_including_the_bottleneck(net_depth):
    model = unet((SIZE, SIZE, 3), 4, net_depth, CLASSES)

    assert len(_layers_of(model, keras.layers.MaxPooling2D)) == net_depth - 1
    assert len(_layers_of(model, keras.layers.Conv2DTranspose)) == net_depth - 1
    # two 3x3 convs per cascade, plus the 1x1 output conv
    assert len(_layers_of(model, keras.layers.Conv2D)) == 2 * (2 * net_depth - 1) + 1
    assert model.get_layer("middle_conv1").filters == 4 * 2 ** (net_depth - 1)


def test_output_layer_is_one_sigmoid_channel_per_class():
    output = unet((16, 16, 1), 4, 2, 5).get_layer("masks")

    assert output.filters == 5
    assert output.activation is keras.activations.sigmoid


@pytest.mark.parametrize("bn_after_act", [False, True])
def test_batch_norm_goes_before_activation_unless_bn_after_act(bn_after_act):
    names = [layer.name for layer in unet((16, 16, 3), 4, 2, 1, bn_after_act=bn_after_act).layers]

    bn_first = names.index("down0_bn1") < names.index("down0_act1")
    assert bn_first is not bn_after_act


@pytest.mark.parametrize("dropout,expected", [(False, 0), (True, 2 * 2)])
def test_dropout_layers_only_when_enabled(dropout, expected):
    model = unet((16, 16, 3), 4, 3, 1, dropout=dropout)

    assert len(_layers_of(model, keras.layers.Dropout)) == expected


@pytest.mark.parametrize("activation,layer_type", [("mish", keras.layers.Activation),
                                                   ("elu", keras.layers.Activation),
                                                   ("relu", keras.layers.Activation),
                                                   ("lrelu", keras.layers.LeakyReLU)])
def test_each_activation_is_used_in_the_cascades(activation, layer_type):
    layer = unet((16, 16, 3), 4, 2, 1, activation=activation).get_layer("middle_act2")

    assert isinstance(layer, layer_type)
    x = np.linspace(-3, 3, 7, dtype="float32")
    expected = {"mish": x * np.tanh(np.log1p(np.exp(x))), "elu": np.where(x > 0, x, np.expm1(x)),
                "relu": np.maximum(x, 0), "lrelu": np.where(x > 0, x, 0.3 * x)}[activation]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,expected", [(32, 6), (64, 7), (48, 5), (30, 2), (31, 1)])
def test_max_depth_is_the_number_of_halvings_plus_one(size, expected):
    assert max_depth(size) == expected


@pytest.mark.parametrize("shape,depth,fits", [((32, 32, 3), 7, 6), ((48, 48, 3), 6, 5), ((32, 48, 1), 6, 5)])
def test_too_deep_net_raises_value_error_naming_depth_size_and_max(shape, depth, fits):
    with pytest.raises(ValueError) as error:
        unet(shape, 4, depth, 1)

    message = str(error.value)
    assert f"net_depth={depth}" in message
    assert f"{shape[0]}x{shape[1]}" in message
    assert f"maximum depth that fits is {fits}" in message


def test_unknown_activation_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="'swish'"):
        unet((16, 16, 3), 4, 2, 1, activation="swish")


def test_save_and_load_round_trip_gives_the_same_predictions(tmp_path):
    model = _compile(unet((16, 16, 3), 4, 3, CLASSES, dropout=True, bn_after_act=True, activation="lrelu"),
                     run_eagerly=True)
    images, masks = _data(size=16)
    model.fit(images, masks, batch_size=2, epochs=1, verbose=0)  # builds the optimizer state saved too
    path = tmp_path / "model.keras"

    model.save(path)
    loaded = keras.models.load_model(path)

    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    assert isinstance(loaded.loss, WeightedBinaryCrossentropy)
    assert loaded.loss.pos_weights == [2.0] * CLASSES


def test_weights_are_loaded_from_a_local_file(tmp_path):
    source = unet((16, 16, 3), 4, 2, CLASSES, activation="elu")
    path = tmp_path / "unet.weights.h5"
    source.save_weights(path)
    images, _ = _data(size=16)

    model = unet((16, 16, 3), 4, 2, CLASSES, activation="elu", weights=str(path))

    np.testing.assert_allclose(model.predict(images, verbose=0), source.predict(images, verbose=0), atol=1e-6)


def test_missing_weights_file_raises_instead_of_downloading(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        unet((16, 16, 3), 4, 2, 1, weights=str(tmp_path / "imagenet"))
