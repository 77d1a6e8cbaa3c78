"""What the chief's oracle prints about trials: one debug line per ended trial, nothing else.

keras-tuner's `Display` prints a hyperparameter table on every CreateTrial and a summary on every
EndTrial, each time sorting all trials for the "best so far" (O(trials log trials) per call), and
keeps start times and numbers of every trial, which `save()` formatted on every call. A chief
serving hundreds of trials a second cannot afford that; `ktc status`, the metrics and `ktc results`
show the search instead.
"""

from __future__ import annotations

import logging
from datetime import datetime

from keras_tuner.engine import trial as trial_module

from kt_cluster.core import compat

log = logging.getLogger("ktc.chief")


class QuietDisplay(compat.Display):
    """keras-tuner's Display, made cheap: keeps nothing per trial, logs ended trials at DEBUG."""

    def __init__(self, oracle):
        super().__init__(oracle=oracle, verbose=0)

    def on_trial_begin(self, trial: trial_module.Trial) -> None:
        if self.search_start is None:
            self.search_start = datetime.now()

    def on_trial_end(self, trial: trial_module.Trial) -> None:
        log.debug("trial %s ended %s, %s: %s", trial.trial_id, trial.status, self.oracle.objective.name, trial.score)

    def set_state(self, state: dict) -> None:
        """A restored search starts its clock again (keras-tuner's Display state is per process)."""
        super().set_state(state)
        self.search_start = datetime.now()
