"""FusedAdam: Keras' Adam, traced as one op per variable on TensorFlow, the same training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kt_cluster.core.optimizers import FusedAdam


def tiny_model(optimizer) -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="elu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.random((16, 8, 8, 2), dtype=np.float32), (rng.random((16, 8, 8, 1)) > 0.7).astype("float32")


def trained(optimizer, steps: int = 6):
    model = tiny_model(optimizer)
    x, y = data()
    model.fit(x, y, batch_size=4, epochs=steps // 4, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize("options", [{"beta_1": 0.8, "epsilon": 1e-6}, {"weight_decay": 0.01}])
def test_it_trains_like_keras_adam(options):
    ours = trained(FusedAdam(1e-2, **options), steps=12)
    theirs = trained(keras.optimizers.Adam(1e-2, **options), steps=12)
    for a, b in zip(ours.get_weights() + [v.numpy() for v in ours.optimizer.variables],
                    theirs.get_weights() + [v.numpy() for v in theirs.optimizer.variables]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert int(ours.optimizer.iterations.numpy()) == 12
    assert not np.allclose(ours.get_weights()[0], tiny_model(FusedAdam(1e-2)).get_weights()[0])  # it trained


def update_ops(optimizer) -> int:
    """Ops in the traced graph of one optimizer update of the tiny model."""
    variables = tiny_model(optimizer).trainable_variables
    optimizer.build(variables)

    @tf.function
    def apply(grads):
        optimizer.apply(grads, variables)

    graph = apply.get_concrete_function([tf.zeros(v.shape) for v in variables]).graph
    return len(graph.get_operations())


def test_its_update_traces_far_fewer_ops():
    fused, keras_adam = update_ops(FusedAdam(1e-3)), update_ops(keras.optimizers.Adam(1e-3))
    assert fused < 0.6 * keras_adam, (fused, keras_adam)


def test_a_saved_model_loads_back_with_it(tmp_path):
    model = trained(FusedAdam(3e-3, beta_2=0.99), steps=4)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, FusedAdam)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_with_amsgrad_where_the_fused_op_does_not_apply_it_is_keras_adam_exactly():
    ours, theirs = trained(FusedAdam(1e-2, amsgrad=True)), trained(keras.optimizers.Adam(1e-2, amsgrad=True))
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_array_equal(a, b)
