"""The chief's state on disk, checked before the chief starts, and rebuilt by hand when damaged.

A search's folder holds `ktc-state/` (the journal and snapshot, `kt_cluster.chief.state`) and one
`trial_<id>/` folder per trial. Before a chief serves, `preflight` (what `ktc chief` runs before it
loads TensorFlow, and `ktc state check` runs alone) replays the state strictly and refuses, with
`StateError`, when:
- any journal record other than a torn last line is not a valid record (`state.Journal.load`);
- the snapshot is missing or unreadable while a later generation's journal exists;
- trial folders exist that the state does not know (a deleted or older state over a search's
  trials: starting would reuse their ids and overwrite them).
It changes nothing, except removing the chief's own leftover temporary files (a write cut short).

`rebuild` (`ktc state rebuild`) is the explicit recovery: it folds every valid record of the
journals it finds and the `trial.json` files on disk into a new state, reports trial by trial
what it kept and what it could not, and moves the old `ktc-state/` aside (never deletes it).
Nothing here imports keras-tuner or TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from kt_cluster.chief.state import (SNAPSHOT, BadRecord, Journal, Replayed, StateError, check_trial_state,
                                    journal_generations, parse_line, read_snapshot)
from kt_cluster.core.atomic_files import atomic_write

STATE_FOLDER = "ktc-state"
TRIAL_FOLDER = re.compile(r"trial_(.+)")
LOST = "lost"  # the message of a placeholder trial
ENDED = ("COMPLETED", "FAILED", "INVALID", "STOPPED")
# The chief's own temporary files (`atomic_files.temporary_name` of trial.json, snapshot.json and
# a kept snapshot's link): only a chief writes them, and only the one holding the state's lock.
CHIEF_TEMPORARY = (re.compile(r"\.trial\.tmp-\d+\.json"), re.compile(r"\.snapshot\.tmp-\d+\.json"),
                   re.compile(r"snapshot-\d+\.json\.tmp"))


@dataclass
class Summary:
    trials: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    generation: int = 0
    new: bool = True  # no state yet: a new search

    def line(self) -> str:
        if self.new:
            return "no state yet: a new search"
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.by_status.items()))
        return f"{self.trials} trials ({counts or 'none'}), generation {self.generation}"


def trial_folders(search_dir: Path) -> dict[str, Path]:
    """trial id -> its folder, for every `trial_<id>` folder of the search."""
    found = {}
    if search_dir.is_dir():
        for path in search_dir.iterdir():
            match = TRIAL_FOLDER.fullmatch(path.name)
            if match and path.is_dir():
                found[match.group(1)] = path
    return found


def check(search_dir: Path) -> Summary:
    """Replay the state strictly and match it against the trial folders; `StateError` when it
    cannot be trusted. Reads only."""
    state_dir = search_dir / STATE_FOLDER
    journal = Journal(state_dir)
    replayed = journal.load()
    folders = trial_folders(search_dir)
    has_state = replayed.oracle is not None or bool(replayed.trials)
    if not has_state and folders:
        raise StateError(state_dir, f"no state, yet {len(folders)} trial folders exist "
                                    f"({', '.join(sorted(p.name for p in folders.values())[:3])}, ...): "
                                    "a new search would reuse their ids")
    unknown = sorted(set(folders) - set(replayed.trials))
    if unknown:
        raise StateError(folders[unknown[0]], f"a trial folder the state does not know ({len(unknown)} such, "
                                              f"{len(replayed.trials)} trials in the state): records are missing")
    ended = set(replayed.end_order)
    for trial_id, state in replayed.trials.items():
        # trial.json is written only after the journal has a trial's end: one for a trial the
        # journal never saw end means records are missing (a journal cut at a record boundary).
        if trial_id not in ended and not replayed.run_times.get(trial_id) and trial_id in folders \
                and (folders[trial_id] / "trial.json").exists():
            raise StateError(folders[trial_id] / "trial.json", "its trial.json says it ended, yet the state never "
                                                               "saw it end: records are missing")
    summary = Summary(trials=len(replayed.trials), generation=journal.generation, new=not has_state)
    for state in replayed.trials.values():
        summary.by_status[state["status"]] = summary.by_status.get(state["status"], 0) + 1
    return summary


def remove_temporary_files(search_dir: Path) -> list[Path]:
    """The chief's leftover temporary files (a write cut short by a kill or a full disk)."""
    removed = []
    for folder in [search_dir, search_dir / STATE_FOLDER, *trial_folders(search_dir).values()]:
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if any(p.fullmatch(path.name) for p in CHIEF_TEMPORARY):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def preflight(search_dir: Path) -> Summary:
    """What `ktc chief` checks before it loads anything heavy (holding the state's lock)."""
    remove_temporary_files(search_dir)
    return check(search_dir)


# --- rebuild ----------------------------------------------------------------------------------


@dataclass
class Rebuilt:
    replayed: Replayed
    notes: list[str]  # one line per record skipped and per trial: kept from where, or lost
    aside: Path | None = None


def _lenient_records(path: Path, notes: list[str]):
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    last = len(lines) - 1  # the part after the last newline: empty, or a torn write
    for number, line in enumerate(lines, start=1):
        if number - 1 == last:
            if line:
                notes.append(f"{path.name} line {number}: skipped: torn last line (a write cut short)")
            return
        try:
            yield number, parse_line(line)
        except BadRecord as exc:
            notes.append(f"{path.name} line {number}: skipped: {exc}")


def _fold(replayed: Replayed, path: Path, notes: list[str]) -> None:
    for number, record in _lenient_records(path, notes):
        try:
            replayed.apply(record)
        except BadRecord as exc:
            notes.append(f"{path.name} line {number}: skipped: {exc}")


def collect(search_dir: Path) -> Rebuilt:
    """Every valid record of the state's snapshots and journals, oldest first, then the trial files:
    what a rebuild would write. Reads only."""
    state_dir = search_dir / STATE_FOLDER
    notes: list[str] = []
    replayed = Replayed()
    generations = journal_generations(state_dir) if state_dir.is_dir() else []
    snapshots: dict[int, Path] = {}
    for path in state_dir.glob("snapshot*.json") if state_dir.is_dir() else ():
        try:
            generation, _ = read_snapshot(path)
            snapshots[generation] = path
        except BadRecord as exc:
            notes.append(f"{path.name}: skipped: {exc}")
    # The newest readable snapshot with the journals from its generation on.
    start = 0
    if snapshots:
        start = max(snapshots)
        try:
            replayed = Replayed.from_snapshot(read_snapshot(snapshots[start])[1]["state"])
        except BadRecord as exc:
            notes.append(f"{snapshots[start].name}: skipped: {exc}")
            start = 0
    for generation in generations:
        if generation >= start:
            _fold(replayed, state_dir / f"journal-{generation}.jsonl", notes)
    sources = {trial_id: "journal" for trial_id in replayed.trials}
    for trial_id, folder in sorted(trial_folders(search_dir).items()):
        file = folder / "trial.json"
        state = None
        if file.exists():
            try:
                state = parse_line(file.read_bytes())
                if isinstance(state, dict):
                    state.pop("stopped_early", None)
                check_trial_state(state)
                if state["trial_id"] != trial_id:
                    raise BadRecord(f"its trial_id is {state['trial_id']!r:.40}")
            except (BadRecord, OSError) as exc:
                notes.append(f"{file.relative_to(search_dir)}: skipped: {exc}")
                state = None
        known = replayed.trials.get(trial_id)
        if state is not None and state["status"] in ENDED and (known is None or known["status"] not in ENDED):
            replayed.trials[trial_id] = state  # the file has its end; the journal lost it
            replayed.updates.pop(trial_id, None)
            sources[trial_id] = "trial.json"
            if trial_id not in replayed.end_order:
                replayed.end_order.append(trial_id)
            replayed.run_times.setdefault(trial_id, 1)
        elif known is None:
            _placeholder(replayed, trial_id, "its folder has no readable trial.json and no record names it")
            sources[trial_id] = "folder alone"
    # keras-tuner numbers a new trial by the trial count: ids below the highest one on disk that no
    # record or folder names get a placeholder too, so the next id is past every folder.
    numbered = [trial_id for trial_id in replayed.trials if trial_id.isdigit()]
    if numbered:
        highest = max(numbered, key=int)
        for number in range(int(highest)):
            trial_id = f"{number:0{len(highest)}d}"
            if trial_id not in replayed.trials:
                _placeholder(replayed, trial_id, "no record or folder names this id below the highest one")
                sources[trial_id] = "numbering"
    running = set(replayed.ongoing.values())
    for trial_id, state in replayed.trials.items():
        if state["status"] == "STOPPED" and (state["message"] or "").startswith(f"{LOST}:"):
            notes.append(f"trial {trial_id}: could not be kept: {state['message']}")
        elif state["status"] in ENDED or trial_id in running:
            notes.append(f"trial {trial_id}: kept, {state['status']}, from the {sources[trial_id]}")
        else:
            # Created but neither running nor ended (its holder's record lost): run it again.
            state["status"] = "IDLE"  # the restore queues it
            notes.append(f"trial {trial_id}: kept, queued to run again (its run's records are lost), "
                         f"from the {sources[trial_id]}")
    ended = [t for t, s in replayed.trials.items() if s["status"] in ENDED]
    replayed.end_order = [t for t in replayed.end_order if t in replayed.trials] + [
        t for t in ended if t not in replayed.end_order]
    return Rebuilt(replayed, notes)


def _placeholder(replayed: Replayed, trial_id: str, why: str) -> None:
    """A STOPPED trial that holds an id whose trial is lost (STOPPED: it neither runs again nor
    counts as a failure)."""
    replayed.trials[trial_id] = {
        "trial_id": trial_id, "hyperparameters": {"space": [], "values": {}}, "metrics": {"metrics": {}},
        "score": None, "best_step": 0, "status": "STOPPED", "message": f"{LOST}: {why} (ktc state rebuild)"}
    replayed.run_times.setdefault(trial_id, 1)
    if trial_id not in replayed.end_order:
        replayed.end_order.append(trial_id)


def rebuild(search_dir: Path) -> Rebuilt:
    """`collect`, then move `ktc-state/` aside and write the rebuilt state in its place."""
    rebuilt = collect(search_dir)
    state_dir = search_dir / STATE_FOLDER
    if state_dir.exists():
        rebuilt.aside = search_dir / f"{STATE_FOLDER}.before-rebuild-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        os.rename(state_dir, rebuilt.aside)
    state_dir.mkdir(parents=True)
    text = json.dumps({"generation": 1, "journal_created": True, "state": rebuilt.replayed.to_snapshot()})
    os.close(os.open(state_dir / "journal-1.jsonl", os.O_WRONLY | os.O_CREAT, 0o644))
    atomic_write(state_dir / SNAPSHOT, text)
    return rebuilt
