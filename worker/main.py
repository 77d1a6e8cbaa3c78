"""`ktc worker`: train trials for the chief until it says the search is over."""

from __future__ import annotations

import gc
import logging

from kt_cluster.core import compat  # noqa: F401 - first: refuses an untested keras-tuner before anything imports it
from kt_cluster.core import dataset
from kt_cluster.core.config import SearchConfig
from kt_cluster.core.metrics_http import MetricsServer
from kt_cluster.core.neptune_tracking import NeptuneTracker
from kt_cluster.core.protocol import check_tuner_id
from kt_cluster.core.tuner import build_tuner
from kt_cluster.worker import devices
from kt_cluster.worker.client import ChiefClient
from kt_cluster.worker.data import examples
from kt_cluster.worker.data.feed import TrainingData
from kt_cluster.worker.exporter import WorkerMetrics
from kt_cluster.worker.runner import Worker
from kt_cluster.worker.tuner import WorkerTuner, search_seed

log = logging.getLogger("ktc.worker")


def run_worker(config: SearchConfig, address: str, tuner_id: str, token: str | None, metrics_port: int,
               grace_seconds: float, threads: int | None = None, gpu_memory_mb: int | None = None,
               final_scrape_seconds: float = 0.0) -> int:
    """Train trials until the search is over; then, for up to `final_scrape_seconds`, serve /metrics
    until one scrape has read this worker's final counts."""
    tuner_id = check_tuner_id(tuner_id)
    gpus = devices.configure(threads, gpu_memory_mb)
    strategy = devices.strategy(gpus, config.batch_size)
    log.info("worker %s: GPUs %s%s", tuner_id, gpus or "none",
             f", each trial on all {len(gpus)} (MirroredStrategy)" if strategy else "")
    metrics = WorkerMetrics(tuner_id)
    http_server = MetricsServer(metrics.registry, metrics_port)
    tracker = NeptuneTracker.for_worker(config, tuner_id)
    try:
        tuner = build_tuner(config, class_fractions=_class_fractions(config), tuner_class=WorkerTuner,
                            seed=search_seed(config), score_window=config.score_window,
                            cosine_horizon=config.horizon if config.lr_schedule == "cosine" else None,
                            distribution_strategy=strategy)
        client = ChiefClient(tuner.oracle, address, tuner_id, token)
        tuner.oracle = client
        worker = Worker(config, tuner, client, metrics, TrainingData(config), grace_seconds=grace_seconds,
                        tracker=tracker)
        worker.install_signal_handlers()
        # What exists now (TensorFlow, Keras, keras-tuner: ~400,000 objects) lives as long as the
        # process; frozen, it is no longer scanned by the collection each trial's build runs.
        gc.collect()
        gc.freeze()
        code = worker.run()
        if final_scrape_seconds > 0 and worker.trials_run and not worker.stopping.is_set():
            # The last trial's counts would otherwise end with the process, unscraped. A process
            # that ran no trial (restarted after the end, in a pod) has nothing to tell.
            http_server.wait_for_final_scrape(final_scrape_seconds, worker.stopping)
        return code
    finally:
        http_server.stop()
        if tracker:
            tracker.stop()


def _class_fractions(config: SearchConfig) -> list[float] | None:
    """Class balance for the loss; with unreadable data the trials fail and say why."""
    try:
        return examples.positive_fractions(config)
    except dataset.DatasetError as exc:
        log.warning("cannot weight classes: %s", exc)
        return None
