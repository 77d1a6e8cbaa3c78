#!/usr/bin/env python3
"""Worker input pipeline benchmark: can tf.data feed a training step fast enough?

Not part of the test run. From the repository root, in the project's virtualenv:

    python benchmarks/pipeline_bench.py                       # 256 synthetic scans at 64 and 256 px (~6-8 min on 2 cores)
    python benchmarks/pipeline_bench.py --sizes 64 --json out.json

For each image size it generates (once, cached under --data-dir) a synthetic dataset with
`kt_cluster.worker.data.synth` (seed 0, 3 classes, 75% train), then measures in one process, with
TensorFlow's default threads (all cores, as a worker pod has):

  pipeline   batches/s of `kt_cluster.worker.data.pipeline.datasets(config)`'s train set alone, streaming from
             disk (every batch is read and decoded, as for a set too large for `data.cache_mb`):
             read the PNGs, decode, check, resize, batch, prefetch; iterated after a warm-up of a
             few batches.
  train      batches/s `model.fit` consumes with the data already in memory (one epoch of batches
             taken from the pipeline into a cached in-memory dataset): the default U-Net at the
             article's middle settings (start_neurons 32, net_depth 4, elu, no dropout, BN before
             the activation), Adam, the weighted BCE and the four pixel metrics; the first epoch
             (tracing) is not timed.
  fed        the same fit fed as a worker feeds it (`kt_cluster.worker.data.feed.TrainingData`,
             default `data.cache_mb`: the splits that fit are decoded once per worker and served
             from memory), and `streamed` with `cache_mb: 0`. Equal to `train` when the pipeline
             keeps up; all share the same cores here, as on a CPU worker.

and reports images/s for each and the ratio pipeline/train (target: >= 5x at the default 64 px).
Files are read from the page cache after the first pass, as on a node that has read them once;
a network volume adds latency that the parallel reads and prefetch hide as long as this ratio
stays well above 1.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import keras_tuner  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kt_cluster.core.config import SearchConfig  # noqa: E402
from kt_cluster.worker.data import examples, pipeline, synth  # noqa: E402
from kt_cluster.worker.data.feed import TrainingData  # noqa: E402
from kt_cluster.core.hypermodel import default_space_builder  # noqa: E402

CLASSES = ["table_number", "stamp", "signature"]


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def dataset(data_dir: Path, count: int, size: int) -> Path:
    path = data_dir / f"synth-{count}-{size}px"
    if not (path / "classes.txt").exists():
        started = time.perf_counter()
        synth.generate(path, count=count, size=size, classes=CLASSES, seed=0)
        print(f"  generated {count} scans of {size} px in {time.perf_counter() - started:.1f} s into {path}",
              flush=True)
    return path


def pipeline_rate(config: SearchConfig, batches: int, min_seconds: float, warmup: int = 5) -> dict:
    train, _, steps, _ = pipeline.datasets(config)  # streamed: every batch read and decoded
    it = iter(train)
    for _ in range(warmup):
        next(it)
    started, n = time.perf_counter(), 0
    while n < batches or time.perf_counter() - started < min_seconds:
        next(it)
        n += 1
    seconds = time.perf_counter() - started
    return {"batches": n, "seconds": seconds, "batches_per_s": n / seconds,
            "images_per_s": n * config.batch_size / seconds, "steps_per_epoch": steps}


def build_model(config: SearchConfig, start_neurons: int, net_depth: int) -> keras.Model:
    hp = keras_tuner.HyperParameters()
    hp.values.update({"start_neurons": start_neurons, "net_depth": net_depth, "activation": "elu",
                      "dropout": False, "bn_after_act": False})
    return default_space_builder(config, class_fractions=[0.05, 0.05, 0.05])(hp)


def train_rate(config: SearchConfig, data: tf.data.Dataset, steps: int, epochs: int,
               start_neurons: int, net_depth: int, warmup: int = 1) -> dict:
    model = build_model(config, start_neurons, net_depth)
    timer = EpochTimer()
    model.fit(data, epochs=warmup + epochs, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    seconds = sum(timer.seconds[warmup:])  # the first epoch traces and compiles
    n = steps * epochs
    return {"batches": n, "seconds": seconds, "batches_per_s": n / seconds,
            "images_per_s": n * config.batch_size / seconds, "params": model.count_params()}


def in_memory(config: SearchConfig, batches: int) -> tf.data.Dataset:
    train, _, _, _ = pipeline.datasets(config)
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in train.take(batches)))
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (tf.data.Dataset.from_tensor_slices((x, y)).batch(config.batch_size, drop_remainder=True)
            .cache().repeat().prefetch(tf.data.AUTOTUNE))


def run(size: int, args) -> dict:
    print(f"{size} px:", flush=True)
    config = SearchConfig(seed=0, batch_size=args.batch_size)
    config.data.path = str(dataset(Path(args.data_dir), args.count, size))
    config.data.image_size = size
    pipe = pipeline_rate(config, args.pipeline_batches, args.min_seconds)
    print(f"  pipeline alone      {pipe['images_per_s']:8.1f} images/s ({pipe['batches_per_s']:.1f} batches/s, "
          f"streaming from disk)", flush=True)
    # Steps per timed epoch: --train-steps at 64 px, fewer for larger images (a step costs ~size**2).
    per_pass = pipe["steps_per_epoch"]
    steps = max(4, min(per_pass, round(args.train_steps * (64 / size) ** 2)))
    common = (steps, args.train_epochs, args.start_neurons, args.net_depth)
    train = train_rate(config, in_memory(config, steps), *common)
    print(f"  training (memory)   {train['images_per_s']:8.1f} images/s ({train['batches_per_s']:.2f} batches/s; "
          f"U-Net {args.start_neurons}/{args.net_depth}, {train['params']:,} parameters)", flush=True)
    # As a worker feeds it: a split that fits is decoded before the first step.
    cached = examples.cache_plan(config, 0, per_pass * config.batch_size, len(CLASSES))[1]
    fed = train_rate(config, TrainingData(config).fit_inputs(seed=0).train, *common)
    print(f"  training (pipeline) {fed['images_per_s']:8.1f} images/s ({fed['batches_per_s']:.2f} batches/s; train set "
          f"{'decoded once, in memory' if cached else 'streamed'} at cache_mb {config.data.cache_mb})", flush=True)
    streaming = copy.deepcopy(config)
    streaming.data.cache_mb = 0
    stream = train_rate(config, TrainingData(streaming).fit_inputs(seed=0).train, *common)
    print(f"  training (streamed) {stream['images_per_s']:8.1f} images/s ({stream['batches_per_s']:.2f} batches/s; "
          f"cache_mb 0)", flush=True)
    ratio = pipe["images_per_s"] / train["images_per_s"]
    print(f"  pipeline / training: {ratio:.1f}x; training fed by the pipeline / from memory: "
          f"{fed['images_per_s'] / train['images_per_s']:.2f} (streamed: {stream['images_per_s'] / train['images_per_s']:.2f})",
          flush=True)
    return {"size": size, "count": args.count, "batch_size": args.batch_size, "pipeline": pipe, "train": train,
            "fed": fed, "fed_cached": cached, "streamed": stream, "ratio": ratio}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64,256", help="image sizes, comma-separated (64 is the default config's)")
    p.add_argument("--count", type=int, default=256, help="synthetic scans per dataset")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--start-neurons", type=int, default=32)
    p.add_argument("--net-depth", type=int, default=4)
    p.add_argument("--pipeline-batches", type=int, default=100, help="at least this many batches timed")
    p.add_argument("--min-seconds", type=float, default=3.0, help="and at least this long")
    p.add_argument("--train-steps", type=int, default=24, help="training steps per timed epoch at 64 px (<= one epoch; scaled by (64/size)**2, at least 4)")
    p.add_argument("--train-epochs", type=int, default=2, help="timed epochs, after one untimed")
    p.add_argument("--data-dir", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "ktc-pipeline-bench"))
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} cores, devices "
          f"{[d.device_type for d in tf.config.list_physical_devices()]}, batch {args.batch_size}", flush=True)
    results = [run(int(s), args) for s in args.sizes.split(",")]
    print("\n| image size | pipeline alone (disk), images/s | training, data in memory | ratio | "
          "training fed by the pipeline (default cache_mb) | training, streamed (cache_mb 0) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['size']} px | {r['pipeline']['images_per_s']:.0f} | {r['train']['images_per_s']:.1f} | "
              f"{r['ratio']:.1f}x | {r['fed']['images_per_s']:.1f} ({'cached' if r['fed_cached'] else 'streamed'}) | "
              f"{r['streamed']['images_per_s']:.1f} |")
    default = next((r for r in results if r["size"] == SearchConfig().data.image_size), None)
    if default is not None:
        ok = default["ratio"] >= 5
        print(f"\ntarget: pipeline >= 5x training at the default {default['size']} px: "
              f"{default['ratio']:.1f}x, {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
