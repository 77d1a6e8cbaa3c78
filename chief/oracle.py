"""The chief's oracle: keras-tuner's oracles plus what a cluster needs.

`ClusterOracle` is a mixin placed before a keras-tuner oracle class (`cluster_oracle_class`).
It adds, without changing what stock workers see on the wire:
- leases: a trial whose holder goes silent is requeued (same id and hyperparameters) and resumes
  from its last checkpoint on whichever worker asks next; the silent tuner id is dropped;
- idempotence: an EndTrial for a trial that already ended is ignored, so no trial completes twice;
- a search that waits (IDLE) rather than telling workers to exit while trials could still be
  requeued, and knows when it is over or has failed (with the reason);
- a median early-stopping rule, signalled through UpdateTrial's reply;
- incremental persistence through `chief.state.Journal` instead of rewriting `oracle.json`;
- a lock that no exception can leak (keras-tuner's `synchronized` has no try/finally).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import keras_tuner
from keras_tuner.src.engine import oracle as kt_oracle
from keras_tuner.src.engine import trial as trial_module

from chief.early_stopping import MedianStoppingRule
from chief.leases import LeaseTable
from chief.state import Journal, Replayed, atomic_write

TrialStatus = trial_module.TrialStatus
ENDED = (TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.STOPPED)
# State that grows with the trial count; the journal rebuilds it from per-trial records instead.
PER_TRIAL_KEYS = ("start_order", "end_order", "run_times", "tried_so_far", "id_to_hash", "display")
SNAPSHOT_EVERY = 20_000  # journal records between compactions


class UnknownTrial(KeyError):
    """A request names a trial id the chief never created."""


class NotHolder(RuntimeError):
    """The caller no longer holds this trial's lease (it was requeued or taken over)."""


class Events:
    """Callbacks the metrics layer hangs on; no-ops by default."""

    def lease_expired(self, trial_id: str, tuner_id: str) -> None: ...
    def requeued(self, trial_id: str, reason: str) -> None: ...
    def stopped_early(self, trial_id: str) -> None: ...
    def trial_ended(self, trial: trial_module.Trial) -> None: ...


def guarded(method: Callable) -> Callable:
    """Run under the cluster lock; repair keras-tuner's lock if an exception left it held."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.cluster_lock:
            depth = self.__dict__.get("_guard_depth", 0)
            self._guard_depth = depth + 1
            try:
                return method(self, *args, **kwargs)
            finally:
                self._guard_depth = depth
                # Only the outermost call may repair: inner ones run inside keras-tuner's lock.
                if depth == 0 and kt_oracle.THREADS[self] == threading.current_thread().name:
                    kt_oracle.THREADS[self] = None
                    kt_oracle.LOCKS[self].release()

    return wrapper


class ClusterOracle:
    """Mixin for a keras-tuner `Oracle`; call `setup_cluster()` after construction."""

    @functools.cached_property
    def cluster_lock(self) -> threading.RLock:
        # Created on first use: keras-tuner's Tuner calls get_space() while it is being built.
        return threading.RLock()

    def setup_cluster(self, state_dir, lease_seconds: float, stock_lease_seconds: float,
                      early_stopping: bool, events: Events | None = None) -> None:
        self.journal = Journal(state_dir)
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

    # --- persistence -------------------------------------------------------------------------

    def save(self) -> None:
        if self._restoring:
            return
        state = self.get_state()
        for key in PER_TRIAL_KEYS:
            state.pop(key, None)
        self.journal.append({"oracle": state})

    def _save_trial(self, trial: trial_module.Trial) -> None:
        if not self._restoring:
            self.journal.append({"trial": trial.get_state()})

    def _save_cluster(self) -> None:
        self.journal.append({"cluster": {"done": self.done, "failure": self.failure}})

    def _write_trial_file(self, trial: trial_module.Trial) -> None:
        """`trial_<id>/trial.json`, as keras-tuner lays it out, once the trial has ended."""
        state = trial.get_state()
        state["stopped_early"] = trial.trial_id in self.stopped_early
        atomic_write(Path(self._get_trial_dir(trial.trial_id)) / "trial.json", json.dumps(state))

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
        self.trials = {tid: trial_module.Trial.from_state(s) for tid, s in r.trials.items()}
        state = dict(r.oracle, start_order=list(r.trials), end_order=r.end_order, run_times=r.run_times,
                     tried_so_far=[], id_to_hash={}, display=self._display.get_state())
        self.set_state(state)
        self._display.search_start = datetime.now()
        for number, trial in enumerate(self.trials.values(), start=1):
            self._record_values(trial)
            # keras-tuner's display looks these up when a trial ends.
            self._display.trial_number[trial.trial_id] = number
            self._display.trial_start[trial.trial_id] = datetime.now()
        self.stopped_early = set(r.stopped_early)
        self.done = r.cluster.get("done", False)
        self.failure = r.cluster.get("failure")
        self.tuner_ids = set(self.ongoing_trials)
        for tuner_id, trial in self.ongoing_trials.items():
            self.leases.grant(trial.trial_id, tuner_id, session=None)
            self.leases.renew(trial.trial_id, None)

    def _compact(self) -> None:
        state = self.get_state()
        for key in PER_TRIAL_KEYS:
            state.pop(key, None)
        self.journal.snapshot(Replayed(
            trials={tid: t.get_state() for tid, t in self.trials.items()}, oracle=state,
            end_order=list(self.end_order), run_times=dict(self._run_times),
            cluster={"done": self.done, "failure": self.failure}, stopped_early=set(self.stopped_early)))

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
        trial = super().update_trial(trial_id, metrics, step=step)
        if self.stopping_rule is not None and trial_id not in self.stop_requested:
            finished = [t for t in self.trials.values() if t.status == TrialStatus.COMPLETED]
            if self.stopping_rule.should_stop(trial, step, finished):
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
        ongoing = any(t.trial_id == trial_id for t in self.ongoing_trials.values())
        if trial_id in self.end_order or not ongoing and trial_id not in self._retry_queue:
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
        self.journal.append({"end": trial_id, "run_times": self._run_times[trial_id],
                             "final": len(self.end_order) > ended_before})
        self.leases.release(trial_id)
        self.stop_requested.discard(trial_id)
        final = self.trials[trial_id]
        self._write_trial_file(final)
        self.events.trial_ended(final)
        self._maybe_compact()
        return True

    def _pop_ongoing(self, trial_id: str) -> str | None:
        for tuner_id, ongoing in list(self.ongoing_trials.items()):
            if ongoing.trial_id == trial_id:
                del self.ongoing_trials[tuner_id]
                return tuner_id
        return None

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
        return expired

    # --- read-only views ---------------------------------------------------------------------

    @guarded
    def get_trial(self, trial_id: str) -> trial_module.Trial:
        if trial_id not in self.trials:
            raise UnknownTrial(trial_id)
        return self.trials[trial_id]

    @guarded
    def get_best_trials(self, num_trials: int = 1) -> list[trial_module.Trial]:
        return super().get_best_trials(num_trials)

    @guarded
    def get_space(self):
        return super().get_space()

    @guarded
    def update_space(self, hyperparameters) -> None:
        super().update_space(hyperparameters)

    @guarded
    def top_scores(self, count: int) -> list[tuple[str, float]]:
        best = super().get_best_trials(count)
        return [(t.trial_id, t.score) for t in best if t.status == TrialStatus.COMPLETED and t.score is not None]

    @guarded
    def status(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for trial in self.trials.values():
            counts[trial.status] = counts.get(trial.status, 0) + 1
        best = [t for t in super().get_best_trials(1) if t.status == TrialStatus.COMPLETED]
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


def cluster_oracle_class(base: type) -> type:
    """`ClusterOracle` over a keras-tuner oracle class, e.g. `keras_tuner.oracles.HyperbandOracle`."""
    if not issubclass(base, keras_tuner.Oracle):
        raise TypeError(f"{base!r} is not a keras_tuner.Oracle")
    return type(f"Cluster{base.__name__}", (ClusterOracle, base), {})
