"""The devices a worker process trains on, and how a trial spreads over them.

A worker process trains every trial on all the GPUs it sees: one GPU, or several with
TensorFlow's MirroredStrategy (one model replica per GPU, gradients summed across them each step).
What a process sees is decided by whoever starts it: the whole pod (`workers.gpus`), or one GPU
of it when `ktc worker --gpus-per-trial 1` gives each process its own (`CUDA_VISIBLE_DEVICES`).

`batch_size` is the global batch of a step: with K GPUs each replica computes batch_size / K
examples, so a trial optimises the same way whatever the worker's shape (scale batch_size and
learning_rate yourself to use K GPUs for a larger batch).
"""

from __future__ import annotations

import keras

from kt_cluster.core.config import ConfigError


def configure(threads: int | None = None, gpu_memory_mb: int | None = None) -> list[str]:
    """Set up this process's devices before any model exists; returns the GPUs it will use.

    Each GPU gets a hard memory cap of `gpu_memory_mb` (several worker processes sharing one
    GPU), else memory growth, so TensorFlow does not take all of a GPU's memory up front.
    `threads` caps TensorFlow's CPU thread pools: processes sharing a machine would otherwise each
    start one thread per core and spend their time switching. On the JAX backend the GPU memory
    settings come from the environment (`XLA_PYTHON_CLIENT_*`, set by `ktc worker --processes`).
    """
    if keras.backend.backend() == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform == "gpu"]
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        if gpu_memory_mb:
            tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=gpu_memory_mb)])
        else:
            tf.config.experimental.set_memory_growth(gpu, True)
    return [gpu.name.replace("physical_device:", "") for gpu in gpus]


def strategy(gpus: list[str], batch_size: int):
    """MirroredStrategy over `gpus` when there are several (TensorFlow only), else None."""
    if len(gpus) < 2:
        return None
    if batch_size % len(gpus):
        raise ConfigError(f"batch_size: {batch_size} does not split evenly over the {len(gpus)} GPUs each trial "
                          f"of this worker trains on; use a multiple of {len(gpus)}")
    if keras.backend.backend() != "tensorflow":
        raise ConfigError(f"this worker sees {len(gpus)} GPUs, but trials spread over several GPUs only with "
                          "Keras' TensorFlow backend; give each process one GPU (ktc worker --gpus-per-trial 1)")
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(gpus)
