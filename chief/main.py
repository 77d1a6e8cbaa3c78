"""`ktc chief`: build the tuner, serve its oracle until the search is over, write the results."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from kt_cluster.core import compat  # first: refuses an untested keras-tuner before anything imports it
from kt_cluster.chief import definition
from kt_cluster.chief.k8s import WorkerScaler
from kt_cluster.chief.exporter import ChiefMetrics
from kt_cluster.chief.oracle import cluster_oracle_class
from kt_cluster.chief.service import ChiefServer, status_reply
from kt_cluster.core import compute, summary
from kt_cluster.core.atomic_files import atomic_output, atomic_write
from kt_cluster.core.budget import budget_warnings
from kt_cluster.core.config import SearchConfig
from kt_cluster.core.first_trials import first_trials
from kt_cluster.core.metrics_http import MetricsServer
from kt_cluster.core.neptune_tracking import NeptuneTracker
from kt_cluster.core.tuner import build_tuner

log = logging.getLogger("ktc.chief")
TICK_SECONDS = 0.5
# How often a lingering chief checks that the workers of its finished search stay at zero.
KEEP_AT_ZERO_SECONDS = 5.0
# The configured search is not the stored one: the chief refused to start (README, exit codes).
EXIT_INCOMPATIBLE = 6


def state_dir(config: SearchConfig) -> Path:
    return config.search_dir / summary.STATE_FOLDER


def run_chief(config: SearchConfig, address: str, metrics_port: int, token: str | None,
              linger: bool = False, drain_seconds: float = 10.0, scale_workers: str | None = None,
              token_file_exposed: bool = False, worker_replicas_file: str | None = None,
              final_scrape_seconds: float = 0.0) -> int:
    """Serve until the search is over; 0 when it completed, 1 when it failed, `EXIT_INCOMPATIBLE`
    when the config is not the stored search's (`kt_cluster.chief.definition`).
    `worker_replicas_file` holds what `scale_workers` is scaled to when this start reopens a finished
    search. `final_scrape_seconds`: how long the workers' and this process' final values may take
    to be scraped once the search is over: the chief waits that long before scaling the workers
    to zero and, unless it lingers, serves /metrics until scraped, at most that long."""
    # keras-tuner makes a Tuner the chief only when "chief" is in its tuner id.
    os.environ["KERASTUNER_TUNER_ID"] = "chief"
    metrics = ChiefMetrics()
    metrics.token_file_exposed.set(int(token_file_exposed))
    scaler = WorkerScaler(scale_workers) if scale_workers else None
    try:
        tuner, restored, reopened = open_search(config, metrics)
    except definition.IncompatibleChange as exc:
        metrics.info.info(_search_labels(config))  # a chief, for the alerts, though it serves no search
        return _refuse(exc, metrics, metrics_port, linger, scaler)
    oracle = tuner.oracle
    oracle.anonymous_callers = token is None
    if restored:
        log.info("resumed the search from %s: %d trials", state_dir(config), len(oracle.trials))
        oracle.write_missing_trial_files()
        if oracle.done:
            print(f"chief: search {config.search_id} was already complete ({len(oracle.trials)} trials); "
                  f"its results are in {config.search_dir}", flush=True)
    if reopened and scaler and worker_replicas_file:
        replicas = _worker_replicas(worker_replicas_file)
        if replicas:
            scaler.scale_to(replicas)
    metrics.info.info(_search_labels(config))
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
        ended = time.monotonic()
        if scaler:
            # Scaled down, a worker leaves Prometheus' targets: its last counts would go unscraped.
            terminated.wait(final_scrape_seconds)
            scaler.scale_to_zero()
        if linger:
            while not terminated.wait(KEEP_AT_ZERO_SECONDS):
                if scaler and oracle.done:  # only while the search is over
                    scaler.keep_at_zero()
        elif final_scrape_seconds > 0:
            left = ended + final_scrape_seconds - time.monotonic()
            http_server.wait_for_final_scrape(left, terminated, since=ended)
        return 1 if oracle.failure else 0
    finally:
        server.stop(grace=2)
        http_server.stop()
        oracle.journal.close()


def open_search(config: SearchConfig, events=None) -> tuple:
    """(tuner, restored, reopened): the chief's tuner with its oracle restored from the journal and
    the configured search reconciled with the stored one (`IncompatibleChange`, nothing written,
    when they differ in meaning); reopened: a finished search this start made go on."""
    tuner = build_tuner(config, wrap_oracle=cluster_oracle_class)
    oracle = tuner.oracle
    oracle.first_trials = first_trials(config, oracle.hyperparameters.space)  # ConfigError before any state is read
    configured = definition.of(config, oracle.hyperparameters.get_config()["space"])  # before a restore replaces it
    oracle.setup_cluster(state_dir(config), config.lease_seconds, config.stock_lease_seconds,
                         config.early_stopping_on, events=events, score_window=config.score_window)
    replayed = oracle.journal.load()
    definition.check_meaning(replayed.definition, configured, config.search_id)
    restored = oracle.restore(replayed)
    try:
        return tuner, restored, _adopt_definition(oracle, config, configured, restored)
    except definition.IncompatibleChange:
        oracle.journal.close()
        raise


def _adopt_definition(oracle, config: SearchConfig, configured: dict, restored: bool) -> bool:
    """Compare the configured search with the stored one (`IncompatibleChange` when they differ
    in meaning), journal what this start accepts, and reopen a finished search whose budget was
    raised. True when it reopened one."""
    trials = [(trial_id, trial.hyperparameters.values) for trial_id, trial in oracle.trials.items()]
    accepted = definition.reconcile(oracle.stored_definition if restored else None, configured,
                                    oracle.hyperparameters.get_config()["space"], trials, config.search_id,
                                    config.new_hyperparameters_allowed)
    if restored and accepted.first:
        print(f"chief: search {config.search_id} has no stored definition (its state predates them): this "
              "start's config is taken as its definition", flush=True)
    for change in accepted.changes:
        log.info("config change accepted: %s", change)
    settings = {}
    if config.tuner == "hyperband" and config.hyperband_iterations > oracle.hyperband_iterations:
        settings["hyperband_iterations"] = config.hyperband_iterations  # the journal's value stands otherwise
    why = _reopening(oracle, config, accepted) if restored and oracle.done else None
    if why:
        print(f"chief: search {config.search_id} reopened: {why} ({len(oracle.trials)} trials so far)", flush=True)
    if not restored or why or settings or accepted.definition != oracle.stored_definition:
        oracle.adopt(accepted.definition, space=accepted.space, settings=settings, reopen=bool(why))
    return bool(why)


def _reopening(oracle, config: SearchConfig, accepted: definition.Reconciled) -> str | None:
    """Why a finished search goes on with this config (None: it stays over, said why when a
    raised budget is not enough). A failed search goes on only when its failure limit was raised."""
    raised = {name: (old, new) for name, old, new in accepted.raised}
    if oracle.failure:
        if "max_consecutive_failed_trials" in raised:
            old, new = raised["max_consecutive_failed_trials"]
            return f"max_consecutive_failed_trials raised from {old} to {new} after the search failed"
        if raised:
            print(f"chief: search {config.search_id} failed ({oracle.failure.splitlines()[0]}); a raised budget "
                  f"does not run it again: raise max_consecutive_failed_trials (now "
                  f"{config.max_consecutive_failed_trials}) to run it again, or start a new search (a new search_id)",
                  flush=True)
        return None
    if accepted.first and len(oracle.trials) < config.max_trials:
        raised.setdefault("max_trials", (len(oracle.trials), config.max_trials))  # no stored budget to compare
    budget = [f"{name} raised from {raised[name][0]} to {raised[name][1]}"
              for name in ("max_trials", "max_worker_hours", "hyperband_iterations") if name in raised]
    if not budget:
        return None
    if len(oracle.trials) >= config.max_trials:
        print(f"chief: search {config.search_id}: {', '.join(budget)}, but its {len(oracle.trials)} trials reach "
              f"max_trials ({config.max_trials}): raise max_trials to go on", flush=True)
        return None
    spent = compute.spent_seconds(oracle.trials.values()) / 3600
    if config.max_worker_hours is not None and spent >= config.max_worker_hours:
        print(f"chief: search {config.search_id}: {', '.join(budget)}, but its trials have spent {spent:.3g} worker "
              f"hours, max_worker_hours ({config.max_worker_hours:g}): raise max_worker_hours to go on", flush=True)
        return None
    if config.tuner == "hyperband" and compat.hyperband_exhausted(
            oracle, max(config.hyperband_iterations, oracle.hyperband_iterations)):
        print(f"chief: search {config.search_id}: {', '.join(budget)}, but Hyperband has run all its "
              f"brackets ({oracle.hyperband_iterations} hyperband_iterations): raise hyperband_iterations to go on",
              flush=True)
        return None
    return ", ".join(budget)


def _worker_replicas(path: str) -> int | None:
    """The worker count in `path` (the chart's ConfigMap, read at this moment); None, logged, when
    the file cannot be read or holds no count."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        log.error("--worker-replicas-file: cannot read %s (%s): the workers stay as they are", path, exc.strerror)
        return None
    if not text.isdigit():
        log.error("--worker-replicas-file: %s holds %r, not a count: the workers stay as they are", path, text[:40])
        return None
    return int(text)


def _search_labels(config: SearchConfig) -> dict[str, str]:
    return {"search_id": config.search_id, "tuner": config.tuner, "objective": config.objective,
            "direction": config.direction}


def _refuse(exc: definition.IncompatibleChange, metrics: ChiefMetrics, metrics_port: int, linger: bool,
            scaler: WorkerScaler | None) -> int:
    """One line; with `linger` (Kubernetes), keep serving /metrics (`ktc_chief_config_refused` 1)
    until SIGTERM rather than exit into a restart loop: the gRPC port closed (never Ready), the
    workers kept at zero (they would wait for a chief that serves nothing)."""
    print(f"ktc chief: refusing to start: {exc}", file=sys.stderr, flush=True)
    if linger:
        metrics.config_refused.set(1)
        http_server = MetricsServer(metrics.registry, metrics_port)
        terminated = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: terminated.set())
        try:
            why = "the chief refuses its config"
            if scaler:
                scaler.scale_to_zero(why)
            while not terminated.wait(KEEP_AT_ZERO_SECONDS):
                if scaler:
                    scaler.keep_at_zero(why)
        finally:
            http_server.stop()
    return EXIT_INCOMPATIBLE


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
