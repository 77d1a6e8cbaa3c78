"""tf.data input pipelines: from decoded examples in memory, or read lazily from disk, and
errors that name bad files.

    train, val, steps, val_steps = datasets(config, start_batch=e * steps, decoded=...)
    with explain_data_errors(config):
        model.fit(train, validation_data=val, epochs=..., steps_per_epoch=steps,
                  validation_steps=val_steps)

The train set follows `order`: an endless stream whose batch b is a pure function of (seed, b),
so `start_batch` resumes it exactly; with `data.augment` its examples are then zoomed and
shifted (`augment`) by draws that are a pure function of the same. A split given in `decoded`
(tensors that `resident` made from `decode`'s arrays) is served from memory; any other split is
streamed: building its dataset lists file names only (a missing mask or class directory is a
`DatasetError` right away) and files are opened while iterating. A file that cannot be used
then surfaces as a tf error, which `explain_data_errors` turns into a `DataError` naming it:

* not a PNG/JPEG, a mask with other than one channel, or a mask whose size differs from its
  image: checked in the graph by assertions that carry the path in their message;
* anything else that fails to decode (e.g. a truncated file): tf's message has no path, so
  `find_bad_file` scans the dataset with PIL to name the culprit (only on that error path).

Errors that no file explains (out of memory, bugs in the model, ...) pass through unchanged.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf

from kt_cluster.core.config import SearchConfig
from kt_cluster.core.dataset import SPLITS, Example, check_example, list_examples
from kt_cluster.worker.data import augment, order
from kt_cluster.worker.data.examples import DataError, Decoded, Listing, listing

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Assertion data is printed in the tf error as "[OPEN] [<path>: <problem>] [CLOSE]".
OPEN, CLOSE = "ktc-bad-file<", ">ktc-bad-file"
BAD_FILE = re.compile(re.escape(f"[{OPEN}] [") + "(.+?)" + re.escape(f"] [{CLOSE}]"), re.DOTALL)
Loader = Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
FILE_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.DataLossError)
DECODE_BATCH = 64  # examples decoded per step of `decode`


def datasets(config: SearchConfig, start_batch: int = 0, seed: int | None = None,
             decoded: dict[str, Decoded] | None = None,
             examples: Listing | None = None) -> tuple[tf.data.Dataset, tf.data.Dataset, int, int]:
    """(train, val, steps_per_epoch, validation_steps) for `model.fit`.

    Batches are (images, masks): images float32 in [0, 1], (batch, size, size, channels);
    masks float32 in {0, 1}, (batch, size, size, len(classes)). The train set is the stream of
    `order` for `seed` (default: config.seed, else 0) from batch `start_batch` on, endless, so
    steps_per_epoch defines an epoch. The validation set yields exactly validation_steps
    batches, the same ones every epoch. `decoded` maps "train" and/or "val" to that split
    decoded (`resident`); `examples` is the split listing when the caller has it already.
    Either way the batches are the same, in the same order.
    """
    examples = examples or listing(config)
    decoded = decoded or {}
    batch = config.batch_size
    seed = (config.seed or 0) if seed is None else seed
    parallel = config.data.parallel_calls or tf.data.AUTOTUNE
    load = _loader(config.data.image_size, config.data.channels, len(examples.classes))
    augmentation = config.data.augment
    # Each element: an example index, and with augmentation that position's `order.jitter` row.
    stream = _stream(seed, len(examples.train), start_batch * batch, augmentation.on)
    if "train" in decoded:
        images, masks = decoded["train"].images, decoded["train"].masks
        train = stream.batch(batch, drop_remainder=True).map(
            lambda i, *draws: (tf.gather(images, i), tf.gather(masks, i), *draws), num_parallel_calls=parallel)
    else:
        paths = _paths(examples.train)
        image_paths, mask_paths = (tf.constant(p) for p in paths)
        train = stream.map(lambda i, *draws: (tf.gather(image_paths, i), tf.gather(mask_paths, i), *draws))
        train = train.map(lambda image, mask, *draws: (*load(image, mask), *draws), num_parallel_calls=parallel)
        train = train.batch(batch, drop_remainder=True)
    if augmentation.on:
        train = train.map(lambda x, y, draws: augment.apply_tf(x, y, draws, augmentation), num_parallel_calls=parallel)
    train = train.prefetch(tf.data.AUTOTUNE)
    if "val" in decoded:
        val = tf.data.Dataset.from_tensor_slices((decoded["val"].images, decoded["val"].masks))
    else:
        val = tf.data.Dataset.from_tensor_slices(_paths(examples.val)).map(load, num_parallel_calls=parallel)
    # Batch before repeat so every validation pass starts at the first example; take() keeps
    # it finite, so Keras restarts it each epoch and evaluate(val) ends.
    val = val.batch(batch).repeat().take(examples.val_steps).prefetch(tf.data.AUTOTUNE)
    return train, val, examples.steps, examples.val_steps


def decode(config: SearchConfig, examples: list[Example], num_classes: int) -> Decoded:
    """The examples decoded, checked and resized exactly as the streamed pipeline does, in file
    order, as numpy arrays (call it inside `explain_data_errors`)."""
    load = _loader(config.data.image_size, config.data.channels, num_classes)
    parallel = config.data.parallel_calls or tf.data.AUTOTUNE
    batches = tf.data.Dataset.from_tensor_slices(_paths(examples)).map(load, num_parallel_calls=parallel)
    images, masks = [], []
    for x, y in batches.batch(DECODE_BATCH).prefetch(1):
        images.append(x.numpy())
        masks.append(y.numpy())
    return Decoded(np.concatenate(images), np.concatenate(masks))


def resident(decoded: Decoded) -> Decoded:
    """The arrays as tensors in host memory, made once and captured by every trial's pipeline
    (a numpy array would be copied into each pipeline's graph)."""
    with tf.device("/CPU:0"):
        return Decoded(tf.constant(decoded.images), tf.constant(decoded.masks))


def _stream(seed: int, n: int, start: int, jitter: bool) -> tf.data.Dataset:
    """The train stream from position `start` (see `order`): example indices, or with `jitter`
    (index, augmentation draws) pairs."""
    first_pass, offset = divmod(start, n)
    passes = tf.data.Dataset.range(first_pass, np.iinfo(np.int64).max)

    def per_pass(draw: Callable[[int, int, int], np.ndarray], dtype: tf.DType, shape: list[int]) -> tf.data.Dataset:
        def of_pass(p: np.int64) -> np.ndarray:
            return draw(seed, n, int(p))

        return passes.map(lambda p: tf.ensure_shape(tf.numpy_function(of_pass, [p], dtype, stateful=False), shape))

    indices = per_pass(order.permutation, tf.int64, [n])
    if jitter:
        return tf.data.Dataset.zip((indices, per_pass(order.jitter, tf.float32, [n, 3]))).unbatch().skip(offset)
    return indices.unbatch().skip(offset)


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


def _paths(examples: list[Example]) -> tuple[list[str], list[list[str]]]:
    return [str(e.image) for e in examples], [[str(m) for m in e.masks] for e in examples]


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
