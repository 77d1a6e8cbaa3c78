"""The cosine learning-rate schedule: one curve over a configuration's epochs, whatever the pieces."""

import keras
import numpy as np
import pytest

from kt_cluster.core import schedules


def test_cosine_runs_from_the_rate_to_its_floor_over_the_horizon():
    rates = [schedules.cosine(1e-3, epoch, 27) for epoch in range(28)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[27] == pytest.approx(1e-3 * schedules.COSINE_FLOOR)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert schedules.cosine(1e-3, 40, 27) == pytest.approx(rates[27])  # past the horizon: the floor


def tiny_model(optimizer) -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=optimizer, loss="mse")
    return model


class RateLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates: dict[int, float] = {}

    def on_epoch_end(self, epoch, logs=None):
        self.rates[epoch] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def fit_rates(model: keras.Model, initial_epoch: int, epochs: int, base: float, horizon: int) -> dict[int, float]:
    x = np.ones((8, 4), "float32")
    log = RateLog()
    history = model.fit(x, x[:, :1], epochs=epochs, initial_epoch=initial_epoch, verbose=0,
                        callbacks=[schedules.EpochCosine(base, horizon), log])
    assert "learning_rate" not in history.history  # the trial's metrics stay the model's own
    return log.rates


def test_a_training_in_pieces_follows_the_same_curve_as_one_piece():
    whole = fit_rates(tiny_model(keras.optimizers.Adam(1e-2)), 0, 9, 1e-2, 9)
    model = tiny_model(keras.optimizers.Adam(1e-2))
    pieces = fit_rates(model, 0, 3, 1e-2, 9)
    # A promotion or a resume: the model's rate is now the last epoch's, the base the compiled one.
    pieces |= fit_rates(model, 3, 9, schedules.compiled_rate(tiny_model(keras.optimizers.Adam(1e-2))), 9)
    assert pieces == pytest.approx(whole)
    assert whole[8] == pytest.approx(schedules.cosine(1e-2, 8, 9))
    assert whole[8] < 0.1 * whole[0]


def test_a_hypermodels_own_schedule_is_left_alone():
    own = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.5)
    assert schedules.compiled_rate(tiny_model(keras.optimizers.Adam(own))) is None
    wrapped = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(own))  # mixed precision's
    assert schedules.compiled_rate(tiny_model(wrapped)) is None
    assert schedules.compiled_rate(tiny_model(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(2e-3)))) \
        == pytest.approx(2e-3)
    assert schedules.compiled_rate(tiny_model(keras.optimizers.Adam(3e-3))) == pytest.approx(3e-3)


def test_a_horizon_shorter_than_one_epoch_is_refused():
    with pytest.raises(ValueError, match="horizon"):
        schedules.EpochCosine(1e-3, 0)
