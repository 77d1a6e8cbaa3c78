"""The order in which training steps see the examples: a pure function of (seed, position).

The train stream is endless: pass p over the n training examples is
`numpy.random.default_rng([seed, p]).permutation(n)`, and the stream is pass 0, pass 1, ...
one after the other; batch b holds stream positions [b * batch, (b + 1) * batch). Nothing
depends on how many streams were opened before or on which worker, so a trial resumed at epoch
e starts at batch e * steps_per_epoch and sees exactly the batches it would have seen had it run
straight through (and a promoted trial those its parent would have seen next).
"""

from __future__ import annotations

import numpy as np


def permutation(seed: int, n: int, p: int) -> np.ndarray:
    """Pass p of the stream: the n example indices in the order that pass visits them."""
    return np.random.default_rng([seed, p]).permutation(n).astype(np.int64)


def positions(seed: int, n: int, start: int, count: int) -> np.ndarray:
    """Example indices at stream positions [start, start + count)."""
    out = np.empty(count, dtype=np.int64)
    done = 0
    while done < count:
        p, offset = divmod(start + done, n)
        take = min(n - offset, count - done)
        out[done:done + take] = permutation(seed, n, p)[offset:offset + take]
        done += take
    return out
