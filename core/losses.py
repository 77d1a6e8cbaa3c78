"""Binary cross-entropy over per-class sigmoid masks, with positive pixels up-weighted per class.

Objects such as stamps cover a few percent of a page; unweighted, predicting all background is a
cheap local minimum. Weighting positives of class c by about (1 - p_c) / p_c balances the classes.
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import ops

MIN_WEIGHT = 1.0
MAX_WEIGHT = 100.0  # caps very rare classes so a few pixels cannot dominate the gradient


def pos_weights_from_fractions(fractions: Sequence[float], max_weight: float = MAX_WEIGHT) -> list[float]:
    """Per-class (1 - p) / p from positive-pixel fractions p, clipped to [1, max_weight]."""
    weights = []
    for c, p in enumerate(fractions):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"class fraction {c}: must be in [0, 1], got {p}")
        # A class never seen in the sample gets the cap rather than a division by zero.
        raw = max_weight if p == 0.0 else (1.0 - p) / p
        weights.append(float(min(max(raw, MIN_WEIGHT), max_weight)))
    return weights


@keras.saving.register_keras_serializable(package="ktc")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Mean over pixels and classes of -(w_c * y * log p + (1 - y) * log(1 - p))."""

    def __init__(self, pos_weights: Sequence[float], name: str = "weighted_bce", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        if not pos_weights or any(w <= 0 for w in pos_weights):
            raise ValueError(f"pos_weights: must be a non-empty list of positive numbers, got {pos_weights!r}")
        self.pos_weights = [float(w) for w in pos_weights]

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        # Clipping keeps log finite where the sigmoid saturates to exactly 0 or 1.
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1.0 - eps)
        weights = ops.convert_to_tensor(self.pos_weights, dtype=y_pred.dtype)  # broadcasts on the class axis
        per_pixel = -(weights * y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        return ops.mean(per_pixel, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "pos_weights": self.pos_weights}


@keras.saving.register_keras_serializable(package="ktc")
class BceDice(keras.losses.Loss):
    """Unweighted binary cross-entropy plus soft Dice loss, per page and class.

    Dice (1 - 2|P∩T| / (|P| + |T|), with soft predictions) scores each class by its overlap, so a
    class covering 1% of the page counts as much as the background: the imbalance is handled
    without up-weighting positive pixels, which pushes small objects' borders over the 0.5
    threshold and costs precision. The cross-entropy term keeps gradients useful early on, when
    predicted masks are still empty. `smooth` keeps pages without an object finite (predicting
    nothing there scores a Dice of 1)."""

    def __init__(self, smooth: float = 1.0, name: str = "bce_dice", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        if smooth <= 0:
            raise ValueError(f"smooth: must be > 0, got {smooth}")
        self.smooth = float(smooth)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        eps = keras.config.epsilon()
        p = ops.clip(y_pred, eps, 1.0 - eps)
        bce = -ops.mean(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p), axis=(1, 2, 3))
        overlap = ops.sum(y_true * y_pred, axis=(1, 2))  # (batch, classes)
        total = ops.sum(y_true + y_pred, axis=(1, 2))
        dice = (2.0 * overlap + self.smooth) / (total + self.smooth)
        return bce + 1.0 - ops.mean(dice, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth}
