"""The worker's Prometheus metrics: outcome labels as the dashboards and alerts query them."""

from prometheus_client import generate_latest

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
