"""Light geometric augmentation of training batches (`data.augment`): each example is seen
through a square window, zoomed and shifted a little, its masks through the same window.

A window is given by one row of `order.jitter` draws (u, v, w), each in [-1, 1): its side is
`1 + scale * u` of the image's and its centre moves by `shift * v` and `shift * w` of the
image's side (rows, columns). Output pixel i of a side of L pixels takes the source
coordinate `((1 - side) / 2 + move) * (L - 1) + side * i`, clamped to [0, L - 1], so a window
that reaches past an edge repeats that edge. Images are sampled bilinearly, masks at the
nearest pixel (they stay 0 or 1). The tf.data pipeline runs the same numpy function
(`apply_tf`), so both backends pick the same source pixels.
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
    """`apply` as a step of a tf.data pipeline: the same function, so the same pixels."""
    import tensorflow as tf

    def run(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return apply(x, y, d, augment)

    out_images, out_masks = tf.numpy_function(run, [images, masks, draws], [images.dtype, masks.dtype],
                                              stateful=False)
    return tf.ensure_shape(out_images, images.shape), tf.ensure_shape(out_masks, masks.shape)
