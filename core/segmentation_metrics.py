"""Pixel-wise segmentation metrics for multi-label sigmoid masks.

Each metric thresholds predictions at 0.5 (strictly greater counts as positive, like
`keras.metrics.Precision`; truth is binarised the same way, so resized soft masks work) and sums
true positives, false positives and false negatives over every pixel, class and batch of the epoch
(micro-averaging): a large class counts more than a small one, exactly as its pixels do.

Empty convention: when TP + FP + FN == 0 (no object in the truth and none predicted) every metric
is 1.0, since predicting nothing on an empty page is a perfect answer. Otherwise a ratio whose
denominator is zero is 0.0 (e.g. precision when nothing was predicted but objects were missed).
"""

from __future__ import annotations

from typing import Mapping

import keras
from keras import ops

THRESHOLD = 0.5

# Which way is better, for the metrics here and the loss. keras-tuner infers a direction from a
# name only for Keras' own metrics, and records "min" for f1 and iou: a reader of a trial's
# metrics asking for their best value would get the worst.
DIRECTIONS = {"f1": "max", "precision": "max", "recall": "max", "iou": "max", "loss": "min",
              "epoch_seconds": "min"}  # the worker time workers report with each epoch


def direction_of(name: str, declared: Mapping[str, str] | None = None) -> str | None:
    """`"min"` or `"max"` for a logged metric (`val_iou` as `iou`): a direction `declared` in the
    config (`metric_directions`, for a hypermodel's own metrics) first, then the metrics here and
    any `*loss`; None leaves it to keras-tuner's inference from Keras' metrics."""
    base = name[4:] if name.startswith("val_") else name
    declared = declared or {}
    for key in (name, base):
        if key in declared:
            return declared[key]
    if base in DIRECTIONS:
        return DIRECTIONS[base]
    return "min" if base.endswith("loss") else None


class _ConfusionMetric(keras.metrics.Metric):
    """Accumulates TP, FP and FN; subclasses turn them into one ratio in `_ratio`."""

    def __init__(self, name: str, threshold: float = THRESHOLD, **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.tp = self.add_variable(shape=(), initializer="zeros", name="tp")
        self.fp = self.add_variable(shape=(), initializer="zeros", name="fp")
        self.fn = self.add_variable(shape=(), initializer="zeros", name="fn")

    def update_state(self, y_true, y_pred, sample_weight=None) -> None:
        pred = ops.cast(ops.greater(y_pred, self.threshold), self.dtype)
        true = ops.cast(ops.greater(y_true, self.threshold), self.dtype)
        weight = ops.ones_like(pred) if sample_weight is None else _broadcast(sample_weight, pred)
        self.tp.assign_add(ops.sum(weight * pred * true))
        self.fp.assign_add(ops.sum(weight * pred * (1.0 - true)))
        self.fn.assign_add(ops.sum(weight * (1.0 - pred) * true))

    def result(self):
        numerator, denominator = self._ratio()
        empty = ops.equal(self.tp + self.fp + self.fn, 0.0)
        fallback = ops.where(empty, 1.0, 0.0)
        return ops.where(ops.greater(denominator, 0.0),
                         numerator / ops.maximum(denominator, keras.config.epsilon()), fallback)

    def reset_state(self) -> None:
        for variable in (self.tp, self.fp, self.fn):
            variable.assign(0.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "threshold": self.threshold}

    def _ratio(self):
        raise NotImplementedError


def _broadcast(sample_weight, like):
    """Per-sample (batch,) or per-pixel weights expanded to the (batch, h, w, classes) masks."""
    weight = ops.cast(sample_weight, like.dtype)
    while len(weight.shape) < len(like.shape):
        weight = ops.expand_dims(weight, -1)
    return ops.broadcast_to(weight, ops.shape(like))


@keras.saving.register_keras_serializable(package="ktc")
class F1Score(_ConfusionMetric):
    def __init__(self, name: str = "f1", **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def _ratio(self):
        return 2.0 * self.tp, 2.0 * self.tp + self.fp + self.fn


@keras.saving.register_keras_serializable(package="ktc")
class Precision(_ConfusionMetric):
    def __init__(self, name: str = "precision", **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def _ratio(self):
        return self.tp, self.tp + self.fp


@keras.saving.register_keras_serializable(package="ktc")
class Recall(_ConfusionMetric):
    def __init__(self, name: str = "recall", **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def _ratio(self):
        return self.tp, self.tp + self.fn


@keras.saving.register_keras_serializable(package="ktc")
class IoU(_ConfusionMetric):
    """Jaccard index TP / (TP + FP + FN) over all pixels and classes."""

    def __init__(self, name: str = "iou", **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def _ratio(self):
        return self.tp, self.tp + self.fp + self.fn
