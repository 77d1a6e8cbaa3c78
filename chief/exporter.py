"""Every metric the chief exports, defined in one place, on one registry.

Counters and histograms are updated as events happen; the search state (trials by status, best
objective, leases) is read from the oracle at scrape time by `OracleCollector`, so it can never
drift from what the oracle holds. Label values are bounded: RPC method names, gRPC codes, trial
statuses, requeue reasons, tuner ids (one per worker) and the ids of the top `TOP_TRIALS` trials.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kt_cluster.chief.events import Events

TOP_TRIALS = 20
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STATUSES = ("RUNNING", "IDLE", "COMPLETED", "INVALID", "FAILED", "STOPPED")
log = logging.getLogger("ktc.chief")


class ChiefMetrics(Events):
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_start_time_seconds and friends: restarts, memory
        self.rpc_requests = Counter("ktc_chief_rpc_requests", "gRPC calls served, by method and status code.",
                                    ["method", "code"], registry=r)
        self.rpc_duration = Histogram("ktc_chief_rpc_duration_seconds", "Time to serve a gRPC call, by method.",
                                      ["method"], buckets=RPC_BUCKETS, registry=r)
        self.leases_expired = Counter("ktc_chief_leases_expired", "Trial leases that lapsed because their worker went silent.",
                                      registry=r)
        self.requeued_total = Counter("ktc_chief_trials_requeued", "Trials put back in the queue, by reason (lease_expired, handback).",
                                ["reason"], registry=r)
        self.trials_ended = Counter("ktc_chief_trials_ended", "EndTrial calls accepted, by the status the trial ended with.",
                                    ["status"], registry=r)
        self.early_stops = Counter("ktc_chief_trials_stopped_early", "Trials stopped by the median stopping rule.",
                                   registry=r)
        self.info = Info("ktc_search", "The search this chief runs.", registry=r)
        self.token_file_exposed = Gauge(
            "ktc_chief_auth_token_file_exposed",
            "1 when the bearer token file is readable by others or by a group the chief is not in.", registry=r)
        self.config_refused = Gauge(
            "ktc_chief_config_refused",
            "1 while the chief refuses to start: the configured search differs in meaning from the stored one "
            "(its log says which field).", registry=r)
        self._rpc_children: dict[tuple[str, str], tuple] = {}
        # Create every labelled series at 0, so rate() counts the first event too.
        for status in ("completed", "failed", "invalid"):
            self.trials_ended.labels(status=status)
        for reason in ("lease_expired", "handback"):
            self.requeued_total.labels(reason=reason)

    def rpc_served(self, method: str, code: str, seconds: float) -> None:
        """Count and time one call. The labelled children are looked up once per (method, code):
        `labels()` costs a lock and a tuple hash per call, on every RPC the chief serves."""
        pair = self._rpc_children.get((method, code))
        if pair is None:
            pair = self._rpc_children[(method, code)] = (
                self.rpc_duration.labels(method=method), self.rpc_requests.labels(method=method, code=code))
        pair[0].observe(seconds)
        pair[1].inc()

    def lease_expired(self, trial_id: str, tuner_id: str) -> None:
        self.leases_expired.inc()

    def requeued(self, trial_id: str, reason: str) -> None:
        self.requeued_total.labels(reason=reason).inc()

    def stopped_early(self, trial_id: str) -> None:
        self.early_stops.inc()

    def trial_ended(self, trial) -> None:
        self.trials_ended.labels(status=trial.status.lower()).inc()

    def watch(self, oracle) -> None:
        self.registry.register(OracleCollector(oracle))


def hp_label(name: str) -> str:
    """A hyperparameter's label name: `hp_` + its name with anything Prometheus forbids as `_`."""
    return "hp_" + re.sub(r"[^a-zA-Z0-9_]", "_", name)


def hyperparameters_info(top_trials: list[tuple[str, float, dict[str, Any]]]) -> GaugeMetricFamily:
    """One series per top trial (bounded: TOP_TRIALS), its hyperparameter values as labels; a
    hyperparameter a trial lacks (inactive under a condition) is an empty label."""
    labels: dict[str, str] = {}  # hyperparameter name -> its label, unique ("a-b" and "a_b" both exist)
    for name in sorted({n for _, _, values in top_trials for n in values}):
        label = hp_label(name)
        while label in labels.values():
            label += "_"
        labels[name] = label
    info = GaugeMetricFamily("ktc_chief_trial_hyperparameters_info",
                             f"Hyperparameters of the best {TOP_TRIALS} completed trials, as labels hp_<name>; value 1.",
                             labels=["trial_id", *labels.values()])
    for trial_id, _, values in top_trials:
        info.add_metric([trial_id, *(str(values.get(name, "")) for name in labels)], 1)
    return info


class OracleCollector(Collector):
    """Search state read from the oracle at scrape time.

    Each group of metrics is built whole before any of it is yielded; a group that fails (a bad
    trial an old state may hold, a bug) is left out of that scrape and logged once, so one bad
    record never turns a scrape into an HTTP 500 (the other groups, and every other collector,
    still answer)."""

    def __init__(self, oracle):
        self.oracle = oracle
        self._logged: set[tuple[str, str]] = set()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            status = self.oracle.status()
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            self._left_out("status", exc)
            status = None
        for group in (self._search, self._top, self._setbacks, self._workers):
            if status is None and group in (self._search, self._workers):
                continue
            try:
                yield from list(group(status))
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                self._left_out(group.__name__.strip("_"), exc)

    def _left_out(self, group: str, exc: Exception) -> None:
        key = (group, type(exc).__name__)
        if key not in self._logged:
            self._logged.add(key)
            log.error("metrics: left out %s: %s: %s", group, type(exc).__name__, exc)

    def _search(self, status: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
        trials = GaugeMetricFamily("ktc_chief_trials", "Trials by status (queued trials count as IDLE).",
                                   labels=["status"])
        for name in STATUSES:
            trials.add_metric([name.lower()], status["trials"].get(name, 0))
        yield trials
        yield GaugeMetricFamily("ktc_chief_trials_max", "The search's trial budget (max_trials).",
                                value=status["max_trials"] or 0)
        yield GaugeMetricFamily("ktc_chief_worker_seconds", "Worker time the search's trials have spent training, "
                                "summed over workers (the epochs they reported).", value=status["worker_seconds"])
        yield GaugeMetricFamily("ktc_chief_worker_seconds_max", "The search's worker-time budget (max_worker_hours, "
                                "in seconds; 0: none).", value=status["max_worker_seconds"] or 0)
        yield GaugeMetricFamily("ktc_chief_search_done", "1 once the search is over.", value=int(status["done"]))
        yield GaugeMetricFamily("ktc_chief_search_failed", "1 when the search ended in failure.",
                                value=int(status["failure"] is not None))
        best = status["best"]
        if best is not None and best["score"] is not None:
            yield GaugeMetricFamily("ktc_chief_best_objective", "Best objective value so far.", value=float(best["score"]))

    def _top(self, status) -> Iterator[GaugeMetricFamily]:
        top_trials = self.oracle.top_trials(TOP_TRIALS)
        top = GaugeMetricFamily("ktc_chief_trial_objective", f"Objective of the best {TOP_TRIALS} completed trials.",
                                labels=["trial_id"])
        for trial_id, score, _ in top_trials:
            top.add_metric([trial_id], float(score))
        yield top
        yield hyperparameters_info(top_trials)

    def _setbacks(self, status) -> Iterator[GaugeMetricFamily]:
        setbacks = GaugeMetricFamily(
            "ktc_chief_trial_setback_info",
            f"The latest {TOP_TRIALS} trials that failed, are invalid (to be retried) or stopped early, "
            "with their error's first line; value 1.",
            labels=["trial_id", "status", "reason"])
        for trial_id, outcome, reason in self.oracle.recent_setbacks(TOP_TRIALS):
            setbacks.add_metric([trial_id, outcome, reason], 1)
        yield setbacks

    def _workers(self, status: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
        epoch = GaugeMetricFamily("ktc_chief_running_trial_epoch", "Last epoch each running trial reported (0-based).",
                                  labels=["trial_id", "tuner_id"])
        for running in status["running"]:
            epoch.add_metric([running["trial_id"], running["tuner_id"]], float(running["epoch"]))
        yield epoch
        seen = GaugeMetricFamily("ktc_chief_worker_last_seen_timestamp_seconds",
                                 "Unix time of each worker's last call to the chief.", labels=["tuner_id"])
        for tuner_id, when in status["workers"].items():
            seen.add_metric([tuner_id], when)
        yield seen
