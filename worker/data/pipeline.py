"""tf.data input pipelines that read a dataset lazily from disk, and errors that name bad files.

    train, val, steps, val_steps = datasets(config)
    with explain_data_errors(config):
        model.fit(train, validation_data=val, epochs=..., steps_per_epoch=steps,
                  validation_steps=val_steps)

Building the datasets lists file names only (a missing mask or class directory is a
`DatasetError` right away); files are opened while iterating. A file that cannot be used
then surfaces as a tf error, which `explain_data_errors` turns into a `DataError` naming it:

* not a PNG/JPEG, a mask with other than one channel, or a mask whose size differs from its
  image: checked in the graph by assertions that carry the path in their message;
* anything else that fails to decode (e.g. a truncated file): tf's message has no path, so
  `find_bad_file` scans the dataset with PIL to name the culprit (only on that error path).

Errors that no file explains (out of memory, bugs in the model, ...) pass through unchanged.
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf
from PIL import Image

from kt_cluster.core.config import SearchConfig
from kt_cluster.core.dataset import SPLITS, DatasetError, Example, check_classes, check_example, list_examples, open_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Assertion data is printed in the tf error as "[OPEN] [<path>: <problem>] [CLOSE]".
OPEN, CLOSE = "ktc-bad-file<", ">ktc-bad-file"
BAD_FILE = re.compile(re.escape(f"[{OPEN}] [") + "(.+?)" + re.escape(f"] [{CLOSE}]"), re.DOTALL)
Loader = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
FILE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError)


class DataError(DatasetError):
    """A data file that cannot be used; the message starts with its path."""


def datasets(config: SearchConfig) -> tuple[tf.data.Dataset, tf.data.Dataset, int, int]:
    """(train, val, steps_per_epoch, validation_steps) for `model.fit`.

    Batches are (images, masks): images float32 in [0, 1], (batch, size, size, channels);
    masks float32 in {0, 1}, (batch, size, size, len(classes)). The train set is shuffled
    (file paths, so a buffer as large as the set costs little memory; seeded by config.seed)
    and repeats forever, so steps_per_epoch defines an epoch. The
    validation set yields exactly validation_steps batches, the same ones every epoch.

    Splits whose decoded examples (float32, after resizing) fit in `data.cache_mb` MiB, the
    validation examples first, then the train set, are decoded once and then served from
    memory: later epochs, and every validation pass, no longer decode PNGs on the cores that
    train (on CPU, concurrent decoding slows big training steps down far more than its own
    cost). What does not fit streams from disk. Either way the batches are the same, in the
    same order.
    """
    root, batch = config.data_dir, config.batch_size
    classes = check_classes(root, config.data.classes)
    train_examples = list_examples(root, "train", classes)
    val_examples = list_examples(root, "val", classes)
    steps = config.data.steps_per_epoch or math.ceil(len(train_examples) / batch)
    val_steps = config.data.validation_steps or math.ceil(len(val_examples) / batch)
    parallel = config.data.parallel_calls or tf.data.AUTOTUNE
    load = _loader(config.data.image_size, config.data.channels, len(classes))
    # Only the examples validation reads: a cache must be read to its end to be kept.
    val_examples = val_examples[:val_steps * batch]
    cache_val, cache_train = cache_plan(config, len(val_examples), len(train_examples), len(classes))
    shuffle = dict(buffer_size=config.data.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    if cache_train:
        # Shuffling decoded examples with the same seed gives the order shuffling paths gives.
        train = _paths(train_examples).map(load, num_parallel_calls=parallel).cache().shuffle(**shuffle).repeat()
    else:
        train = _paths(train_examples).shuffle(**shuffle).repeat().map(load, num_parallel_calls=parallel)
    train = train.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    val = _paths(val_examples).map(load, num_parallel_calls=parallel)
    if cache_val:
        val = val.cache()
    # Batch before repeat so every validation pass starts at the first example; take() keeps
    # it finite, so Keras restarts it each epoch and evaluate(val) ends.
    val = val.batch(batch).repeat().take(val_steps).prefetch(tf.data.AUTOTUNE)
    return train, val, steps, val_steps


def cache_plan(config: SearchConfig, val_examples: int, train_examples: int, num_classes: int) -> tuple[bool, bool]:
    """(cache val, cache train): what fits in data.cache_mb MiB of decoded float32 examples, val first."""
    size = config.data.image_size
    per_example = size * size * (config.data.channels + num_classes) * 4
    budget = config.data.cache_mb * 2**20
    cache_val = val_examples * per_example <= budget
    if cache_val:
        budget -= val_examples * per_example
    return cache_val, train_examples * per_example <= budget


@contextlib.contextmanager
def explain_data_errors(config: SearchConfig) -> Iterator[None]:
    """Re-raise tf errors caused by a bad data file as `DataError` naming that file."""
    try:
        yield
    except FILE_ERRORS as exc:
        culprit = bad_file_in(exc.message) or find_bad_file(config)
        if culprit is None:
            raise
        raise DataError(culprit) from exc


def bad_file_in(message: str) -> str | None:
    """'<path>: <problem>' from a tf error raised by this pipeline's assertions, if any."""
    match = BAD_FILE.search(message)
    return match.group(1) if match else None


def find_bad_file(config: SearchConfig) -> str | None:
    """'<path>: <problem>' for the first unusable file of the dataset (decoded with PIL), or None.

    Reads every file, so it is meant for the error path, not for routine checks.
    """
    for split in SPLITS:
        for example in list_examples(config.data_dir, split, config.data.classes):
            problem = check_example(example)
            if problem is not None:
                return problem
    return None


def positive_fractions(config: SearchConfig, max_files: int = 64, floor: float = 1e-4) -> list[float]:
    """Per class, the fraction of mask pixels that are object, from up to `max_files` train masks.

    Masks are resized (nearest) to the training size first, as the pipeline does. Values are
    clipped to [floor, 1 - floor] so an absent class still gets a usable, finite weight.
    """
    classes = check_classes(config.data_dir, config.data.classes)
    examples = list_examples(config.data_dir, "train", classes)
    picks = np.unique(np.linspace(0, len(examples) - 1, min(len(examples), max_files)).round().astype(int))
    size = config.data.image_size
    totals = np.zeros(len(classes))
    for index in picks:
        totals += [_positive_fraction(path, size) for path in examples[index].masks]
    return [float(v) for v in np.clip(totals / len(picks), floor, 1 - floor)]


def _paths(examples: list[Example]) -> tf.data.Dataset:
    images = [str(e.image) for e in examples]
    masks = [[str(m) for m in e.masks] for e in examples]
    return tf.data.Dataset.from_tensor_slices((images, masks))


def _loader(size: int, channels: int, num_classes: int) -> Loader:
    """The per-example map function: (image path, mask paths) -> (image, masks) tensors."""

    def load(image_path: tf.Tensor, mask_paths: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        data = _read(image_path, (PNG_SIGNATURE, JPEG_SIGNATURE), "not a PNG or JPEG image")
        image = tf.io.decode_image(data, channels=channels, dtype=tf.float32, expand_animations=False)
        hw = tf.shape(image)[:2]
        masks = tf.stack([_load_mask(mask_paths[i], image_path, hw) for i in range(num_classes)], axis=-1)
        image = tf.image.resize(image, (size, size), "bilinear", antialias=True)
        masks = tf.image.resize(masks, (size, size), "nearest")
        image = tf.ensure_shape(tf.clip_by_value(image, 0.0, 1.0), (size, size, channels))
        return image, tf.ensure_shape(masks, (size, size, num_classes))

    return load


def _load_mask(path: tf.Tensor, image_path: tf.Tensor, image_hw: tf.Tensor) -> tf.Tensor:
    """One mask as float32 (H, W) in {0, 1}, after checking its channels and size."""
    data = _read(path, (PNG_SIGNATURE,), "not a PNG image")
    mask = tf.io.decode_png(data, channels=0, dtype=tf.uint16)  # 16 bits: keeps small values > 0
    shape = tf.shape(mask)
    one_channel = _require(tf.equal(shape[2], 1), path, "mask has ", tf.strings.as_string(shape[2]),
                           " channels, expected 1 (save it as 8-bit grayscale)")
    same_size = _require(tf.reduce_all(tf.equal(shape[:2], image_hw)), path,
                         "mask is ", _hw(shape), " pixels but its image ", image_path, " is ", _hw(image_hw))
    with tf.control_dependencies([one_channel, same_size]):
        return tf.cast(mask[..., 0] > 0, tf.float32)


def _read(path: tf.Tensor, signatures: tuple[bytes, ...], problem: str) -> tf.Tensor:
    """The file's bytes, after checking they start like one of the accepted formats."""
    data = tf.io.read_file(path)
    known = tf.reduce_any([tf.equal(tf.strings.substr(data, 0, len(s)), s) for s in signatures])
    with tf.control_dependencies([_require(known, path, problem, " (corrupt or wrong format)")]):
        return tf.identity(data)


def _require(condition: tf.Tensor, path: tf.Tensor, *problem: str | tf.Tensor) -> tf.Operation:
    return tf.debugging.Assert(condition, [OPEN, tf.strings.join([path, ": ", *problem]), CLOSE])


def _hw(shape: tf.Tensor) -> tf.Tensor:
    return tf.strings.join([tf.strings.as_string(shape[1]), "x", tf.strings.as_string(shape[0])])


def _positive_fraction(path: Path, size: int) -> float:
    image, problem = open_image(path, ("PNG",))
    if problem is not None:
        raise DataError(problem)
    mask = np.asarray(image.resize((size, size), Image.Resampling.NEAREST))
    return float(np.mean(mask.reshape(size, size, -1)[..., 0] > 0))
