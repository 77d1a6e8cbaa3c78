"""How a worker's turn with a trial ended: the `outcome` label of `ktc_worker_trials` and its log."""

from __future__ import annotations

from enum import Enum


class TrialOutcome(str, Enum):
    COMPLETED = "completed"  # trained to the end and reported
    STOPPED_EARLY = "stopped_early"  # the chief's median rule stopped it; reported
    FAILED = "failed"  # raised an error that a retry would repeat (bad data, a model that cannot be built)
    INVALID = "invalid"  # raised an error a retry may not (out of memory, NaN loss); the chief may retry it
    HANDED_BACK = "handed_back"  # interrupted by SIGTERM and handed back for another worker to resume
    LEASE_LOST = "lease_lost"  # the chief gave it to someone else, or refused the result

    def __str__(self) -> str:  # the label value (`enum.StrEnum` needs Python 3.11)
        return self.value
