"""The examples a worker trains on: which ones an epoch uses, which fit in its memory, decoded.

Nothing here needs TensorFlow: Keras on any backend can train from these arrays (the tf.data
pipeline in `pipeline.py` is the TensorFlow path, and the only one that streams from disk).

A worker decodes the splits that fit in `data.cache_mb` once, the first time a trial needs them,
and every later trial of that worker trains from the same arrays: no trial after the first reads
or decodes a file of a split that fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kt_cluster.core.config import SearchConfig
from kt_cluster.core.dataset import DatasetError, Example, check_classes, check_example, list_examples, open_image


class DataError(DatasetError):
    """A data file that cannot be used; the message starts with its path."""


@dataclass(frozen=True)
class Listing:
    """The examples of one search: listed once (names only, no file opened)."""

    classes: list[str]
    train: list[Example]
    val: list[Example]  # only those validation reads: the first validation_steps batches
    steps: int  # training steps per epoch
    val_steps: int


@dataclass
class Decoded:
    """A split decoded and resized, in file order: images float32 in [0, 1], (n, size, size,
    channels); masks float32 in {0, 1}, (n, size, size, classes). Arrays of the backend in use."""

    images: object
    masks: object

    def __len__(self) -> int:
        return int(self.images.shape[0])


def listing(config: SearchConfig) -> Listing:
    root, batch = config.data_dir, config.batch_size
    classes = check_classes(root, config.data.classes)
    train = list_examples(root, "train", classes)
    val = list_examples(root, "val", classes)
    steps = config.data.steps_per_epoch or math.ceil(len(train) / batch)
    val_steps = config.data.validation_steps or math.ceil(len(val) / batch)
    return Listing(classes, train, val[:val_steps * batch], steps, val_steps)


def cache_plan(config: SearchConfig, val_examples: int, train_examples: int, num_classes: int) -> tuple[bool, bool]:
    """(keep val, keep train) in memory: what fits in data.cache_mb MiB of decoded float32
    examples, val first (every epoch reads all of it again, identically)."""
    size = config.data.image_size
    per_example = size * size * (config.data.channels + num_classes) * 4
    budget = config.data.cache_mb * 2**20
    cache_val = val_examples * per_example <= budget
    if cache_val:
        budget -= val_examples * per_example
    return cache_val, train_examples * per_example <= budget


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


def decode_with_pillow(examples: list[Example], size: int, channels: int) -> Decoded:
    """Decode with Pillow (no TensorFlow): bilinear resizing, antialiased when shrinking, as
    TensorFlow's; pixel values can differ from the tf.data pipeline's in the last bits."""
    images = np.empty((len(examples), size, size, channels), np.float32)
    masks = np.empty((len(examples), size, size, len(examples[0].masks) if examples else 0), np.float32)
    mode = "RGB" if channels == 3 else "L"
    for i, example in enumerate(examples):
        problem = check_example(example)
        if problem is not None:
            raise DataError(problem)
        with Image.open(example.image) as image:
            resized = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
        images[i] = np.asarray(resized, np.float32).reshape(size, size, channels) / 255.0
        for c, path in enumerate(example.masks):
            with Image.open(path) as mask:
                masks[i, ..., c] = np.asarray(mask.resize((size, size), Image.Resampling.NEAREST)) > 0
    return Decoded(images, masks)


def _positive_fraction(path: Path, size: int) -> float:
    image, problem = open_image(path, ("PNG",))
    if problem is not None:
        raise DataError(problem)
    mask = np.asarray(image.resize((size, size), Image.Resampling.NEAREST))
    return float(np.mean(mask.reshape(size, size, -1)[..., 0] > 0))
