"""The chief's oracle: keras-tuner's oracles plus what a cluster needs.

`ClusterOracle` is a mixin placed before a keras-tuner oracle class (`cluster_oracle_class`).
It adds, without changing what stock workers see on the wire:
- leases: a trial whose holder goes silent is requeued (same id and hyperparameters) and resumes
  from its last checkpoint on whichever worker asks next; the silent tuner id is dropped;
- idempotence: an EndTrial for a trial that already ended is ignored, so no trial completes twice;
- a search that waits (IDLE) rather than telling workers to exit while trials could still be
  requeued, and knows when it is over or has failed (with the reason);
- a median early-stopping rule, signalled through UpdateTrial's reply;
- incremental persistence through `kt_cluster.chief.state.Journal` instead of rewriting `oracle.json`;
- a lock that no exception can leak (keras-tuner's `synchronized` has no try/finally).
"""

from __future__ import annotations

import copy
import functools
import heapq
import json
import logging
import math
import os
import threading
import time
from datetime import datetime
from typing import Any, Callable

import keras_tuner
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import metrics_tracking
from keras_tuner.src.engine import oracle as kt_oracle
from keras_tuner.src.engine import trial as trial_module
from keras_tuner.src.engine.hyperparameters import hp_types
from keras_tuner.src.engine.objective import MultiObjective

from kt_cluster.chief.early_stopping import MedianStoppingRule
from kt_cluster.chief.leases import LeaseTable
from kt_cluster.chief.ongoing import OngoingTrials
from kt_cluster.chief.state import Journal, Replayed, compact_json
from kt_cluster.core.atomic_files import atomic_write

log = logging.getLogger("ktc.chief")
TrialStatus = trial_module.TrialStatus
ENDED = (TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.STOPPED)
# State that grows with the trial count; the journal rebuilds it from per-trial records instead.
PER_TRIAL_KEYS = ("start_order", "end_order", "run_times", "tried_so_far", "id_to_hash", "display")
SNAPSHOT_EVERY = 20_000  # journal records between compactions
REASON_CHARS = 200  # of an error message, as a metric label


class UnknownTrial(KeyError):
    """A request names a trial id the chief never created."""


class NotHolder(RuntimeError):
    """The caller no longer holds this trial's lease (it was requeued or taken over)."""


class QuietDisplay(kt_oracle.Display):
    """keras-tuner's Display, made cheap for a chief serving hundreds of trials a second.

    The stock one prints a hyperparameter table on every CreateTrial and a summary on every
    EndTrial, each time sorting all trials for the "best so far" (O(trials log trials) per call),
    and keeps start times and numbers of every trial, which `save()` formatted on every call. This
    one logs one line per ended trial at DEBUG level and keeps nothing per trial; `ktc status`, the
    metrics and `ktc results` show the search.
    """

    def on_trial_begin(self, trial: trial_module.Trial) -> None:
        if self.search_start is None:
            self.search_start = datetime.now()

    def on_trial_end(self, trial: trial_module.Trial) -> None:
        log.debug("trial %s ended %s, %s: %s", trial.trial_id, trial.status, self.oracle.objective.name, trial.score)


class Events:
    """Callbacks the metrics layer hangs on; no-ops by default."""

    def lease_expired(self, trial_id: str, tuner_id: str) -> None: ...
    def requeued(self, trial_id: str, reason: str) -> None: ...
    def stopped_early(self, trial_id: str) -> None: ...
    def trial_ended(self, trial: trial_module.Trial) -> None: ...


def guarded(method: Callable) -> Callable:
    """Run under the cluster lock; repair keras-tuner's lock if an exception left it held.

    The outermost call also writes the journal records it made in one go, before it returns (the
    same durability as one write per record, with fewer system calls made while holding the lock),
    then, after releasing the lock, the trial files it produced: every system call under the lock
    lets the other threads that need it (the lease loop, metrics scrapes) run into it and sleep."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        files: list[tuple[str, str]] = []
        try:
            with self.cluster_lock:
                depth = self.__dict__.get("_guard_depth", 0)
                self._guard_depth = depth + 1
                journal = self.__dict__.get("journal") if depth == 0 else None
                if journal is not None:
                    journal.hold()
                try:
                    return method(self, *args, **kwargs)
                finally:
                    self._guard_depth = depth
                    try:
                        if journal is not None:
                            files, self._pending_files = self._pending_files, []
                            journal.release()
                    finally:
                        # Only the outermost call may repair: inner ones run inside keras-tuner's lock.
                        if depth == 0 and kt_oracle.THREADS[self] == threading.current_thread().name:
                            kt_oracle.THREADS[self] = None
                            kt_oracle.LOCKS[self].release()
        finally:
            for path, text in files:
                atomic_write(path, text, fsync=False, new_folder=True)

    return wrapper


class SearchSpace(hp_module.HyperParameters):
    """The oracle's own HyperParameters, with a cheaper `copy()`.

    keras-tuner copies the search space for every new trial through a config round trip, in which
    Keras' generic deserializer inspects signatures for each hyperparameter (a fifth of a
    CreateTrial). A copy of each object and of the lists it holds (its conditions, a Choice's
    values) gives the same independent hyperparameters several times faster than that, or than a
    deep copy. Conditions themselves are shared: nothing changes one after it is made."""

    def copy(self) -> hp_module.HyperParameters:
        hps = hp_module.HyperParameters()
        for hp in self.space:  # what `HyperParameters.from_config` does with deserialized ones
            hp = _copy_hyperparameter(hp)
            hps._hps[hp.name].append(hp)
            hps._space.append(hp)
        hps.values = dict(self.values)
        return hps


def _copy_hyperparameter(hp: hp_module.HyperParameter) -> hp_module.HyperParameter:
    clone = copy.copy(hp)
    for name, value in vars(hp).items():
        if isinstance(value, (list, dict)):
            vars(clone)[name] = copy.copy(value)
    return clone


class ClusterOracle:
    """Mixin for a keras-tuner `Oracle`; call `setup_cluster()` after construction."""

    _stock_update_trial = False  # set by `cluster_oracle_class`

    @property
    def hyperparameters(self) -> SearchSpace:
        return self._search_space

    @hyperparameters.setter
    def hyperparameters(self, hps: hp_module.HyperParameters) -> None:
        # keras-tuner assigns it in __init__ and set_state; the objects inside stay the same.
        if not isinstance(hps, SearchSpace):
            space = SearchSpace()
            space.__dict__.update(hps.__dict__)
            hps = space
        self._search_space = hps

    @property
    def ongoing_trials(self) -> OngoingTrials:
        return self._ongoing

    @ongoing_trials.setter
    def ongoing_trials(self, trials: dict[str, trial_module.Trial]) -> None:
        # keras-tuner assigns a plain dict in __init__ and set_state; the keys it replaces changed too.
        old = self.__dict__.get("_ongoing")
        self._ongoing = OngoingTrials(trials)
        if old is not None:
            self._ongoing.changed |= old.changed | set(old)

    @functools.cached_property
    def cluster_lock(self) -> threading.RLock:
        # Created on first use: keras-tuner's Tuner calls get_space() while it is being built.
        return threading.RLock()

    def setup_cluster(self, state_dir, lease_seconds: float, stock_lease_seconds: float,
                      early_stopping: bool, events: Events | None = None) -> None:
        self.journal = Journal(state_dir)
        self._display = QuietDisplay(oracle=self, verbose=0)
        self._ended = set(self.end_order)  # end_order as a set: "has it ended?" in O(1)
        self.leases = LeaseTable(lease_seconds, stock_lease_seconds)
        self.events = events or Events()
        self.stopping_rule = (MedianStoppingRule(self.objective.name, self.objective.direction)
                              if early_stopping else None)
        self.stop_requested: set[str] = set()
        self.stopped_early: set[str] = set()
        self.last_seen: dict[str, float] = {}  # tuner id -> wall time of its last call
        self.told_to_stop: set[str] = set()
        self.done = False
        self.failure: str | None = None
        self._restoring = False
        self._updating: str | None = None  # trial id inside update_trial: journaled as a delta
        # trial id -> JSON of an ended trial's state, as journaled. Ended trials do not change (an
        # UpdateTrial after the end drops the entry), so snapshots and trial.json reuse it rather
        # than re-encode every trial: a snapshot of 10,000 trials then takes milliseconds.
        self._ended_json: dict[str, str] = {}
        self._pending_files: list[tuple[str, str]] = []  # written by `guarded` after the lock
        self._journaled_ongoing: dict[str, str] = {}  # `ongoing_trials` as the journal has it
        self._journaled_space: dict[str, Any] | None = None  # the search space's config, likewise

    def _random_values(self) -> dict[str, Any] | None:
        """keras-tuner's `_random_values` (random search, Hyperband's and Bayesian optimization's
        random starts, ASHA): the same values from the same seed state, without merging a config
        round-trip copy of every hyperparameter into a throw-away container on each attempt."""
        collisions = 0
        while True:
            values: dict[str, Any] = {}
            for hp in self.hyperparameters.space:
                if all(condition.is_active(values) for condition in hp.conditions):
                    values[hp.name] = hp.random_sample(self._seed_state)
                    self._seed_state += 1
            if not self._duplicate(values):
                return values
            collisions += 1
            if collisions > self._max_collisions:
                return None

    # --- persistence -------------------------------------------------------------------------

    def _small_state(self) -> dict[str, Any]:
        """`get_state()` without the per-trial parts (PER_TRIAL_KEYS), which the journal rebuilds
        from per-trial records, and without `ongoing_trials`, journaled as changes (`save`).
        keras-tuner's get_state lists every tried hash (O(trials)) and every running trial
        (O(workers)) on every save; both are swapped for empty ones while it runs (under the
        oracle lock)."""
        tried, self._tried_so_far = self._tried_so_far, set()
        ongoing, self.__dict__["_ongoing"] = self._ongoing, OngoingTrials()
        try:
            state = self.get_state()
        finally:
            self._tried_so_far, self.__dict__["_ongoing"] = tried, ongoing
        for key in PER_TRIAL_KEYS + ("ongoing_trials",):
            state.pop(key, None)
        return state

    def save(self) -> None:
        if self._restoring:
            return
        state = self._small_state()
        # The search space rarely changes: journaled only when it did (replay keeps the last one).
        if state["hyperparameters"] == self._journaled_space:
            del state["hyperparameters"]
        else:
            self._journaled_space = state["hyperparameters"]
        record: dict[str, Any] = {"oracle": state}
        last, ongoing = self._journaled_ongoing, self._ongoing
        changed, dropped = {}, []
        for tuner_id in ongoing.take_changes():
            trial = ongoing.get(tuner_id)
            if trial is None:
                if last.pop(tuner_id, None) is not None:
                    dropped.append(tuner_id)
            elif last.get(tuner_id) != trial.trial_id:
                changed[tuner_id] = last[tuner_id] = trial.trial_id
        if changed:
            record["ongoing_set"] = changed
        if dropped:
            record["ongoing_drop"] = dropped
        self.journal.append(record)

    def _save_trial(self, trial: trial_module.Trial) -> None:
        # keras-tuner saves the whole trial on every UpdateTrial; `update_trial` journals only what
        # the call added (an "update" record), so a trial's records stay small however long it runs.
        if not self._restoring and self._updating != trial.trial_id:
            if trial.status in ENDED:
                self._ended_json[trial.trial_id] = text = compact_json(trial.get_state())
                self.journal.append_encoded("trial", text)
            else:
                self.journal.append({"trial": trial.get_state()})

    def _apply_metrics(self, trial: trial_module.Trial, metrics: dict[str, float], step: int) -> None:
        """The heart of keras-tuner's `Oracle.update_trial` (also replays "update" records).

        It calls `MetricsTracker.update` directly on the metric's history: the tracker's own
        `update` also computes the best value before and after (a numpy mean per observation,
        twice) for an "improved" flag that nobody reads, which was a fifth of UpdateTrial's cost."""
        for name, value in metrics.items():
            if not trial.metrics.exists(name):
                trial.metrics.register(name, direction=kt_oracle._maybe_infer_direction_from_objective(
                    self.objective, name))
            trial.metrics.metrics[name].update(float(value), step=step)

    def score_trial(self, trial: trial_module.Trial) -> None:
        """keras-tuner's score (best value of the objective, first step reaching it), in one pass.

        Its `get_best_value` and `get_best_step` each take a numpy mean of every observation; with
        one finite value per step (what workers report) that mean is the value itself. Anything else
        (a multi-objective, repeated steps, NaN) is scored by keras-tuner's own code."""
        history = trial.metrics.metrics.get(self.objective.name)
        observations = list(history._observations.values()) if history is not None else []
        if (isinstance(self.objective, MultiObjective) or not observations
                or any(len(o.value) != 1 or math.isnan(o.value[0]) for o in observations)):
            return super().score_trial(trial)
        pick = min if history.direction == "min" else max
        best = pick(observations, key=lambda o: o.value[0])  # the first of equals, as keras-tuner's scan
        trial.score, trial.best_step = best.value[0], best.step

    def _save_cluster(self) -> None:
        self.journal.append({"cluster": {"done": self.done, "failure": self.failure}})

    def _write_trial_file(self, trial: trial_module.Trial) -> None:
        """`trial_<id>/trial.json`, as keras-tuner lays it out, once the trial has ended."""
        text = self._ended_json.get(trial.trial_id) or compact_json(trial.get_state())
        # The state as journaled plus "stopped_early" (appended to the JSON object's text).
        text = f'{text[:-1]},"stopped_early":{json.dumps(trial.trial_id in self.stopped_early)}}}'
        # keras-tuner's `_get_trial_dir` path, without its TensorFlow-gfile directory calls
        # (atomic_write creates the folder). Atomic, so readers never see a torn file, but not
        # fsynced: the journal, not this file, is the chief's record, and a killed process loses
        # nothing the kernel already holds.
        path = os.path.join(self._directory, self._project_name, f"trial_{trial.trial_id}", "trial.json")
        self._pending_files.append((path, text))

    @guarded
    def restore(self) -> bool:
        """Load the journal; running trials stay with their holders under a fresh lease."""
        replayed = self.journal.load()
        if replayed.oracle is None:
            return False
        self._restoring = True
        try:
            self._apply_replayed(replayed)
        finally:
            self._restoring = False
        self._compact()
        return True

    def _apply_replayed(self, r: Replayed) -> None:
        definitions: dict[str, Any] = {}
        self.trials = {tid: _trial_from_state(s, definitions) for tid, s in r.trials.items()}
        for trial_id, updates in r.updates.items():
            for metrics, step in updates:
                self._apply_metrics(self.trials[trial_id], metrics, step)
        state = dict(r.oracle, ongoing_trials=r.ongoing, start_order=list(r.trials), end_order=r.end_order,
                     run_times=r.run_times, tried_so_far=[], id_to_hash={}, display=self._display.get_state())
        self.set_state(state)
        self._display.search_start = datetime.now()
        self._ended = set(self.end_order)
        for trial in self.trials.values():
            self._record_values(trial)
            if self.stopping_rule is not None and trial.status == TrialStatus.COMPLETED:
                self.stopping_rule.finished(trial)
        self.stopped_early = set(r.stopped_early)
        self.done = r.cluster.get("done", False)
        self.failure = r.cluster.get("failure")
        if not self.done:
            # EndTrial checks only the tail of end_order (`_check_consecutive_failures`); a kill
            # between a failing EndTrial and its "search failed" record is caught here, once.
            try:
                super()._check_consecutive_failures()
            except RuntimeError as exc:
                self.done, self.failure = True, str(exc).strip()
        # keras-tuner's end_trial saves the oracle before it drops the trial from ongoing_trials:
        # after a kill right after an EndTrial, the ended (or retry-queued) trial would still be
        # "running" and be handed back to its worker.
        self.ongoing_trials = {tuner_id: trial for tuner_id, trial in self.ongoing_trials.items()
                               if trial.trial_id not in self._ended and trial.trial_id not in self._retry_queue}
        self.tuner_ids = set(self.ongoing_trials)
        for tuner_id, trial in self.ongoing_trials.items():
            self.leases.grant(trial.trial_id, tuner_id, session=None)
            self.leases.renew(trial.trial_id, None)

    def _compact(self) -> None:
        encoded = []
        for trial_id, trial in self.trials.items():
            text = self._ended_json.get(trial_id)
            if text is None:
                text = compact_json(trial.get_state())
                if trial_id in self._ended and trial.status in ENDED:  # after a restore
                    self._ended_json[trial_id] = text
            encoded.append(text)
        oracle = self._small_state()
        self._journaled_space = oracle["hyperparameters"]
        self._ongoing.take_changes()
        self._journaled_ongoing = {tuner_id: trial.trial_id for tuner_id, trial in self._ongoing.items()}
        self.journal.snapshot(Replayed(
            oracle=oracle, ongoing=dict(self._journaled_ongoing),
            end_order=list(self.end_order), run_times=dict(self._run_times),
            cluster={"done": self.done, "failure": self.failure}, stopped_early=set(self.stopped_early)),
            encoded_trials=encoded)

    def _maybe_compact(self) -> None:
        if self.journal.records >= SNAPSHOT_EVERY:
            self._compact()

    # --- the trial life cycle ----------------------------------------------------------------

    @guarded
    def create_trial(self, tuner_id: str, session: str | None = None) -> trial_module.Trial:
        self.last_seen[tuner_id] = time.time()
        if self.done:
            return self._stop(tuner_id)
        held = self.ongoing_trials.get(tuner_id)
        if held is not None:
            # The same id again: a restarted pod (or a twin) takes over; the old session loses it.
            self.leases.grant(held.trial_id, tuner_id, session)
            return held
        trial = super().create_trial(tuner_id)
        if trial.status == TrialStatus.RUNNING:
            self.leases.grant(trial.trial_id, tuner_id, session)
        elif trial.status == TrialStatus.STOPPED:
            if self.ongoing_trials or self._retry_queue:
                # Keep workers around: a running trial may still come back for someone to resume.
                self.tuner_ids.add(tuner_id)
                trial.status = TrialStatus.IDLE
            else:
                self._finish(None)
                return self._stop(tuner_id)
        self._maybe_compact()
        return trial

    def _stop(self, tuner_id: str) -> trial_module.Trial:
        self.tuner_ids.discard(tuner_id)
        self.told_to_stop.add(tuner_id)
        return trial_module.Trial(self.hyperparameters.copy(), status=TrialStatus.STOPPED)

    def _finish(self, failure: str | None) -> None:
        if not self.done:
            self.done, self.failure = True, failure
            self._save_cluster()

    def _holder_check(self, trial_id: str, tuner_id: str | None, session: str | None) -> None:
        if trial_id not in self.trials:
            raise UnknownTrial(trial_id)
        if tuner_id is not None and not self.leases.holds(trial_id, tuner_id, session):
            raise NotHolder(f"trial {trial_id} is not held by {tuner_id}")

    @guarded
    def update_trial(self, trial_id: str, metrics: dict[str, float], step: int = 0,
                     tuner_id: str | None = None, session: str | None = None) -> trial_module.Trial:
        self._holder_check(trial_id, tuner_id, session)
        if tuner_id is not None:
            self.last_seen[tuner_id] = time.time()
        if self.leases.get(trial_id) is not None:
            self.leases.renew(trial_id, session, epoch=step)
        if self._stock_update_trial:
            trial = self.trials[trial_id]
            self._check_objective_found(metrics)
            self._apply_metrics(trial, metrics, step)
        else:  # the oracle class overrides update_trial: let it run
            self._updating = trial_id
            try:
                trial = super().update_trial(trial_id, metrics, step=step)
            finally:
                self._updating = None
        self.journal.append({"update": trial_id, "metrics": metrics, "step": step})
        self._ended_json.pop(trial_id, None)  # (a stock client reporting after EndTrial)
        if self.stopping_rule is not None:
            if trial.status == TrialStatus.COMPLETED:
                self.stopping_rule.finished(trial)  # a stock client reporting after EndTrial
            elif trial_id not in self.stop_requested and self.stopping_rule.should_stop_indexed(trial, step):
                self.stop_requested.add(trial_id)
        return trial

    @guarded
    def heartbeat(self, tuner_id: str, session: str | None, trial_id: str, epoch: int) -> dict[str, Any]:
        self.last_seen[tuner_id] = time.time()
        if trial_id not in self.trials or not self.leases.holds(trial_id, tuner_id, session):
            return {"held": False, "stop": False, "search_over": self.done}
        self.leases.renew(trial_id, session, epoch=epoch)
        return {"held": True, "stop": trial_id in self.stop_requested, "search_over": self.done}

    @guarded
    def end_trial(self, trial: trial_module.Trial, tuner_id: str | None = None,
                  session: str | None = None, stopped_early: bool = False) -> bool:
        """Returns False when the call was a duplicate and changed nothing."""
        trial_id = trial.trial_id
        if trial_id not in self.trials:
            raise UnknownTrial(trial_id)
        current = self.trials[trial_id]
        ongoing = self._ongoing.holder(trial_id) is not None
        if trial_id in self._ended or not ongoing and trial_id not in self._retry_queue:
            return False  # already ended: a retried call or a late twin
        if ongoing and tuner_id is not None and not self.leases.holds(trial_id, tuner_id, session):
            raise NotHolder(f"trial {trial_id} is not held by {tuner_id}")
        if not ongoing:
            # Requeued after its lease lapsed, yet its holder finished it: keep that work.
            self._retry_queue.remove(trial_id)
            self.ongoing_trials[tuner_id or f"late-{trial_id}"] = current
        if stopped_early and trial.status == TrialStatus.COMPLETED:
            self.stopped_early.add(trial_id)
            self.journal.append({"stopped_early": trial_id})
            self.events.stopped_early(trial_id)
        ended_before = len(self.end_order)
        try:
            super().end_trial(trial)
        except RuntimeError as exc:  # keras-tuner's "consecutive failures exceeded the limit"
            self._pop_ongoing(trial_id)
            self._save_trial(self.trials[trial_id])
            self._finish(str(exc).strip())
        final_record = len(self.end_order) > ended_before
        self.journal.append({"end": trial_id, "run_times": self._run_times[trial_id], "final": final_record})
        self.leases.release(trial_id)
        self.stop_requested.discard(trial_id)
        final = self.trials[trial_id]
        if final_record:
            self._ended.add(trial_id)
            if self.stopping_rule is not None and final.status == TrialStatus.COMPLETED:
                self.stopping_rule.finished(final)
        self._write_trial_file(final)
        self.events.trial_ended(final)
        self._maybe_compact()
        return True

    def _check_consecutive_failures(self) -> None:
        """keras-tuner's check rescans all of end_order on every EndTrial (O(trials)); a run of
        failures can only have formed at its tail, just appended, so look there only."""
        run = 0
        for trial_id in reversed(self.end_order):
            if self.trials[trial_id].status != TrialStatus.FAILED:
                return
            run += 1
            if run == self.max_consecutive_failed_trials:
                last = self.trials[self.end_order[-1]]
                raise RuntimeError("Number of consecutive failures exceeded the limit "
                                   f"of {self.max_consecutive_failed_trials}.\n" + (last.message or ""))

    def _pop_ongoing(self, trial_id: str) -> str | None:
        tuner_id = self._ongoing.holder(trial_id)
        if tuner_id is not None:
            del self._ongoing[tuner_id]
        return tuner_id

    def _requeue(self, trial_id: str, reason: str) -> None:
        tuner_id = self._pop_ongoing(trial_id)
        if tuner_id is None:
            return
        self.tuner_ids.discard(tuner_id)
        self.leases.release(trial_id)
        self.trials[trial_id].status = TrialStatus.IDLE
        self._retry_queue.append(trial_id)
        self.save()
        self.events.requeued(trial_id, reason)

    @guarded
    def hand_back(self, tuner_id: str, session: str | None, trial_id: str) -> bool:
        self.last_seen[tuner_id] = time.time()
        if trial_id not in self.trials or not self.leases.holds(trial_id, tuner_id, session):
            return False
        self._requeue(trial_id, "handback")
        return True

    @guarded
    def expire_leases(self) -> list[str]:
        expired = []
        for lease in self.leases.expired():
            self.events.lease_expired(lease.trial_id, lease.tuner_id)
            self._requeue(lease.trial_id, "lease_expired")
            expired.append(lease.trial_id)
        self._forget_departed_workers()
        return expired

    def _forget_departed_workers(self) -> None:
        """A worker that holds no trial and has not called for a lease term has left (scaled down,
        told to stop, lost its lease): forget it, so its per-worker metric series end with it."""
        horizon = time.time() - self.leases.lease_seconds
        holding = set(self.ongoing_trials)
        for tuner_id in [t for t, when in self.last_seen.items() if when < horizon and t not in holding]:
            del self.last_seen[tuner_id]

    # --- read-only views ---------------------------------------------------------------------

    @guarded
    def get_trial(self, trial_id: str) -> trial_module.Trial:
        if trial_id not in self.trials:
            raise UnknownTrial(trial_id)
        return self.trials[trial_id]

    @guarded
    def get_best_trials(self, num_trials: int = 1) -> list[trial_module.Trial]:
        return self._best_trials(num_trials)

    def _best_trials(self, num_trials: int) -> list[trial_module.Trial]:
        """keras-tuner's `get_best_trials`, which sorts every completed trial on each call (every
        metrics scrape, Status and GetBestTrials did, under the lock). A heap picks the n best in
        O(trials log n): `heapq.nlargest(n, xs, key)` is documented as `sorted(xs, key,
        reverse=True)[:n]`, ties in the same order."""
        completed = [t for t in self.trials.values() if t.status == TrialStatus.COMPLETED]
        pick = heapq.nlargest if self.objective.direction == "max" else heapq.nsmallest
        best = pick(num_trials, completed, key=lambda trial: trial.score)
        if len(best) < num_trials:
            best += [t for t in self.trials.values() if t.status != TrialStatus.COMPLETED]
        return best[:num_trials]

    @guarded
    def get_space(self):
        return super().get_space()

    @guarded
    def update_space(self, hyperparameters) -> None:
        super().update_space(hyperparameters)

    @guarded
    def top_trials(self, count: int) -> list[tuple[str, float, dict[str, Any]]]:
        """(trial id, score, hyperparameter values) of the best `count` completed trials."""
        best = self._best_trials(count)
        return [(t.trial_id, t.score, dict(t.hyperparameters.values))
                for t in best if t.status == TrialStatus.COMPLETED and t.score is not None]

    @guarded
    def recent_setbacks(self, count: int) -> list[tuple[str, str, str]]:
        """(trial id, status, reason) of the latest `count` trials that failed, are invalid (to be
        retried) or were stopped early, newest first. The reason is the error's first line (ours:
        "Type: message"), or its last for a bare traceback (a stock keras-tuner worker's)."""
        setbacks = []
        for trial in reversed(self.trials.values()):
            if trial.status in (TrialStatus.FAILED, TrialStatus.INVALID):
                lines = (trial.message or "").strip().splitlines() or ["(no message)"]
                reason = lines[-1] if lines[0].startswith("Traceback") else lines[0]
                setbacks.append((trial.trial_id, trial.status.lower(), reason[:REASON_CHARS]))
            elif trial.trial_id in self.stopped_early:
                setbacks.append((trial.trial_id, "stopped_early", "median stopping rule"))
            if len(setbacks) == count:
                break
        return setbacks

    @guarded
    def status(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for trial in self.trials.values():
            counts[trial.status] = counts.get(trial.status, 0) + 1
        best = [t for t in self._best_trials(1) if t.status == TrialStatus.COMPLETED]
        running = []
        for tuner_id, trial in sorted(self.ongoing_trials.items()):
            lease = self.leases.get(trial.trial_id)
            running.append({"trial_id": trial.trial_id, "tuner_id": tuner_id,
                            "epoch": lease.epoch if lease else -1,
                            "started": lease.started if lease else None})
        return {
            "objective": self.objective.name, "direction": self.objective.direction,
            "max_trials": self.max_trials, "trials": counts, "total": len(self.trials),
            "completed": counts.get(TrialStatus.COMPLETED, 0),
            "failed": counts.get(TrialStatus.FAILED, 0) + counts.get(TrialStatus.INVALID, 0),
            "stopped_early": len(self.stopped_early), "queued": len(self._retry_queue),
            "best": ({"trial_id": best[0].trial_id, "score": best[0].score,
                      "hyperparameters": best[0].hyperparameters.values} if best else None),
            "running": running, "workers": dict(self.last_seen),
            "done": self.done, "failure": self.failure,
        }


def _trial_from_state(state: dict[str, Any], definitions: dict[str, Any]) -> trial_module.Trial:
    """`Trial.from_state`, deserializing each distinct hyperparameter definition once.

    keras-tuner rebuilds every hyperparameter of every trial through Keras' generic deserializer
    (a signature inspection per object): two thirds of the time to restore a 10,000-trial search.
    Trials share a handful of definitions; each trial gets its own (shallow) copies of them."""
    config = state["hyperparameters"]
    hps = hp_module.HyperParameters()
    for definition in config["space"]:
        key = repr(definition)
        if key not in definitions:
            definitions[key] = hp_types.deserialize(definition)
        hp = copy.copy(definitions[key])
        hps._hps[hp.name].append(hp)
        hps._space.append(hp)
    hps.values = dict(config["values"].items())
    # The rest of `Trial.set_state`, without `Trial()` generating a random id first.
    trial = trial_module.Trial(hps, trial_id=state["trial_id"], status=state["status"], message=state["message"])
    trial.metrics = metrics_tracking.MetricsTracker.from_config(state["metrics"])
    trial.score, trial.best_step = state["score"], state["best_step"]
    return trial


def cluster_oracle_class(base: type) -> type:
    """`ClusterOracle` over a keras-tuner oracle class, e.g. `keras_tuner.oracles.HyperbandOracle`."""
    if not issubclass(base, keras_tuner.Oracle):
        raise TypeError(f"{base!r} is not a keras_tuner.Oracle")
    # Whether the oracle's update_trial is keras-tuner's own, which `ClusterOracle.update_trial`
    # then performs itself, more cheaply (see `_apply_metrics`).
    stock_update = base.update_trial is kt_oracle.Oracle.update_trial
    return type(f"Cluster{base.__name__}", (ClusterOracle, base), {"_stock_update_trial": stock_update})
