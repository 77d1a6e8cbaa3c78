"""Adam with one fused update op per variable when Keras runs on TensorFlow.

Keras' Adam writes its update in backend-neutral ops: about twenty graph ops per variable (the
bias corrections recomputed for each one, then the moment and weight updates). On TensorFlow
every one of them is created in Python when a new model's train function is traced, and a
search traces a new model for every trial: for a 16-filter, depth-4 U-Net (100 variables) the
optimizer's update was the larger part of the trace (profiled: 46 of 81 traced seconds).
TensorFlow's own `ResourceApplyAdam` kernel computes the same update (the same formula: Kingma &
Ba's bias-corrected step, epsilon added to the square root of the second moment) in one op.

`FusedAdam` is `keras.optimizers.Adam` in every other respect: same arguments, config, slot
variables (so checkpoints and warm starts restore it the same way), and it falls back to Keras'
update wherever the fused op does not apply: another backend (JAX traces differently), AMSGrad,
or a distribution strategy (whose mirrored slots Keras updates per replica).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="ktc")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam`, traced as one `ResourceApplyAdam` op per variable on TensorFlow."""

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        if tf.distribute.has_strategy():
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        # `variable` is the tf.Variable here (Keras' TensorFlow optimizer unwraps it); the slots
        # are Keras variables around theirs.
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle, v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype), use_locking=False)
