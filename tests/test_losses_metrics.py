"""Weighted BCE and the micro-averaged pixel metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import keras

from kt_cluster.core.losses import BceDice, WeightedBinaryCrossentropy, pos_weights_from_fractions
from kt_cluster.core.segmentation_metrics import F1Score, IoU, Precision, Recall

METRICS = (F1Score, Precision, Recall, IoU)


def _masks(values) -> np.ndarray:
    """One image holding a single row of n pixels of one class: shape (1, 1, n, 1)."""
    return np.asarray(values, dtype="float32").reshape(1, 1, -1, 1)


def _results(y_true, y_pred, metrics=None) -> dict[str, float]:
    metrics = metrics or [cls() for cls in METRICS]
    for metric in metrics:
        metric.update_state(y_true, y_pred)
    return {metric.name: float(metric.result()) for metric in metrics}


def test_metric_names_match_the_logged_objective():
    assert [cls().name for cls in METRICS] == ["f1", "precision", "recall", "iou"]


def test_metrics_match_hand_computed_counts():
    # TP=2 (0.9, 0.8), FP=1 (0.7), FN=1 (0.2), TN=2
    results = _results(_masks([1, 1, 0, 1, 0, 0]), _masks([0.9, 0.8, 0.7, 0.2, 0.1, 0.0]))

    assert results == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "iou": 2 / 4})


def test_precision_and_recall_are_not_swapped():
    # TP=3, FP=1, FN=2
    results = _results(_masks([1, 1, 1, 0, 1, 1]), _masks([0.9, 0.9, 0.9, 0.9, 0.1, 0.1]))

    assert results == pytest.approx({"precision": 3 / 4, "recall": 3 / 5, "f1": 6 / 9, "iou": 3 / 6})


def test_metrics_accumulate_counts_across_batches_not_average_ratios():
    metrics = [cls() for cls in METRICS]
    _results(_masks([1, 0]), _masks([0.9, 0.9]), metrics)  # TP=1, FP=1
    results = _results(_masks([1, 1, 1]), _masks([0.9, 0.1, 0.1]), metrics)  # TP=1, FN=2

    # totals TP=2, FP=1, FN=2; the mean of per-batch f1 would be (2/3 + 1/2) / 2
    assert results == pytest.approx({"precision": 2 / 3, "recall": 2 / 4, "f1": 4 / 7, "iou": 2 / 5})


def test_metrics_micro_average_over_classes():
    y_true = np.zeros((1, 2, 2, 2), "float32")
    y_pred = np.zeros((1, 2, 2, 2), "float32")
    y_true[0, 0, 0, 0] = y_pred[0, 0, 0, 0] = 1  # class 0: TP=1
    y_true[0, 1, :, 1] = 1  # class 1: FN=2
    y_pred[0, 0, 1, 1] = 1  # class 1: FP=1

    assert _results(y_true, y_pred)["f1"] == pytest.approx(2 / (2 + 1 + 2))


def test_threshold_is_strictly_above_one_half_for_prediction_and_truth():
    # truth 0.6 is a (resized) positive; prediction 0.5 is negative, 0.5001 positive
    results = _results(_masks([0.6, 0.6, 0.4]), _masks([0.5001, 0.5, 0.9]))

    assert results == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "iou": 1 / 3})


def test_empty_truth_predicted_empty_is_perfect():
    assert _results(_masks([0, 0, 0]), _masks([0.1, 0.2, 0.0])) == {
        "f1": 1.0, "precision": 1.0, "recall": 1.0, "iou": 1.0}


@pytest.mark.parametrize("y_true,y_pred", [([1, 1, 0], [0.1, 0.1, 0.1]),  # objects all missed
                                           ([0, 0, 0], [0.9, 0.1, 0.1])])  # objects invented
def test_zero_denominator_with_errors_scores_zero(y_true, y_pred):
    assert _results(_masks(y_true), _masks(y_pred)) == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "iou": 0.0}


def test_reset_state_forgets_earlier_batches():
    metric = F1Score()
    metric.update_state(_masks([1, 0]), _masks([0.1, 0.9]))
    metric.reset_state()
    metric.update_state(_masks([1]), _masks([0.9]))

    assert float(metric.result()) == 1.0


def test_sample_weight_per_image_excludes_weighted_out_images():
    y_true = np.stack([_masks([1, 0])[0], _masks([1, 1])[0]])
    y_pred = np.stack([_masks([0.9, 0.1])[0], _masks([0.1, 0.1])[0]])
    metric = Recall()

    metric.update_state(y_true, y_pred, sample_weight=np.array([1.0, 0.0]))

    assert float(metric.result()) == 1.0


@pytest.mark.parametrize("cls", METRICS)
def test_metrics_serialize_and_deserialize(cls):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cls(threshold=0.3)))

    assert type(restored) is cls
    assert restored.name == cls().name and restored.threshold == 0.3


def test_unit_pos_weights_equal_plain_binary_crossentropy():
    rng = np.random.default_rng(0)
    y_true = (rng.random((2, 4, 4, 3)) > 0.7).astype("float32")
    y_pred = rng.random((2, 4, 4, 3)).astype("float32")

    weighted = WeightedBinaryCrossentropy([1.0, 1.0, 1.0])(y_true, y_pred)
    plain = keras.losses.BinaryCrossentropy()(y_true, y_pred)

    assert float(weighted) == pytest.approx(float(plain), rel=1e-5)


def test_pos_weight_scales_positive_pixel_errors_only():
    plain, weighted = WeightedBinaryCrossentropy([1.0]), WeightedBinaryCrossentropy([4.0])
    positive = (_masks([1.0]), _masks([0.2]))  # a missed object pixel
    negative = (_masks([0.0]), _masks([0.8]))  # a false alarm on background

    assert float(weighted(*positive)) == pytest.approx(4 * float(plain(*positive)), rel=1e-5)
    assert float(weighted(*negative)) == pytest.approx(float(plain(*negative)), rel=1e-5)


def test_pos_weights_apply_per_class():
    y_true = np.ones((1, 1, 1, 2), "float32")
    y_pred = np.full((1, 1, 1, 2), 0.5, "float32")

    loss = WeightedBinaryCrossentropy([1.0, 3.0])(y_true, y_pred)

    assert float(loss) == pytest.approx((1.0 + 3.0) / 2 * np.log(2), rel=1e-5)


def test_loss_is_finite_for_saturated_predictions():
    loss = WeightedBinaryCrossentropy([10.0])(_masks([1, 0]), _masks([0.0, 1.0]))

    assert np.isfinite(float(loss)) and float(loss) > 0


def test_loss_serializes_with_its_pos_weights():
    config = keras.saving.serialize_keras_object(WeightedBinaryCrossentropy([1.5, 9.0]))
    restored = keras.saving.deserialize_keras_object(config)

    assert isinstance(restored, WeightedBinaryCrossentropy)
    assert restored.pos_weights == [1.5, 9.0]


@pytest.mark.parametrize("weights", [[], [1.0, 0.0], [-2.0]])
def test_loss_rejects_non_positive_weights(weights):
    with pytest.raises(ValueError, match="pos_weights"):
        WeightedBinaryCrossentropy(weights)


def test_pos_weights_from_fractions_is_clipped_inverse_odds():
    weights = pos_weights_from_fractions([0.5, 0.1, 0.001, 0.0, 0.9, 1.0])

    assert weights == pytest.approx([1.0, 9.0, 100.0, 100.0, 1.0, 1.0])


def test_pos_weights_from_fractions_rejects_fractions_outside_unit_interval():
    with pytest.raises(ValueError, match="class fraction 1"):
        pos_weights_from_fractions([0.1, 1.5])


def test_bce_dice_is_low_for_a_match_and_counts_a_missed_small_object_fully():
    loss = BceDice()
    page = np.zeros((1, 8, 8, 2), dtype="float32")
    page[0, 1:3, 1:3, 0] = 1.0  # a 4-pixel object of class 0; class 1 absent
    assert float(loss(page, page * 0.999 + 0.0005)) < 0.03  # Dice near 1 for both classes, tiny BCE
    missed = float(loss(page, np.full_like(page, 0.001)))
    # Class 0's Dice is about 1/5 (smoothing only), class 1's about 1: the loss is near half a
    # class missed, though the object is 4 of 128 pixels (BCE alone: about 0.2).
    assert 0.4 < missed < 0.7
    assert BceDice.from_config(loss.get_config()).smooth == 1.0
    with pytest.raises(ValueError):
        BceDice(smooth=0)
