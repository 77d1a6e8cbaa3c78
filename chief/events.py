"""What the chief's oracle tells observers: leases lapsing, trials requeued, stopped early, ended.

`Events` is the interface, with no-op defaults; the Prometheus exporter (`ChiefMetrics`) implements
it. The oracle calls it under its lock: an implementation must be quick.
"""

from __future__ import annotations

from keras_tuner.engine import trial as trial_module


class Events:
    """Callbacks the metrics layer hangs on; no-ops by default."""

    def lease_expired(self, trial_id: str, tuner_id: str) -> None: ...
    def requeued(self, trial_id: str, reason: str) -> None: ...
    def stopped_early(self, trial_id: str) -> None: ...
    def trial_ended(self, trial: trial_module.Trial) -> None: ...
