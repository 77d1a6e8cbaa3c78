"""The chief's oracle: keras-tuner's oracles plus what a cluster needs.

`ClusterOracle` is a mixin placed before a keras-tuner oracle class (`cluster_oracle_class`). This
module owns the trial life cycle and the leases, without changing what stock workers see on the
wire:
- leases: a trial whose holder goes silent is requeued (same id and hyperparameters) and resumes
  from its last checkpoint on whichever worker asks next; the silent tuner id is dropped;
- idempotence: an EndTrial for a trial that already ended is ignored, so no trial completes twice;
- a search that waits (IDLE) rather than telling workers to exit while trials could still be
  requeued, and knows when it is over or has failed (with the reason);
- a median early-stopping rule, signalled through UpdateTrial's reply;
- one call at a time (`guarded`), with a lock that no exception can leak (keras-tuner's
  `synchronized` has no try/finally);
- read-only views for the Status RPC, the metrics and GetBestTrials.
Its persistence is `kt_cluster.chief.persistence.JournalMapping`; keras-tuner's internals and the
faster copies of its code are `kt_cluster.core.compat.OracleSeam`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Callable

import keras_tuner
from keras_tuner.engine import trial as trial_module

from kt_cluster.chief.display import QuietDisplay
from kt_cluster.chief.early_stopping import MedianStoppingRule
from kt_cluster.chief.errors import Invalid, NotHolder, Refused, StateLost, UnknownTrial  # noqa: F401 - re-exported
from kt_cluster.chief.events import Events
from kt_cluster.chief.leases import LeaseTable
from kt_cluster.chief.ongoing import OngoingTrials
from kt_cluster.chief.persistence import JournalMapping
from kt_cluster.chief.state import JournalWriteError
from kt_cluster.chief import validation
from kt_cluster.core import compat, compute
from kt_cluster.core.atomic_files import atomic_write

TrialStatus = trial_module.TrialStatus
REASON_CHARS = 200  # of an error message, as a metric label
log = logging.getLogger("ktc.chief")


def guarded(method: Callable | None = None, *, reads_only: bool = False) -> Callable:
    """Run under the cluster lock; repair keras-tuner's lock if an exception left it held.

    The outermost call also writes the journal records it made in one go, before it returns (the
    same durability as one write per record, with fewer system calls made while holding the lock),
    then, after releasing the lock, the trial files it produced: every system call under the lock
    lets the other threads that need it (the lease loop, metrics scrapes) run into it and sleep.

    A call either happens whole or not at all: when it raises anything but `Refused` (which is
    raised before any change), or its records cannot be written (a full disk), its records are
    dropped and the oracle is reloaded from the journal, so the error its caller gets means
    nothing happened. `reads_only`: a view that changes nothing, so nothing to roll back either."""
    if method is None:
        return functools.partial(guarded, reads_only=reads_only)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        files: list[tuple[str, str]] = []
        with self.cluster_lock:
            if self.__dict__.get("lost") is not None:
                raise StateLost(self.lost)
            depth = self.__dict__.get("_guard_depth", 0)
            journal = self.__dict__.get("journal") if depth == 0 else None
            if journal is not None and journal.failing and not reads_only:
                # Writes failed last time: learn whether they work before changing anything.
                journal.probe({"cluster": {"done": self.done, "failure": self.failure}})
            self._guard_depth = depth + 1
            if journal is not None:
                journal.hold()
            failed = True
            try:
                result = method(self, *args, **kwargs)
                failed = False
            except Refused:
                failed = journal is not None and journal.holding()
                raise
            except Exception:
                failed = not reads_only or journal is not None and journal.holding()
                raise
            finally:
                self._guard_depth = depth
                try:
                    if journal is not None:
                        if failed:
                            journal.discard()
                            journal.release()
                            self._roll_back()
                        else:
                            files, self._pending_files = self._pending_files, []
                            try:
                                journal.release()
                            except JournalWriteError:
                                files = []
                                self._roll_back()
                                raise
                finally:
                    # Only the outermost call may repair: inner ones run inside keras-tuner's lock.
                    if depth == 0:
                        compat.repair_lock(self)
        for path, text in files:
            try:
                atomic_write(path, text, fsync=False, new_folder=True)
            except OSError as exc:  # the journal has the trial; `ktc chief` writes missing files at start
                log.warning("could not write %s: %s", path, exc)
        return result

    return wrapper


class ClusterOracle(JournalMapping, compat.OracleSeam):
    """Mixin for a keras-tuner `Oracle`; call `setup_cluster()` after construction."""

    _stock_update_trial = False  # set by `cluster_oracle_class`
    max_worker_seconds: float | None = None  # the search's worker-time budget (`max_worker_hours`)
    first_trials: list[dict[str, Any]] = []  # trained first (`kt_cluster.core.first_trials`), never mutated

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
                      early_stopping: bool, events: Events | None = None, score_window: int = 1) -> None:
        self.setup_journal(state_dir)
        self.score_window = score_window  # a trial's score: its best mean of this many epochs
        self.install_display(QuietDisplay(self))
        self._ended = set(self.end_order)  # end_order as a set: "has it ended?" in O(1)
        self.leases = LeaseTable(lease_seconds, stock_lease_seconds)
        self.events = events or Events()
        self.stopping_rule = (MedianStoppingRule(self.objective.name, self.objective.direction)
                              if early_stopping else None)
        self.stop_requested: set[str] = set()
        self.stopped_early: set[str] = set()
        self.last_seen: dict[str, float] = {}  # tuner id -> wall time of its last call
        self.done = False
        self.failure: str | None = None
        self.lost: str | None = None  # why the oracle no longer matches its journal (the chief stops)
        # Whether callers that name no worker (stock keras-tuner clients) are served: not by an
        # authenticated chief, whose clients are all kt-cluster workers (stock ones send no token).
        self.anonymous_callers = True

    @guarded
    def restore(self, replayed=None) -> bool:
        return super().restore(replayed)

    @guarded
    def adopt(self, definition: dict[str, Any], space: list[dict[str, Any]] | None = None,
              settings: dict[str, Any] | None = None, reopen: bool = False) -> None:
        """Take the search's definition as this start accepted it (`kt_cluster.chief.definition`):
        the search space it changed, oracle `settings` it raised (Hyperband's iterations) and, when
        `reopen`, a finished search made to go on. Journaled in one write: a kill leaves all of it
        or none (a budget recorded as raised with the search still over would never reopen)."""
        if space is not None:
            self.hyperparameters = compat.HyperParameters.from_config(
                dict(self.hyperparameters.get_config(), space=space))
        for name, value in (settings or {}).items():
            setattr(self, name, value)
        if reopen:
            self.done, self.failure = False, None
            self._save_cluster()
        self.stored_definition = definition
        self.journal.append({"definition": definition})
        self.save()

    def _roll_back(self) -> None:
        try:
            self.reload()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the oracle cannot be trusted now
            self.lost = f"could not reload the state after a failed call: {type(exc).__name__}: {exc}"
            log.error("%s", self.lost)

    # --- the trial life cycle ----------------------------------------------------------------

    @guarded
    def create_trial(self, tuner_id: str, session: str | None = None) -> trial_module.Trial:
        if self.done:  # no new worker once the search is over (nothing forgets them then)
            self._seen(tuner_id)
            return self._stop(tuner_id)
        self.last_seen[tuner_id] = time.time()
        held = self.ongoing_trials.get(tuner_id)
        if held is not None:
            # The same id again: a restarted pod (or a twin) takes over; the old session loses it.
            self.leases.grant(held.trial_id, tuner_id, session)
            return held
        trial = super().create_trial(tuner_id)
        if trial.status == TrialStatus.RUNNING:
            self.leases.grant(trial.trial_id, tuner_id, session)
        elif trial.status == TrialStatus.STOPPED:
            if self.ongoing_trials or self.retry_queue:
                # Keep workers around: a running trial may still come back for someone to resume.
                self.tuner_ids.add(tuner_id)
                trial.status = TrialStatus.IDLE
            else:
                self._finish(None)
                return self._stop(tuner_id)
        self._maybe_compact()
        return trial

    def populate_space(self, trial_id: str) -> dict[str, Any]:
        # No trial starts once the worker time is spent (a requeued one, handed out before this
        # is asked, still resumes: it started before).
        if self.max_worker_seconds is not None and compute.spent_seconds(self.trials.values()) >= self.max_worker_seconds:
            return {"status": TrialStatus.STOPPED}
        response = super().populate_space(trial_id)
        values = response.get("values")
        if response.get("status") == TrialStatus.RUNNING and values and "tuner/trial_id" not in values:
            first = self._first_trial_due()
            if first is not None:  # a new configuration: the next first trial goes in its place
                tuner_keys = {k: v for k, v in values.items() if k.startswith("tuner/")}
                response = dict(response, values=first | tuner_keys)
        return response

    def _first_trial_due(self) -> dict[str, Any] | None:
        """The first of `first_trials` that no trial has trained yet: derived from the trials, so a
        restarted chief goes on where the journal left off."""
        tried = [trial.hyperparameters.values for trial in self.trials.values()]
        for first in self.first_trials:
            if not any(all(values.get(name) == value for name, value in first.items()) for values in tried):
                return first
        return None

    def _stop(self, tuner_id: str) -> trial_module.Trial:
        self.tuner_ids.discard(tuner_id)
        return trial_module.Trial(self.hyperparameters.copy(), status=TrialStatus.STOPPED)

    def _finish(self, failure: str | None) -> None:
        if not self.done:
            self.done, self.failure = True, failure
            self._save_cluster()

    def _holder_check(self, trial_id: str, tuner_id: str | None, session: str | None) -> None:
        if trial_id not in self.trials:
            raise UnknownTrial(trial_id)
        self._check_holder(trial_id, tuner_id, session)

    def _check_holder(self, trial_id: str, tuner_id: str | None, session: str | None) -> None:
        """A trial a kt-cluster worker holds (its lease has a session) answers only to that worker;
        a caller that says nothing of itself is a stock client, matched only on stock leases. A
        restarted chief learns a holder's session from its next call: until then an authenticated
        chief's restored leases answer to no caller that names no worker either."""
        if tuner_id is None:
            lease = self.leases.get(trial_id)
            if lease is not None and (lease.session is not None or lease.restored and not self.anonymous_callers):
                raise NotHolder(f"trial {trial_id} is held by a kt-cluster worker: calls about it must carry "
                                "its tuner id and session")
        elif not self.leases.holds(trial_id, tuner_id, session):
            raise NotHolder(f"trial {trial_id} is not held by {tuner_id}")

    def _seen(self, tuner_id: str | None) -> None:
        """Note a known worker's call. Only CreateTrial introduces a tuner id: calls from ids that
        hold nothing and never asked for a trial add no worker (no Status entry, no metric series)."""
        if tuner_id is not None and (tuner_id in self.last_seen or tuner_id in self._ongoing):
            self.last_seen[tuner_id] = time.time()

    @guarded
    def update_trial(self, trial_id: str, metrics: dict[str, float], step: int = 0,
                     tuner_id: str | None = None, session: str | None = None) -> trial_module.Trial:
        self._holder_check(trial_id, tuner_id, session)
        try:
            self.check_objective_found(metrics)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        self._seen(tuner_id)
        if self.leases.get(trial_id) is not None:
            self.leases.renew(trial_id, session, epoch=step)
        if self._stock_update_trial:
            trial = self.trials[trial_id]
            self.apply_metrics(trial, metrics, step)
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
            elif trial_id not in self.stop_requested and self.stopping_rule.should_stop(trial, step):
                self.stop_requested.add(trial_id)
        return trial

    @guarded
    def heartbeat(self, tuner_id: str, session: str | None, trial_id: str, epoch: int) -> dict[str, Any]:
        self._seen(tuner_id)
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
        if trial_id in self._ended or not ongoing and trial_id not in self.retry_queue:
            return False  # already ended: a retried call or a late twin
        if ongoing:
            self._check_holder(trial_id, tuner_id, session)
        # Checked whole before anything changes: keras-tuner's end_trial changes the trial first.
        trial.hyperparameters = validation.trial_hyperparameters(current.hyperparameters, trial.hyperparameters)
        if trial.status == TrialStatus.COMPLETED:
            self._check_scored(current)
        if not ongoing:
            # Requeued after its lease lapsed, yet its holder finished it: keep that work.
            self.retry_queue.remove(trial_id)
            self.ongoing_trials[tuner_id or f"late-{trial_id}"] = current
        if stopped_early and trial.status == TrialStatus.COMPLETED:
            self.stopped_early.add(trial_id)
            self.journal.append({"stopped_early": trial_id})
            self.events.stopped_early(trial_id)
        ended_before = len(self.end_order)
        self._ending = True  # keras-tuner's end_trial adds the trial's hyperparameters to the space: not here
        try:
            super().end_trial(trial)
        except RuntimeError as exc:  # keras-tuner's "consecutive failures exceeded the limit"
            self._pop_ongoing(trial_id)
            self.trial_changed(self.trials[trial_id])
            self._finish(str(exc).strip())
        finally:
            self._ending = False
        final_record = len(self.end_order) > ended_before
        self.journal.append({"end": trial_id, "run_times": self.run_count(trial_id), "final": final_record})
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

    def _check_scored(self, trial: trial_module.Trial) -> None:
        """A COMPLETED trial needs a value of each objective, reported through UpdateTrial (keras-tuner
        scores the chief's copy of the trial, not what EndTrial carries)."""
        objectives = getattr(self.objective, "objectives", None) or [self.objective]
        for objective in objectives:
            history = trial.metrics.metrics.get(objective.name)
            if history is None or not history.get_history():
                raise Invalid(f"trial {trial.trial_id} cannot be COMPLETED: no value of the objective "
                              f"{objective.name} was reported (UpdateTrial); end it FAILED or INVALID instead")

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
        self.retry_queue.append(trial_id)
        self.save()
        self.events.requeued(trial_id, reason)

    @guarded
    def hand_back(self, tuner_id: str, session: str | None, trial_id: str) -> bool:
        self._seen(tuner_id)
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

    @guarded(reads_only=True)
    def get_trial(self, trial_id: str) -> trial_module.Trial:
        if trial_id not in self.trials:
            raise UnknownTrial(trial_id)
        return self.trials[trial_id]

    @guarded(reads_only=True)
    def get_best_trials(self, num_trials: int = 1) -> list[trial_module.Trial]:
        return self.best_trials(num_trials)

    @guarded(reads_only=True)
    def get_space(self):
        return super().get_space()

    @guarded
    def update_space(self, hyperparameters, allow_new: bool = True, why_not: str = "") -> None:
        """Add the hyperparameters the space lacks, checked whole first (`validation.new_entries`);
        `allow_new` False: any new one is refused, `why_not` says why."""
        if self.__dict__.get("_ending"):
            return
        if "journal" not in self.__dict__:  # the chief's own tuner, being built from the config
            super().update_space(hyperparameters)
            return
        new = validation.new_entries(self.hyperparameters, list(hyperparameters.space))
        if not new:
            return
        if not allow_new:
            raise Invalid(f"new hyperparameters ({', '.join(hp.name for hp in new[:5])}): {why_not}")
        super().update_space(hyperparameters)
        self.save()  # journaled before the call answers

    @guarded(reads_only=True)
    def top_trials(self, count: int) -> list[tuple[str, float, dict[str, Any]]]:
        """(trial id, score, hyperparameter values) of the best `count` completed trials."""
        best = self.best_trials(count)
        return [(t.trial_id, t.score, dict(t.hyperparameters.values))
                for t in best if t.status == TrialStatus.COMPLETED and t.score is not None]

    @guarded(reads_only=True)
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

    @guarded(reads_only=True)
    def status(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for trial in self.trials.values():
            counts[trial.status] = counts.get(trial.status, 0) + 1
        best = [t for t in self.best_trials(1) if t.status == TrialStatus.COMPLETED and t.score is not None]
        running = []
        for tuner_id, trial in sorted(self.ongoing_trials.items()):
            lease = self.leases.get(trial.trial_id)
            running.append({"trial_id": trial.trial_id, "tuner_id": tuner_id,
                            "epoch": lease.epoch if lease else -1,
                            "started": lease.started if lease else None})
        return {
            "objective": self.objective.name, "direction": self.objective.direction,
            "max_trials": self.max_trials, "trials": counts, "total": len(self.trials),
            "worker_seconds": compute.spent_seconds(self.trials.values()),
            "max_worker_seconds": self.max_worker_seconds,
            "completed": counts.get(TrialStatus.COMPLETED, 0),
            "failed": counts.get(TrialStatus.FAILED, 0) + counts.get(TrialStatus.INVALID, 0),
            "stopped_early": len(self.stopped_early), "queued": len(self.retry_queue),
            "best": ({"trial_id": best[0].trial_id, "score": best[0].score,
                      "hyperparameters": dict(best[0].hyperparameters.values)} if best else None),
            "running": running, "workers": dict(self.last_seen),
            "done": self.done, "failure": self.failure,
        }


def cluster_oracle_class(base: type) -> type:
    """`ClusterOracle` over a keras-tuner oracle class, e.g. `keras_tuner.oracles.HyperbandOracle`."""
    if not issubclass(base, keras_tuner.Oracle):
        raise TypeError(f"{base!r} is not a keras_tuner.Oracle")
    # Whether the oracle's update_trial is keras-tuner's own, which `ClusterOracle.update_trial`
    # then performs itself, more cheaply (`OracleSeam.apply_metrics`).
    return type(f"Cluster{base.__name__}", (ClusterOracle, base),
                {"_stock_update_trial": compat.stock_update_trial(base)})
