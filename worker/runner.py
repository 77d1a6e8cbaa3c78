"""The worker's trial loop: ask the chief for a trial, train it, report, repeat.

Per trial: a heartbeat thread renews the lease between epochs; after every epoch the trial is
checkpointed, its metrics go to Prometheus and to the chief (UpdateTrial, whose reply may say
stop early). A trial that raises ends FAILED (will fail again: bad data, a model that cannot be
built) or INVALID (may pass on retry: out of memory, NaN loss) with its message; the worker goes
on. SIGTERM checkpoints nothing new (the last finished epoch is on disk), hands the trial back to
the chief so another worker resumes it at once, and exits 0.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field

import grpc
import keras
from keras_tuner import errors as kt_errors
from keras_tuner.engine import trial as trial_module

from kt_cluster.core import compute, dataset
from kt_cluster.core.config import SearchConfig
from kt_cluster.worker.checkpoints import CheckpointError
from kt_cluster.worker.client import ChiefClient, LeaseLost
from kt_cluster.worker.data.feed import TrainingData
from kt_cluster.worker.exporter import WorkerMetrics
from kt_cluster.worker.outcome import TrialOutcome
from kt_cluster.worker.tuner import WorkerTuner

log = logging.getLogger("ktc.worker")
TrialStatus = trial_module.TrialStatus
IDLE_BACKOFF = (0.1, 1.0)  # first and longest pause between CreateTrial calls while the chief is IDLE
MAX_CHIEF_ERRORS = 10  # consecutive failed CreateTrial calls (other than "unavailable") before giving up


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; a retry with fresh weights may succeed."""


class TrialInterrupted(Exception):
    """Raised from a training step to abandon the epoch in progress (SIGTERM or lease lost).

    `stop_training` would not do: Keras still validates and ends a cut-short epoch, which would
    then be checkpointed as if it were whole.
    """


@dataclass
class TrialRun:
    """What the threads around one trial tell each other."""

    trial_id: str
    epoch: int = -1
    lease_lost: bool = False
    stop_early: bool = False
    lost_reason: str = ""
    interrupted: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class ClusterCallback(keras.callbacks.Callback):
    """Reports each epoch to the chief and Prometheus, and stops training when told to."""

    def __init__(self, run: TrialRun, client: ChiefClient, metrics: WorkerMetrics, stopping: threading.Event):
        super().__init__()
        self.run, self.client, self.metrics, self.stopping = run, client, metrics, stopping
        self._epoch_start = self._step_start = 0.0
        self._since = time.perf_counter()  # the trial's start, then the end of its last epoch

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_start = time.perf_counter()
        self.metrics.epoch.set(epoch)

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.metrics.step_seconds.observe(time.perf_counter() - self._step_start)
        if self.stopping.is_set() or self.run.lease_lost:
            raise TrialInterrupted()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = {name: float(value) for name, value in (logs or {}).items()}
        if "loss" in logs and not math.isfinite(logs["loss"]):
            raise NonFiniteLoss(f"loss became {logs['loss']} at epoch {epoch}")
        self.run.epoch = epoch
        now = time.perf_counter()
        self.metrics.epoch_ended(self.run.trial_id, logs, now - self._epoch_start)
        # The worker time this epoch took, the model's build or the last checkpoint included: what
        # the chief counts against max_worker_hours.
        spent, self._since = now - self._since, now
        try:
            reply = self.client.update_trial(self.run.trial_id, {**logs, compute.EPOCH_SECONDS: spent}, step=epoch)
        except LeaseLost as exc:
            # Someone else holds the trial now: checkpoint nothing more, report nothing.
            self.run.lease_lost, self.run.lost_reason = True, str(exc)
            raise TrialInterrupted() from exc
        if reply.status == TrialStatus.STOPPED or self.run.stop_early:
            self.run.stop_early = True
            self.model.stop_training = True


class Worker:
    def __init__(self, config: SearchConfig, tuner: WorkerTuner, client: ChiefClient, metrics: WorkerMetrics,
                 data: TrainingData, grace_seconds: float = 25.0, tracker=None):
        self.config, self.tuner, self.client, self.metrics = config, tuner, client, metrics
        self.data = data  # decoded once, used by every trial
        self.tracker = tracker  # a NeptuneTracker, or None
        self.grace_seconds = grace_seconds
        self.stopping = threading.Event()
        self.heartbeat_seconds = max(0.2, config.lease_seconds / 4)
        self.trials_run = 0  # by this process, whatever their outcome

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())

    def run(self) -> int:
        """Run trials until the chief says the search is over (0) or SIGTERM (0)."""
        pause = IDLE_BACKOFF[0]
        errors = 0
        while not self.stopping.is_set():
            waited = time.perf_counter()
            try:
                trial = self.client.create_trial(self.client.tuner_id)
                errors = 0
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED or errors >= MAX_CHIEF_ERRORS:
                    raise
                errors += 1
                log.warning("CreateTrial failed (%s: %s); retrying", exc.code().name, exc.details())
                self.stopping.wait(min(errors, 5))
                continue
            if trial.status == TrialStatus.STOPPED:
                log.info("the chief says the search is over")
                return 0
            if trial.status == TrialStatus.IDLE:
                self.stopping.wait(pause)
                pause = min(pause * 2, IDLE_BACKOFF[1])
                self.metrics.idle_seconds.inc(time.perf_counter() - waited)
                continue
            pause = IDLE_BACKOFF[0]
            self.metrics.idle_seconds.inc(time.perf_counter() - waited)
            self.run_trial(trial)
        return 0

    def run_trial(self, trial: trial_module.Trial) -> TrialOutcome:
        run = TrialRun(trial.trial_id)
        self.trials_run += 1
        self.metrics.trial_started(trial.trial_id)
        beat = threading.Thread(target=self._heartbeat, args=(run,), daemon=True, name=f"heartbeat-{trial.trial_id}")
        beat.start()
        try:
            self._train(trial, run)
        finally:
            run.done.set()
            beat.join(timeout=5)
        outcome = self._report(trial, run)
        self.metrics.trial_ended(trial.trial_id, outcome)
        log.info("trial %s: %s", trial.trial_id, outcome)
        return outcome

    def _train(self, trial: trial_module.Trial, run: TrialRun) -> None:
        try:
            with self.data.explain_errors():
                self.tuner.run_trial(
                    trial, self.data, epochs=self.config.epochs, verbose=0,
                    callbacks=[ClusterCallback(run, self.client, self.metrics, self.stopping),
                               *(self.tracker.trial_callbacks(trial) if self.tracker else [])])
            trial.status = TrialStatus.COMPLETED
        except TrialInterrupted:
            run.interrupted = True
        except (dataset.DatasetError, CheckpointError, kt_errors.FailedTrialError, kt_errors.FatalError) as exc:
            trial.status, trial.message = TrialStatus.FAILED, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bad trial fails that trial, never the worker
            trial.status = TrialStatus.INVALID
            trial.message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        if trial.message:
            log.warning("trial %s failed: %s", trial.trial_id, trial.message.splitlines()[0])

    def _report(self, trial: trial_module.Trial, run: TrialRun) -> TrialOutcome:
        if run.lease_lost:
            log.warning("trial %s: %s", trial.trial_id, run.lost_reason)
            return TrialOutcome.LEASE_LOST  # someone else holds it now; nothing of ours to report
        if run.interrupted:
            try:
                self.client.hand_back(trial.trial_id, timeout=self.grace_seconds)
            except Exception as exc:  # noqa: BLE001 - the lease will lapse and requeue it anyway
                log.warning("could not hand back trial %s: %s", trial.trial_id, exc)
            return TrialOutcome.HANDED_BACK
        try:
            self.client.end_trial(trial, stopped_early=run.stop_early)
        except LeaseLost:
            return TrialOutcome.LEASE_LOST
        except grpc.RpcError as exc:
            # The chief refused the result; its lease will lapse and the trial will run again.
            log.error("EndTrial for trial %s failed: %s: %s", trial.trial_id, exc.code().name, exc.details())
            return TrialOutcome.LEASE_LOST
        if trial.status == TrialStatus.COMPLETED:
            return TrialOutcome.STOPPED_EARLY if run.stop_early else TrialOutcome.COMPLETED
        return TrialOutcome.FAILED if trial.status == TrialStatus.FAILED else TrialOutcome.INVALID

    def _heartbeat(self, run: TrialRun) -> None:
        while not run.done.wait(self.heartbeat_seconds):
            try:
                reply = self.client.heartbeat(run.trial_id, run.epoch, timeout=self.heartbeat_seconds)
            except Exception as exc:  # noqa: BLE001 - a failed beat must not kill the trial
                log.warning("heartbeat for trial %s failed: %s", run.trial_id, exc)
                continue
            if reply is None:
                continue
            if not reply.get("held", True):
                run.lease_lost, run.lost_reason = True, "the chief gave this trial to another worker"
            if reply.get("stop"):
                run.stop_early = True
