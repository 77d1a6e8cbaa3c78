"""The U-Net (Ronneberger et al., 2015) searched by the default hypermodel.

`net_depth` counts convolution cascades including the bottleneck: depth d has d-1 down-cascades,
the bottleneck and d-1 up-cascades, with filters doubling per level from `start_neurons`. The
output has one sigmoid channel per class, so classes are independent masks (they may overlap).

Only built-in Keras layers are used, so `model.save("x.keras")` round-trips without custom objects.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

ACTIVATIONS = ("mish", "elu", "lrelu", "relu")
# Kaggle-style U-Net rates, applied after each pooling and each skip concatenation:
# lighter after the first pooling, where features are closest to pixels.
FIRST_DROPOUT = 0.25
DROPOUT = 0.5


def max_depth(image_size: int) -> int:
    """Deepest `net_depth` for a side length: each down-cascade halves it without remainder."""
    depth = 1
    while image_size % 2**depth == 0:
        depth += 1
    return depth


def multiply_adds(size: int, channels: int, start_neurons: int, net_depth: int, output_classes: int) -> int:
    """Multiply-adds of one forward pass on a `size` x `size` image: what an epoch costs, up to a
    factor (training is about three forward passes) that every configuration shares."""
    total, inputs, side = 0, channels, size
    filters = [start_neurons * 2**level for level in range(net_depth)]
    for level in range(net_depth - 1):
        total += side * side * 9 * (inputs * filters[level] + filters[level] ** 2)
        inputs, side = filters[level], side // 2
    total += side * side * 9 * (inputs * filters[-1] + filters[-1] ** 2)  # the middle cascade
    for level in reversed(range(net_depth - 1)):
        up = filters[level]
        total += side * side * 9 * filters[level + 1] * up  # transposed conv, per input pixel
        side *= 2
        total += side * side * 9 * (2 * up * up + up * up)  # the cascade after the skip concat
    return total + side * side * filters[0] * output_classes


def unet(input_size: tuple[int, int, int], start_neurons: int, net_depth: int, output_classes: int,
         dropout: bool = False, bn_after_act: bool = False, activation: str = "mish",
         weights: str | None = None, bn_momentum: float = 0.99) -> keras.Model:
    """Build a U-Net; `weights` is an optional local `.weights.h5` or `.keras` file (never downloaded);
    `bn_momentum` is every batch normalisation's momentum (0.99: Keras' default)."""
    _check_args(input_size, start_neurons, net_depth, output_classes, activation)
    block = _Cascade(activation, bn_after_act, bn_momentum)
    inputs = keras.Input(shape=input_size, name="image")
    x, skips = inputs, []
    for level in range(net_depth - 1):
        x = block(x, start_neurons * 2**level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
        if dropout:
            x = layers.Dropout(FIRST_DROPOUT if level == 0 else DROPOUT, name=f"down{level}_dropout")(x)
    x = block(x, start_neurons * 2 ** (net_depth - 1), "middle")
    for level in reversed(range(net_depth - 1)):
        filters = start_neurons * 2**level
        x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", name=f"up{level}_deconv")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        if dropout:
            x = layers.Dropout(DROPOUT, name=f"up{level}_dropout")(x)
        x = block(x, filters, f"up{level}")
    # float32 output keeps sigmoid and loss stable under a mixed-precision policy.
    outputs = layers.Conv2D(output_classes, 1, activation="sigmoid", dtype="float32", name="masks")(x)
    model = keras.Model(inputs, outputs, name=f"unet_d{net_depth}_n{start_neurons}")
    if weights is not None:
        _load_weights(model, weights)
    return model


def _check_args(input_size: tuple[int, int, int], start_neurons: int, net_depth: int,
                output_classes: int, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    if start_neurons < 1 or output_classes < 1:
        raise ValueError(f"start_neurons ({start_neurons}) and output_classes ({output_classes}) must be >= 1")
    height, width = input_size[0], input_size[1]
    fits = min(max_depth(height), max_depth(width))
    if net_depth < 1 or net_depth > fits:
        raise ValueError(
            f"net_depth={net_depth} does not fit a {height}x{width} image: each of the net_depth-1 "
            f"down-cascades halves it, so it must be divisible by 2**(net_depth-1); "
            f"the maximum depth that fits is {fits}")


class _Cascade:
    """Two 3x3 conv -> BatchNorm/activation pairs; BN goes before the activation unless bn_after_act."""

    def __init__(self, activation: str, bn_after_act: bool, bn_momentum: float = 0.99) -> None:
        self.activation = activation
        self.bn_after_act = bn_after_act
        self.bn_momentum = bn_momentum

    def __call__(self, x, filters: int, name: str):
        for i in (1, 2):
            # A bias right before BatchNorm is cancelled by its mean subtraction.
            x = layers.Conv2D(filters, 3, padding="same", use_bias=self.bn_after_act,
                              name=f"{name}_conv{i}")(x)
            if self.bn_after_act:
                x = self._activate(x, f"{name}_act{i}")
                x = layers.BatchNormalization(momentum=self.bn_momentum, name=f"{name}_bn{i}")(x)
            else:
                x = layers.BatchNormalization(momentum=self.bn_momentum, name=f"{name}_bn{i}")(x)
                x = self._activate(x, f"{name}_act{i}")
        return x

    def _activate(self, x, name: str):
        if self.activation == "lrelu":
            return layers.LeakyReLU(name=name)(x)
        # Keras 3 ships mish (x * tanh(softplus(x))) as a built-in activation.
        return layers.Activation(self.activation, name=name)(x)


def _load_weights(model: keras.Model, path: str) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights: no such local file {path!r} (weights are never downloaded)")
    model.load_weights(path)
