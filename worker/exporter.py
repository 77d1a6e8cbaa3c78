"""Every metric a worker exports, defined in one place, on one registry.

Labels stay bounded: `metric` takes the model's metric names, `outcome` a `TrialOutcome`, and
`trial_id` one trial at a time: `ktc_worker_trial`'s the trial running now (its series ends with
the trial), `ktc_worker_epoch_metric`'s the trial of the last finished epoch (its series ends when
the worker's next trial finishes an epoch).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from kt_cluster.worker.outcome import TrialOutcome

EPOCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class WorkerMetrics:
    def __init__(self, tuner_id: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds and friends: restarts, memory
        self.info = Info("ktc_worker", "This worker's identity.", registry=r)
        self.info.info({"tuner_id": tuner_id})
        self.trial = Gauge("ktc_worker_trial", "1 for the trial this worker is running now.",
                           ["tuner_id", "trial_id"], registry=r)
        self.epoch = Gauge("ktc_worker_current_epoch", "Epoch in progress (0-based); -1 when no trial runs.",
                           registry=r)
        self.epoch_metric = Gauge("ktc_worker_epoch_metric",
                                  "Training and validation metrics of the last epoch this worker finished.",
                                  ["trial_id", "metric"], registry=r)
        self.epoch_seconds = Histogram("ktc_worker_epoch_duration_seconds", "Wall time of one epoch, validation included.",
                                       buckets=EPOCH_BUCKETS, registry=r)
        self.step_seconds = Histogram("ktc_worker_step_duration_seconds", "Wall time of one training step.",
                                      buckets=STEP_BUCKETS, registry=r)
        self.epochs = Counter("ktc_worker_epochs", "Epochs finished.", registry=r)
        self.trials = Counter("ktc_worker_trials", "Trials this worker stopped running, by outcome.",
                              ["outcome"], registry=r)
        for outcome in TrialOutcome:
            self.trials.labels(outcome=outcome.value)
        self.idle_seconds = Counter("ktc_worker_idle_seconds", "Time spent waiting for a trial.", registry=r)
        self.busy = Gauge("ktc_worker_busy", "1 while a trial runs, 0 while waiting.", registry=r)
        self.tuner_id = tuner_id
        self._epoch_metric_trial: str | None = None
        self.epoch.set(-1)

    def trial_started(self, trial_id: str) -> None:
        self.trial.labels(tuner_id=self.tuner_id, trial_id=trial_id).set(1)
        self.busy.set(1)

    def epoch_ended(self, trial_id: str, logs: dict[str, float], seconds: float) -> None:
        # A trial's final epoch stays until the next trial has an epoch of its own: a worker starts
        # its next trial at once, and a scrape during that trial's model build and first epoch
        # still sees how the last one ended.
        if trial_id != self._epoch_metric_trial:
            self.epoch_metric.clear()
            self._epoch_metric_trial = trial_id
        for name, value in logs.items():
            self.epoch_metric.labels(trial_id=trial_id, metric=name).set(value)
        self.epoch_seconds.observe(seconds)
        self.epochs.inc()

    def trial_ended(self, trial_id: str, outcome: TrialOutcome) -> None:
        self.trials.labels(outcome=outcome.value).inc()
        self.trial.clear()
        self.epoch.set(-1)
        self.busy.set(0)
