"""The order in which training steps see the examples: a pure function of (seed, position).

The train stream is endless: pass p over the n training examples is
`numpy.random.default_rng([seed, p]).permutation(n)`, and the stream is pass 0, pass 1, ...
one after the other; batch b holds stream positions [b * batch, (b + 1) * batch). Nothing
depends on how many streams were opened before or on which worker, so a trial resumed at epoch
e starts at batch e * steps_per_epoch and sees exactly the batches it would have seen had it run
straight through (and a promoted trial those its parent would have seen next). The random
draws of augmentation (`jitter`) follow the same rule: stream position k of pass p gets row
k - p * n of `jitter(seed, n, p)`, so a resumed trial's examples are augmented as before too.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def permutation(seed: int, n: int, p: int) -> np.ndarray:
    """Pass p of the stream: the n example indices in the order that pass visits them."""
    return np.random.default_rng([seed, p]).permutation(n).astype(np.int64)


def jitter(seed: int, n: int, p: int) -> np.ndarray:
    """Pass p's draws for augmentation: (n, 3) uniform in [-1, 1), one row per position of the pass."""
    return np.random.default_rng([seed, p, 1]).uniform(-1, 1, (n, 3)).astype(np.float32)


def positions(seed: int, n: int, start: int, count: int) -> np.ndarray:
    """Example indices at stream positions [start, start + count)."""
    return _at(permutation, seed, n, start, count)


def jitters(seed: int, n: int, start: int, count: int) -> np.ndarray:
    """Augmentation draws at stream positions [start, start + count)."""
    return _at(jitter, seed, n, start, count)


def _at(per_pass: Callable[[int, int, int], np.ndarray], seed: int, n: int, start: int, count: int) -> np.ndarray:
    """Rows [start, start + count) of the stream of `per_pass(seed, n, 0)`, `per_pass(seed, n, 1)`, ..."""
    parts = []
    while count > 0:
        p, offset = divmod(start, n)
        take = min(n - offset, count)
        parts.append(per_pass(seed, n, p)[offset:offset + take])
        start, count = start + take, count - take
    return np.concatenate(parts) if parts else per_pass(seed, n, 0)[:0]
