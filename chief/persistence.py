"""How the chief's oracle is kept on disk: its journal records, its restore, its trial files.

`JournalMapping` is the part of the chief's oracle (`kt_cluster.chief.oracle.ClusterOracle`) that
maps every change to records of `kt_cluster.chief.state.Journal` instead of keras-tuner's rewrite
of `oracle.json` on each call:
- `save()` journals the oracle's small state (the search space only when it changed) and the
  running-trial map as changes;
- `trial_changed` (keras-tuner's save of a trial) journals a created or ended trial whole, and an
  UpdateTrial only as what it added ("update" records, journaled by the oracle itself);
- `restore()` replays a journal into the oracle, mending what a kill between records leaves; it
  changes nothing on disk (the journal goes on where it ended), and refuses a state it cannot
  trust (`kt_cluster.chief.state.StateError`);
- `reload()` puts the oracle back to what the journal says after a call whose records could not
  be written (a full disk): the caller then answers with an error and nothing has happened;
- `_compact()` folds the journal into a snapshot, reusing the JSON of ended trials;
- `trial_<id>/trial.json`, keras-tuner's layout, is written once a trial has ended.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from keras_tuner.engine import trial as trial_module

from kt_cluster.chief.ongoing import OngoingTrials
from kt_cluster.chief.state import Journal, JournalWriteError, Replayed, StateError, compact_json
from kt_cluster.core import compat
from kt_cluster.core.atomic_files import atomic_write

TrialStatus = trial_module.TrialStatus
ENDED = (TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.STOPPED)
SNAPSHOT_EVERY = 20_000  # journal records between compactions
log = logging.getLogger("ktc.chief")


class JournalMapping:
    """Mixin of the chief's oracle: its persistence through a `Journal`."""

    def setup_journal(self, state_dir) -> None:
        self.journal = Journal(state_dir)
        self._restoring = False
        self._updating: str | None = None  # trial id inside update_trial: journaled as a delta
        # trial id -> JSON of an ended trial's state, as journaled. Ended trials do not change (an
        # UpdateTrial after the end drops the entry), so snapshots and trial.json reuse it rather
        # than re-encode every trial: a snapshot of 10,000 trials then takes milliseconds.
        self._ended_json: dict[str, str] = {}
        self._pending_files: list[tuple[str, str]] = []  # written by `guarded` after the lock
        self._journaled_ongoing: dict[str, str] = {}  # `ongoing_trials` as the journal has it
        self._journaled_space: dict[str, Any] | None = None  # the search space's config, likewise
        self.stored_definition: dict[str, Any] | None = None  # the journal's latest "definition" record

    # --- records -----------------------------------------------------------------------------

    def _small_state(self) -> dict[str, Any]:
        """The oracle's state without what the journal keeps per trial, or as changes (the
        running-trial map, swapped for an empty one while keras-tuner's get_state runs: it lists
        every running trial, O(workers), on each save)."""
        ongoing, self.__dict__["_ongoing"] = self._ongoing, OngoingTrials()
        try:
            return self.state_without_trials()
        finally:
            self.__dict__["_ongoing"] = ongoing

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

    def trial_changed(self, trial: trial_module.Trial) -> None:
        # keras-tuner saves the whole trial on every UpdateTrial; `update_trial` journals only what
        # the call added (an "update" record), so a trial's records stay small however long it runs.
        if not self._restoring and self._updating != trial.trial_id:
            if trial.status in ENDED:
                self._ended_json[trial.trial_id] = text = compact_json(trial.get_state())
                self.journal.append_encoded("trial", text)
            else:
                self.journal.append({"trial": trial.get_state()})

    def _save_cluster(self) -> None:
        self.journal.append({"cluster": {"done": self.done, "failure": self.failure}})

    def _write_trial_file(self, trial: trial_module.Trial) -> None:
        """`trial_<id>/trial.json`, as keras-tuner lays it out, once the trial has ended."""
        text = self._ended_json.get(trial.trial_id) or compact_json(trial.get_state())
        # The state as journaled plus "stopped_early" (appended to the JSON object's text).
        stopped_early = "true" if trial.trial_id in self.stopped_early else "false"
        text = f'{text[:-1]},"stopped_early":{stopped_early}}}'
        # Atomic, so readers never see a torn file, but not fsynced: the journal, not this file, is
        # the chief's record, and a killed process loses nothing the kernel already holds.
        self._pending_files.append((self.trial_file(trial.trial_id), text))

    def write_missing_trial_files(self) -> None:
        """`trial.json` of every ended trial that lacks one (its write failed: a full disk)."""
        for trial_id in self.end_order:
            path = self.trial_file(trial_id)
            if not os.path.exists(path):
                self._write_trial_file(self.trials[trial_id])
        files, self._pending_files = self._pending_files, []
        for path, text in files:
            atomic_write(path, text, fsync=False, new_folder=True)

    # --- restore and compaction --------------------------------------------------------------

    def restore(self, replayed: Replayed | None = None) -> bool:
        """Load the journal (or take what `self.journal.load()` just returned); running trials stay
        with their holders under a fresh lease. False for a new search (nothing on disk). Nothing
        on disk changes here."""
        if replayed is None:
            replayed = self.journal.load()
        if replayed.oracle is None and not replayed.trials:
            return False
        self._restoring = True
        try:
            try:
                self._apply_replayed(replayed)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                # Records of the right shape whose content keras-tuner cannot take (a hyperparameter
                # definition it does not know, ...).
                raise StateError(self.journal.directory, f"a record keras-tuner cannot restore: "
                                                         f"{type(exc).__name__}: {exc}") from None
        finally:
            self._restoring = False
        self._after_replay(replayed)
        return True

    def reload(self) -> None:
        """The in-memory oracle as the journal on disk says (the truth), after a failed write."""
        leases = self.leases.held()
        self._ended_json.clear()
        self._pending_files = []
        JournalMapping.restore(self)  # not the guarded one: the caller holds the lock, writes fail
        for tuner_id, trial in self.ongoing_trials.items():
            lease = leases.get(trial.trial_id)
            if lease is not None and lease.tuner_id == tuner_id:
                self.leases.put(lease)  # the holder keeps its session and term
        for trial_id in set(leases) - {t.trial_id for t in self.ongoing_trials.values()}:
            self.leases.release(trial_id)
        self.stop_requested &= set(self.trials)

    def _after_replay(self, r: Replayed) -> None:
        """What the journal holds, as the next `save()` compares against it."""
        if r.oracle is not None:
            self._journaled_space = r.oracle["hyperparameters"]
        self._journaled_ongoing = dict(r.ongoing)
        self._ongoing.take_changes()
        # Running trials the replay dropped (ended, or queued again) leave the journal's map at the
        # next save.
        self._ongoing.changed |= set(r.ongoing) ^ set(self._ongoing) | {
            t for t, trial in self._ongoing.items() if r.ongoing.get(t) != trial.trial_id}

    def _apply_replayed(self, r: Replayed) -> None:
        definitions: dict[str, Any] = {}
        self.trials = {tid: compat.trial_from_state(s, definitions) for tid, s in r.trials.items()}
        for trial_id, updates in r.updates.items():
            for metrics, step in updates:
                self.apply_metrics(self.trials[trial_id], metrics, step)
        # A state rebuilt from trial files alone has no oracle record: the oracle's settings (its
        # search space, seed) are the ones it was just built with from the config.
        oracle = r.oracle if r.oracle is not None else self._small_state()
        self.restore_state(oracle, ongoing=r.ongoing, start_order=list(r.trials), end_order=r.end_order,
                           run_times=r.run_times)
        self._ended = set(self.end_order)
        running = {trial.trial_id for trial in self.ongoing_trials.values()}
        for trial_id, trial in self.trials.items():  # created, yet neither running nor ended (rebuilt)
            if trial.status == TrialStatus.IDLE and trial_id not in running and trial_id not in self.retry_queue:
                self.retry_queue.append(trial_id)
        if self.stopping_rule is not None:
            for trial in self.trials.values():
                if trial.status == TrialStatus.COMPLETED:
                    self.stopping_rule.finished(trial)
        self.stopped_early = set(r.stopped_early)
        self.stored_definition = r.definition
        self.done = r.cluster.get("done", False)
        self.failure = r.cluster.get("failure")
        if not self.done:
            # EndTrial checks only the tail of end_order (`_check_consecutive_failures`); a kill
            # between a failing EndTrial and its "search failed" record is caught here, once.
            try:
                self.check_all_consecutive_failures()
            except RuntimeError as exc:
                self.done, self.failure = True, str(exc).strip()
        # keras-tuner's end_trial saves the oracle before it drops the trial from ongoing_trials:
        # after a kill right after an EndTrial, the ended (or retry-queued) trial would still be
        # "running" and be handed back to its worker.
        self.ongoing_trials = {tuner_id: trial for tuner_id, trial in self.ongoing_trials.items()
                               if trial.trial_id not in self._ended and trial.trial_id not in self.retry_queue}
        self.tuner_ids = set(self.ongoing_trials)
        for tuner_id, trial in self.ongoing_trials.items():
            self.leases.grant(trial.trial_id, tuner_id, session=None).restored = True
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
            end_order=list(self.end_order), run_times=self.run_counts(),
            cluster={"done": self.done, "failure": self.failure}, stopped_early=set(self.stopped_early),
            definition=self.stored_definition),
            encoded_trials=encoded)

    def _maybe_compact(self) -> None:
        if self.journal.records >= SNAPSHOT_EVERY:
            try:
                self._compact()
            except JournalWriteError:
                raise  # the call's own records (written first) failed: the call fails
            except OSError as exc:  # a full disk: the journal goes on; the next call tries again
                log.warning("could not compact the journal into a snapshot: %s", exc)
