"""A worker that sees several GPUs trains each trial on all of them with MirroredStrategy.

No GPU here: TensorFlow splits the CPU into two logical devices (which must happen before it
initialises its devices, hence a fresh process), and MirroredStrategy runs across them for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from harness import TINY, make_dataset, merge
from kt_cluster.core.config import ConfigError
from kt_cluster.worker import devices

SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras, keras_tuner, numpy as np
    from keras_tuner.src.engine import trial as trial_module
    from kt_cluster.core.config import load
    from kt_cluster.core.tuner import build_tuner
    from kt_cluster.worker import checkpoints
    from kt_cluster.worker.data.feed import TrainingData
    from kt_cluster.worker.tuner import WorkerTuner

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            kernel = self.model.trainable_variables[0].value
            self.seen = {"replicas": self.model.distribute_strategy.num_replicas_in_sync,
                         "variable": type(kernel).__name__,
                         "devices": sorted(v.device for v in getattr(kernel, "values", [kernel]))}

    def run(config_file, results, strategy, hp_values):
        config = load(config_file, env={})
        config.results = results
        tuner = build_tuner(config, class_fractions=[0.1, 0.1, 0.1], tuner_class=WorkerTuner, seed=7,
                            distribution_strategy=strategy)
        hp = keras_tuner.HyperParameters()
        hp.values.update(hp_values)
        probe = Probe()
        history = tuner.run_trial(trial_module.Trial(hp, trial_id="0"), TrainingData(config), epochs=2,
                                  verbose=0, callbacks=[probe])
        state = checkpoints.read_state(tuner.trial_dir("0") / checkpoints.STATE)
        np.savez(f"{results}/state.npz", *state)
        return {"history": history, **probe.seen}

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    plain_hp = {"units": 4}
    unet_hp = {"start_neurons": 8, "net_depth": 2, "activation": "relu", "dropout": False, "bn_after_act": False}
    out = {
        "plain_mirrored": run(sys.argv[1], sys.argv[3] + "/plain_mirrored", mirrored, plain_hp),
        "plain_single": run(sys.argv[1], sys.argv[3] + "/plain_single", None, plain_hp),
        "unet_mirrored": run(sys.argv[2], sys.argv[3] + "/unet_mirrored", mirrored, unet_hp),
    }
    print("RESULT " + json.dumps(out))
""")

# No batch normalisation: its statistics are per replica, so only a model without it trains to
# the same weights on two replicas of half a batch as on one device with the whole batch.
PLAIN_MODEL = textwrap.dedent("""
    import keras

    def build(hp):
        units = hp.Int("units", 4, 4)
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(units, 3, padding="same", activation="relu")(inputs)
        outputs = keras.layers.Conv2D(3, 1, activation="sigmoid")(x)
        model = keras.Model(inputs, outputs)
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
        return model
""")


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mirrored")
    data = make_dataset(tmp / "data", count=16, size=32)
    (tmp / "ktc_plain_model.py").write_text(PLAIN_MODEL)
    base = merge(TINY, {"seed": 7, "batch_size": 4, "data": {"path": str(data)}})
    (tmp / "plain.yaml").write_text(yaml.safe_dump(merge(base, {"hypermodel": "ktc_plain_model:build",
                                                                "objective": "val_loss", "direction": "min"})))
    (tmp / "unet.yaml").write_text(yaml.safe_dump(base))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp / "plain.yaml"), str(tmp / "unet.yaml"), str(tmp)],
                            env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return tmp, json.loads(lines[0][len("RESULT "):])


def test_each_trial_trains_replicas_on_both_devices(mirrored):
    _, out = mirrored
    for name in ("plain_mirrored", "unet_mirrored"):
        assert out[name]["replicas"] == 2 and out[name]["variable"] == "MirroredVariable", out[name]
        assert [d.rsplit("/", 1)[-1] for d in out[name]["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert out["plain_single"]["replicas"] == 1
    assert all(np.isfinite(out["unet_mirrored"]["history"]["loss"]))


def test_batch_size_is_the_global_batch_split_across_replicas(mirrored):
    tmp, out = mirrored
    # Two replicas of 2 examples, gradients summed: the same steps as one device with 4.
    np.testing.assert_allclose(out["plain_mirrored"]["history"]["loss"], out["plain_single"]["history"]["loss"], rtol=1e-4)
    with np.load(tmp / "plain_mirrored" / "state.npz") as a, np.load(tmp / "plain_single" / "state.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_a_batch_that_does_not_split_over_the_gpus_is_refused_before_training():
    with pytest.raises(ConfigError, match=r"^batch_size: 6 does not split evenly over the 4 GPUs"):
        devices.strategy(["/GPU:0", "/GPU:1", "/GPU:2", "/GPU:3"], batch_size=6)
    assert devices.strategy(["/GPU:0"], batch_size=6) is None
