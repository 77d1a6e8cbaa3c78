"""`ktc worker`: train trials for the chief until it says the search is over."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from kt_cluster.worker.client import ChiefClient
from kt_cluster.core.config import SearchConfig
from kt_cluster.core.protocol import check_tuner_id
from kt_cluster.core import dataset
from kt_cluster.worker.data import pipeline
from kt_cluster.core.neptune_tracking import NeptuneTracker
from kt_cluster.worker.runner import Worker
from kt_cluster.worker.exporter import WorkerMetrics
from kt_cluster.core.tuner import build_tuner
from kt_cluster.worker.tuner import WorkerTuner, configure_devices

log = logging.getLogger("ktc.worker")


def run_worker(config: SearchConfig, address: str, tuner_id: str, token: str | None, metrics_port: int,
               grace_seconds: float, threads: int | None = None) -> int:
    tuner_id = check_tuner_id(tuner_id)
    gpus = configure_devices(threads)
    log.info("worker %s: GPUs %s", tuner_id, gpus or "none")
    metrics = WorkerMetrics(tuner_id)
    http_server, _ = start_http_server(metrics_port, registry=metrics.registry)
    tracker = NeptuneTracker.for_worker(config, tuner_id)
    try:
        tuner = build_tuner(config, class_fractions=_class_fractions(config), tuner_class=WorkerTuner)
        client = ChiefClient(tuner.oracle, address, tuner_id, token)
        tuner.oracle = client
        worker = Worker(config, tuner, client, metrics, grace_seconds=grace_seconds, tracker=tracker)
        worker.install_signal_handlers()
        return worker.run()
    finally:
        http_server.shutdown()
        if tracker:
            tracker.stop()


def _class_fractions(config: SearchConfig) -> list[float] | None:
    """Class balance for the loss; with unreadable data the trials fail and say why."""
    try:
        return pipeline.positive_fractions(config)
    except (pipeline.DataError, dataset.DatasetError) as exc:
        log.warning("cannot weight classes: %s", exc)
        return None
