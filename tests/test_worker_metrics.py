"""The worker's Prometheus metrics: outcome labels as the dashboards and alerts query them."""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kt_cluster.worker.exporter import WorkerMetrics
from kt_cluster.worker.outcome import TrialOutcome


def test_every_outcome_is_a_series_from_the_start_labelled_by_its_plain_name():
    metrics = WorkerMetrics("worker-0")
    metrics.trial_started("07")
    metrics.trial_ended("07", TrialOutcome.HANDED_BACK)
    text = generate_latest(metrics.registry).decode()
    for outcome, value in (("completed", 0.0), ("stopped_early", 0.0), ("failed", 0.0), ("invalid", 0.0),
                           ("handed_back", 1.0), ("lease_lost", 0.0)):
        assert f'ktc_worker_trials_total{{outcome="{outcome}"}} {value}' in text
    assert "TrialOutcome" not in text and f"{TrialOutcome.LEASE_LOST}" == "lease_lost"


def _epoch_metrics(metrics: WorkerMetrics) -> dict[tuple[str, str], float]:
    text = generate_latest(metrics.registry).decode()
    return {(s.labels["trial_id"], s.labels["metric"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples if s.name == "ktc_worker_epoch_metric"}


def test_a_trials_final_epoch_stays_until_the_next_trial_finishes_an_epoch():
    metrics = WorkerMetrics("worker-0")
    metrics.trial_started("01")
    metrics.epoch_ended("01", {"loss": 0.5, "val_f1": 0.2}, 1.0)
    metrics.epoch_ended("01", {"loss": 0.4, "val_f1": 0.3}, 1.0)
    metrics.trial_ended("01", TrialOutcome.COMPLETED)
    metrics.trial_started("02")  # building and tracing its model: the last trial's end is still shown
    assert _epoch_metrics(metrics) == {("01", "loss"): 0.4, ("01", "val_f1"): 0.3}
    metrics.epoch_ended("02", {"loss": 0.9, "val_f1": 0.1}, 1.0)
    assert _epoch_metrics(metrics) == {("02", "loss"): 0.9, ("02", "val_f1"): 0.1}
