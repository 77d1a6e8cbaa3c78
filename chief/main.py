"""`ktc chief`: build the tuner, serve its oracle until the search is over, write the results."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from kt_cluster.core import compat  # noqa: F401 - first: refuses an untested keras-tuner before anything imports it
from kt_cluster.chief.k8s import WorkerScaler
from kt_cluster.chief.exporter import ChiefMetrics
from kt_cluster.chief.oracle import cluster_oracle_class
from kt_cluster.chief.service import ChiefServer, status_reply
from kt_cluster.core import summary
from kt_cluster.core.atomic_files import atomic_output, atomic_write
from kt_cluster.core.budget import budget_warnings
from kt_cluster.core.config import SearchConfig
from kt_cluster.core.metrics_http import MetricsServer
from kt_cluster.core.neptune_tracking import NeptuneTracker
from kt_cluster.core.tuner import build_tuner

log = logging.getLogger("ktc.chief")
TICK_SECONDS = 0.5
# How often a lingering chief checks that the workers of its finished search stay at zero.
KEEP_AT_ZERO_SECONDS = 5.0


def state_dir(config: SearchConfig) -> Path:
    return config.search_dir / summary.STATE_FOLDER


def run_chief(config: SearchConfig, address: str, metrics_port: int, token: str | None,
              linger: bool = False, drain_seconds: float = 10.0, scale_workers: str | None = None,
              token_file_exposed: bool = False) -> int:
    """Serve until the search is over; 0 when it completed, 1 when it failed."""
    # keras-tuner makes a Tuner the chief only when "chief" is in its tuner id.
    os.environ["KERASTUNER_TUNER_ID"] = "chief"
    metrics = ChiefMetrics()
    metrics.token_file_exposed.set(int(token_file_exposed))
    tuner = build_tuner(config, wrap_oracle=cluster_oracle_class)
    oracle = tuner.oracle
    oracle.setup_cluster(state_dir(config), config.lease_seconds, config.stock_lease_seconds,
                         config.early_stopping_on, events=metrics, score_window=config.score_window)
    oracle.anonymous_callers = token is None
    if oracle.restore():
        log.info("resumed the search from %s: %d trials", state_dir(config), len(oracle.trials))
        oracle.write_missing_trial_files()
        if oracle.done:
            print(f"chief: search {config.search_id} was already complete ({len(oracle.trials)} trials); "
                  f"its results are in {config.search_dir}", flush=True)
    else:
        oracle.save()
    metrics.info.info({"search_id": config.search_id, "tuner": config.tuner,
                       "objective": config.objective, "direction": config.direction})
    metrics.watch(oracle)
    tracker = NeptuneTracker.for_chief(config, oracle)
    # TensorFlow and Keras leave ~400,000 objects that live as long as the process; every full
    # garbage collection scanned them all (250 ms here, a stall of every RPC). Freezing what exists
    # before serving leaves the collector only the search's own objects.
    gc.collect()
    gc.freeze()
    http_server = MetricsServer(metrics.registry, metrics_port)
    warnings = budget_warnings(config)
    for warning in warnings:
        log.warning("budget: %s", warning)
    search_info = {"search_id": config.search_id, "tuner": config.tuner, "warnings": warnings}
    server = ChiefServer(oracle, metrics, address, token, search_info=search_info,
                         allow_new_hyperparameters=config.new_hyperparameters_allowed)
    port = server.port
    print(f"chief: serving the oracle on {address.rsplit(':', 1)[0]}:{port}, metrics on :{metrics_port}", flush=True)
    terminated = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    try:
        while not oracle.done and not terminated.wait(TICK_SECONDS):
            if oracle.lost:
                print(f"chief: stopping: {oracle.lost}", flush=True)
                return 5
            try:
                for trial_id in oracle.expire_leases():
                    log.warning("lease of trial %s expired: requeued", trial_id)
            except OSError as exc:  # a full disk: rolled back; the next tick tries again
                log.warning("could not requeue expired leases: %s", exc)
        if terminated.is_set():
            return 0  # state is on disk; a restarted chief resumes
        _drain(oracle, drain_seconds)
        # The final Status reply, kept: a poller can miss the moments between the last trial's end
        # and the chief's exit.
        atomic_write(config.search_dir / summary.STATUS_FILE,
                     json.dumps(status_reply(oracle, search_info), indent=2), fsync=False)
        write_results(tuner, config, search_info)
        if tracker:
            tracker.finish(oracle)
        if oracle.failure:
            print(f"chief: the search failed: {oracle.failure}", flush=True)
        scaler = WorkerScaler(scale_workers) if scale_workers else None
        if scaler:
            scaler.scale_to_zero()
        if linger:
            while not terminated.wait(KEEP_AT_ZERO_SECONDS):
                if scaler and oracle.done:  # only while the search is over
                    scaler.keep_at_zero()
        return 1 if oracle.failure else 0
    finally:
        server.stop(grace=2)
        http_server.stop()
        oracle.journal.close()


def _drain(oracle, seconds: float) -> None:
    """Give connected workers a moment to hear that the search is over."""
    deadline = time.monotonic() + seconds
    while oracle.tuner_ids and time.monotonic() < deadline:
        time.sleep(TICK_SECONDS)


def write_results(tuner, config: SearchConfig, search_info: dict) -> None:
    """Into the search's folder: the best trial's hyperparameters and model, keras-tuner's own
    summary and ours (also printed). A re-run of a finished search keeps the model it wrote."""
    folder, oracle = config.search_dir, tuner.oracle
    best = [t for t in oracle.get_best_trials(1) if t.status == "COMPLETED"]
    if best:
        _write_best(tuner, best[0], config)
    else:
        log.warning("no trial completed: no best model to write")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        tuner.results_summary(num_trials=10)
    atomic_write(folder / summary.KERAS_TUNER_SUMMARY_FILE, buffer.getvalue(), fsync=False)
    text = summary.render(summary.load_trials(folder), config.objective, config.direction, folder,
                          search=search_info, failure=oracle.failure, writing={summary.SUMMARY_FILE})
    atomic_write(folder / summary.SUMMARY_FILE, text, fsync=False)
    print(text, end="", flush=True)


def _write_best(tuner, trial, config: SearchConfig) -> None:
    folder = config.search_dir
    best_file, model_file = folder / summary.BEST_HYPERPARAMETERS_FILE, folder / summary.BEST_MODEL_FILE
    written = {"trial_id": trial.trial_id, "score": trial.score, "objective": config.objective,
               "direction": config.direction, "hyperparameters": trial.hyperparameters.values}
    unchanged = model_file.exists() and best_file.exists() and json.loads(best_file.read_text()) == written
    atomic_write(best_file, json.dumps(written, indent=2), fsync=False)
    if unchanged:
        return  # the same best trial as when this search last ended: its model is there already
    try:
        with atomic_output(model_file, fsync=True) as path:
            tuner.load_model(trial).save(path)
    except Exception as exc:  # noqa: BLE001 - the hyperparameters are written; say why the model is not
        log.error("could not write the best model of trial %s: %s", trial.trial_id, exc)
