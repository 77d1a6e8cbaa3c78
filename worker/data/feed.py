"""What a worker feeds `model.fit`: the examples listed and decoded once, fed to every trial.

`TrainingData` lives as long as the worker process. The first trial that needs it lists the
dataset (names only) and decodes the splits that fit in `data.cache_mb` (validation first);
every trial then gets fresh datasets over those same decoded examples, its train stream starting
at the first batch of its first epoch (`order`). So no trial after the first decodes a file of a
split that fits, and a resumed trial sees the batches it would have seen without the pause.

With TensorFlow as Keras' backend the datasets are tf.data pipelines (`pipeline`), which also
stream the splits that do not fit. On other backends (JAX) they are `keras.utils.PyDataset`s over
numpy arrays decoded with Pillow, and both splits must fit in `data.cache_mb`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator

import keras
import numpy as np

from kt_cluster.core.config import AugmentConfig, SearchConfig
from kt_cluster.worker.data import examples as examples_lib
from kt_cluster.worker.data import augment, order
from kt_cluster.worker.data.examples import DataError, Decoded, Listing

log = logging.getLogger("ktc.worker")


@dataclass
class FitInputs:
    """The arguments of one trial's `model.fit`: train and validation data, steps of each."""

    train: Any
    val: Any
    steps: int
    val_steps: int


class TrainingData:
    """The examples every trial of one worker trains on."""

    def __init__(self, config: SearchConfig):
        self.config = config
        self.tensorflow = keras.backend.backend() == "tensorflow"
        self._listing: Listing | None = None
        self._decoded: dict[str, Decoded] = {}

    def fit_inputs(self, seed: int, initial_epoch: int = 0) -> FitInputs:
        """Datasets for a trial that starts at `initial_epoch`, its train order given by `seed`.

        The first call lists and decodes (inside `explain_errors`, so a bad file fails the trial
        that met it, naming the file); a failed call leaves nothing half-made for the next one.
        """
        listing = self._listing or examples_lib.listing(self.config)
        if not self._decoded:
            self._decoded = self._decode(listing)
        self._listing = listing
        start = initial_epoch * listing.steps
        if self.tensorflow:
            from kt_cluster.worker.data import pipeline

            train, val, steps, val_steps = pipeline.datasets(self.config, start, seed, self._decoded, listing)
            return FitInputs(train, val, steps, val_steps)
        return FitInputs(TrainBatches(self._decoded["train"], seed, self.config.batch_size, start,
                                      self.config.data.augment),
                         ValidationBatches(self._decoded["val"], self.config.batch_size, listing.val_steps),
                         listing.steps, listing.val_steps)

    @contextlib.contextmanager
    def explain_errors(self) -> Iterator[None]:
        """Errors caused by a bad data file become a `DataError` naming the file."""
        if not self.tensorflow:
            yield  # Pillow's decoding raises DataError itself
            return
        from kt_cluster.worker.data import pipeline

        with pipeline.explain_data_errors(self.config):
            yield

    def _decode(self, listing: Listing) -> dict[str, Decoded]:
        config = self.config
        keep_val, keep_train = examples_lib.cache_plan(config, len(listing.val), len(listing.train),
                                                       len(listing.classes))
        splits = {name: examples for name, examples, keep in (("val", listing.val, keep_val),
                                                              ("train", listing.train, keep_train)) if keep}
        if not self.tensorflow and len(splits) < 2:
            raise DataError(f"{config.data_dir}: data.cache_mb {config.data.cache_mb} MiB holds "
                            f"{' and '.join(splits) or 'neither split'} but not both; without TensorFlow "
                            "every split is decoded into memory, so raise data.cache_mb")
        started, decoded = time.perf_counter(), {}
        for name, examples in splits.items():
            if self.tensorflow:
                from kt_cluster.worker.data import pipeline

                decoded[name] = pipeline.resident(pipeline.decode(config, examples, len(listing.classes)))
            else:
                decoded[name] = examples_lib.decode_with_pillow(examples, config.data.image_size, config.data.channels)
        if decoded:
            log.info("decoded %s into memory in %.1f s; every trial of this worker trains from there",
                     " and ".join(f"{len(d)} {name} examples" for name, d in decoded.items()),
                     time.perf_counter() - started)
        return decoded


class TrainBatches(keras.utils.PyDataset):
    """The endless train stream of `order` over decoded arrays, from batch `start` on, augmented
    as the tf.data pipeline augments it."""

    def __init__(self, decoded: Decoded, seed: int, batch: int, start: int,
                 augmentation: AugmentConfig | None = None):
        super().__init__()
        self.decoded, self.seed, self.batch, self.start = decoded, seed, batch, start
        self.augmentation = augmentation or AugmentConfig()

    @property
    def num_batches(self) -> None:
        return None  # endless: steps_per_epoch defines an epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        first = (self.start + index) * self.batch
        picks = order.positions(self.seed, len(self.decoded), first, self.batch)
        images, masks = self.decoded.images[picks], self.decoded.masks[picks]
        if not self.augmentation.on:
            return images, masks
        return augment.apply(images, masks, order.jitters(self.seed, len(self.decoded), first, self.batch),
                             self.augmentation)


class ValidationBatches(keras.utils.PyDataset):
    """`steps` batches in file order, the same every epoch (wrapping around, as the tf.data
    validation set does when validation_steps exceeds one pass)."""

    def __init__(self, decoded: Decoded, batch: int, steps: int):
        super().__init__()
        self.decoded, self.batch, self.steps = decoded, batch, steps
        self.per_pass = -(-len(decoded) // batch)

    @property
    def num_batches(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        first = (index % self.per_pass) * self.batch
        return self.decoded.images[first:first + self.batch], self.decoded.masks[first:first + self.batch]
