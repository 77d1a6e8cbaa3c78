"""Light geometric augmentation of training batches (`data.augment`): each example is seen
through a square window, zoomed and shifted a little, its masks through the same window.

A window is given by one row of `order.jitter` draws (u, v, w), each in [-1, 1): its side is
`1 + scale * u` of the image's and its centre moves by `shift * v` and `shift * w` of the
image's side (rows, columns). Output pixel i of a side of L pixels takes the source
coordinate `((1 - side) / 2 + move) * (L - 1) + side * i`, clamped to [0, L - 1], so a window
that reaches past an edge repeats that edge. Images are sampled bilinearly, masks at the
nearest pixel (they stay 0 or 1). The coordinates are computed in float64 by the numpy and the
TensorFlow versions alike, so both pick the same source pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kt_cluster.core.config import AugmentConfig

if TYPE_CHECKING:
    import tensorflow as tf


def coordinates(draws: np.ndarray, axis: int, length: int, augment: AugmentConfig) -> np.ndarray:
    """(batch, length) source coordinates along rows (axis 1) or columns (axis 2) of the draws."""
    side = 1 + augment.scale * draws[:, 0].astype(np.float64)
    move = augment.shift * draws[:, axis].astype(np.float64)
    origin = ((1 - side) / 2 + move) * (length - 1)
    return np.clip(origin[:, None] + side[:, None] * np.arange(length), 0, length - 1)


def apply(images: np.ndarray, masks: np.ndarray, draws: np.ndarray,
          augment: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """The batch (images, masks), (batch, H, W, channels) each, seen through the draws' windows."""
    _, height, width, _ = images.shape
    ys, xs = coordinates(draws, 1, height, augment), coordinates(draws, 2, width, augment)
    out_masks = _pick(_pick(masks, np.floor(ys + 0.5), 1), np.floor(xs + 0.5), 2)
    top, left = np.floor(ys), np.floor(xs)
    dy = (ys - top).astype(images.dtype)[:, :, None, None]
    dx = (xs - left).astype(images.dtype)[:, None, :, None]
    bottom, right = np.minimum(top + 1, height - 1), np.minimum(left + 1, width - 1)
    across = _pick(images, top, 1) * (1 - dy) + _pick(images, bottom, 1) * dy
    return _pick(across, left, 2) * (1 - dx) + _pick(across, right, 2) * dx, out_masks


def _pick(array: np.ndarray, along: np.ndarray, axis: int) -> np.ndarray:
    """Per example, the rows (axis 1) or columns (axis 2) at the (batch, length) indices `along`."""
    shape = (*along.shape, 1, 1) if axis == 1 else (along.shape[0], 1, along.shape[1], 1)
    return np.take_along_axis(array, along.astype(np.int64).reshape(shape), axis=axis)


def apply_tf(images: "tf.Tensor", masks: "tf.Tensor", draws: "tf.Tensor",
             augment: AugmentConfig) -> tuple["tf.Tensor", "tf.Tensor"]:
    """`apply` in the graph, for tf.data: the same windows, the same source pixels."""
    import tensorflow as tf

    def coords(axis: int, length: "tf.Tensor") -> "tf.Tensor":
        side = 1 + augment.scale * tf.cast(draws[:, 0], tf.float64)
        move = augment.shift * tf.cast(draws[:, axis], tf.float64)
        last = tf.cast(length - 1, tf.float64)
        origin = ((1 - side) / 2 + move) * last
        return tf.clip_by_value(origin[:, None] + side[:, None] * tf.range(tf.cast(length, tf.float64)), 0, last)

    height, width = tf.shape(images)[1], tf.shape(images)[2]
    ys, xs = coords(1, height), coords(2, width)

    def pick(array: "tf.Tensor", along: "tf.Tensor", axis: int) -> "tf.Tensor":
        return tf.gather(array, tf.cast(along, tf.int32), axis=axis, batch_dims=1)

    out_masks = pick(pick(masks, tf.floor(ys + 0.5), 1), tf.floor(xs + 0.5), 2)
    top, left = tf.floor(ys), tf.floor(xs)
    dy = tf.cast(ys - top, images.dtype)[:, :, None, None]
    dx = tf.cast(xs - left, images.dtype)[:, None, :, None]
    bottom = tf.minimum(top + 1, tf.cast(height - 1, tf.float64))
    right = tf.minimum(left + 1, tf.cast(width - 1, tf.float64))
    across = pick(images, top, 1) * (1 - dy) + pick(images, bottom, 1) * dy
    return pick(across, left, 2) * (1 - dx) + pick(across, right, 2) * dx, out_masks
