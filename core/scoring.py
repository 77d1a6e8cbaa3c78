"""A trial's score that one lucky epoch cannot make: the best mean of `window` consecutive epochs.

Validation scores of small segmentation sets swing between epochs (0.33, 0.02, 0.36 happens):
a trial scored by its single best epoch ranks by luck. The score here is the best mean over any
`window` consecutive epochs (the mean of all of them for a trial with fewer epochs: a shorter
window at its start would be as spiky as one epoch). The same rule judges a trial everywhere:
the chief's ranking and ASHA's and Hyperband's promotions (`compat.OracleSeam.score_trial`) and
the worker's best-epoch checkpoint (`WindowTracker`, in `kt_cluster.worker.checkpoints`), kept
at the last epoch of the best window, so the best model written at the end is the one the score
describes. A window of 1 is keras-tuner's rule: the best epoch.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence


def window_scores(values: Sequence[float], window: int) -> list[float]:
    """For each epoch, the mean of the `window` epochs ending there (fewer at the start)."""
    if window < 1:
        raise ValueError(f"window: must be >= 1, got {window}")
    # Each mean summed afresh (epochs are few): a running sum would drift, and window 1 must give
    # the values themselves, exactly.
    scores = []
    for i in range(len(values)):
        recent = values[max(0, i + 1 - window):i + 1]
        scores.append(sum(recent) / len(recent))
    return scores


def best_window(values: Sequence[float], window: int, direction: str = "max") -> tuple[float, int] | None:
    """(score, index of the epoch that ends the best full window), the first of equals; for fewer
    epochs than `window`, (their mean, the last index); None if empty."""
    scores = window_scores(values, window)
    if not scores:
        return None
    full = range(min(window, len(scores)) - 1, len(scores))
    pick = max if direction == "max" else min
    index = pick(full, key=scores.__getitem__)
    return scores[index], index


class WindowTracker:
    """Follows one trial epoch by epoch: is this epoch the end of its best window so far?"""

    def __init__(self, window: int, direction: str = "max", history: Sequence[float] = ()) -> None:
        if window < 1:
            raise ValueError(f"window: must be >= 1, got {window}")
        self.window, self.direction = window, direction
        self.recent: deque[float] = deque(maxlen=window)
        self.best: float | None = None
        self.best_partial = True  # `best` is still the mean of fewer than `window` epochs
        for value in history:  # the epochs before a resume
            self.add(value)

    def add(self, value: float) -> bool:
        """Record one epoch's value; True when the window ending here is the best so far. Until
        the first full window every epoch is (the trial's score is then the mean of them all)."""
        self.recent.append(float(value))
        score = sum(self.recent) / len(self.recent)
        if len(self.recent) < self.window or self.best is None or self.best_partial:
            self.best, self.best_partial = score, len(self.recent) < self.window
            return True
        if score > self.best if self.direction == "max" else score < self.best:
            self.best = score
            return True
        return False
