"""Durable chief state: an append-only journal plus an occasional atomic snapshot.

keras-tuner rewrites `oracle.json` (every trial id and hash) on each CreateTrial and EndTrial, so a
call costs more as the search grows, and a kill mid-write tears the file. Here each change is one
JSON line appended to `journal-<generation>.jsonl`; a torn last line (the process died mid-write)
is dropped on replay. The records of one call are written and flushed together before the call
returns (`hold`/`release`), so a completed call survives a kill. A snapshot folds the journal
into `snapshot.json` (written to a temporary file, fsynced, renamed) and starts the next
generation, so restart time stays bounded.

Replay is strict: a record that is not a complete, valid record of a known kind (a trial record
with its metrics, an update or end of a known trial, ...) is corruption, and `load()` raises
`StateError` naming the file, the line and what is wrong, having changed nothing. Only a torn
LAST line (no newline: a kill mid-write) is dropped. Old generations are kept: a compaction to
generation N+1 keeps generation N's journal and snapshot (`snapshot-N.json`) and removes older
ones only then, so no start-up path deletes evidence (`kt_cluster.chief.recovery` rebuilds a
damaged state by hand).

Writes go through an unbuffered file: a failed write leaves nothing in a buffer for a later
flush to write behind the caller's back, and `rollback()` truncates the journal back to where
the failed call began.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from kt_cluster.core.atomic_files import atomic_write

SNAPSHOT = "snapshot.json"


# `json.dumps(x, separators=(",", ":"))`, with the encoder object made once rather than per call,
# and without cycle checks: journal records are trees.
compact_json: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


GENERATION = re.compile(r"journal-(\d+)\.jsonl")
TRIAL_KEYS = ("trial_id", "hyperparameters", "metrics", "score", "best_step", "status", "message")
TRIAL_STATUSES = frozenset(("RUNNING", "IDLE", "INVALID", "STOPPED", "COMPLETED", "FAILED"))


class StateError(Exception):
    """The chief's state on disk cannot be trusted: the chief refuses to start, changing nothing."""

    def __init__(self, path: os.PathLike | str, what: str, line: int | None = None):
        self.path, self.line, self.what = str(path), line, what
        where = f"{self.path} line {line}" if line is not None else self.path
        super().__init__(f"{where}: {what}")


class BadRecord(ValueError):
    """One record that is not a complete, valid record of a known kind."""


class JournalWriteError(OSError):
    """A call's records could not be written; the journal was cut back to where the call began."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_trial_state(state: Any) -> str:
    """The trial id of a trial's state as keras-tuner's `Trial.get_state()` writes it; `BadRecord`
    for anything less (a trial record without its metrics, an unknown status, ...)."""
    if not isinstance(state, dict):
        raise BadRecord("a trial's state must be a JSON object")
    missing = [key for key in TRIAL_KEYS if key not in state]
    if missing:
        raise BadRecord(f"trial record without {', '.join(missing)}")
    trial_id = state["trial_id"]
    if not isinstance(trial_id, str) or not trial_id or not trial_id.isprintable():
        raise BadRecord(f"trial_id must be a printable string, got {trial_id!r:.60}")
    if state["status"] not in TRIAL_STATUSES:
        raise BadRecord(f"trial {trial_id}: unknown status {state['status']!r:.40}")
    hps = state["hyperparameters"]
    if not isinstance(hps, dict) or not isinstance(hps.get("space"), list) or not isinstance(hps.get("values"), dict):
        raise BadRecord(f"trial {trial_id}: hyperparameters must hold a space list and a values object")
    metrics = state["metrics"]
    if not isinstance(metrics, dict) or not isinstance(metrics.get("metrics"), dict):
        raise BadRecord(f"trial {trial_id}: metrics must hold a metrics object")
    if state["score"] is not None and not _is_number(state["score"]):
        raise BadRecord(f"trial {trial_id}: score must be a number or null")
    if state["status"] == "COMPLETED" and state["score"] is None:
        raise BadRecord(f"trial {trial_id}: COMPLETED without a score")
    return trial_id


@dataclass
class Replayed:
    """What a journal says, folded: the input of `ClusterOracle.restore`."""

    trials: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> Trial state, start order
    oracle: dict[str, Any] | None = None  # the oracle's small state (no per-trial lists, no ongoing)
    ongoing: dict[str, str] = field(default_factory=dict)  # tuner id -> trial id of its running trial
    end_order: list[str] = field(default_factory=list)
    run_times: dict[str, int] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)  # kt-cluster's own small state
    # What the search is (`kt_cluster.chief.definition`): the latest one a chief accepted; None in
    # a journal written before definitions were stored.
    definition: dict[str, Any] | None = None
    stopped_early: set[str] = field(default_factory=set)
    # trial id -> [(metrics, step)]: UpdateTrial calls since that trial's last full record
    updates: dict[str, list[tuple[dict[str, float], int]]] = field(default_factory=dict)

    def apply(self, record: Any) -> None:
        """Fold one record in; `BadRecord` (and nothing changed) when it is not a valid record of
        a known kind, or names a trial the journal never created."""
        if not isinstance(record, dict):
            raise BadRecord(f"a record must be a JSON object, got {type(record).__name__}")
        if "trial" in record:
            state = record["trial"]
            trial_id = check_trial_state(state)
            self.trials[trial_id] = state
            self.updates.pop(trial_id, None)  # the full state includes them
        elif "update" in record:
            trial_id = self._known(record["update"], "an update")
            metrics, step = record.get("metrics"), record.get("step")
            if not isinstance(metrics, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in metrics.items()):
                raise BadRecord(f"update of trial {trial_id}: metrics must map names to numbers")
            if not isinstance(step, int) or isinstance(step, bool):
                raise BadRecord(f"update of trial {trial_id}: step must be an integer")
            self.updates.setdefault(trial_id, []).append((metrics, step))
        elif "oracle" in record:
            self._apply_oracle(record)
        elif "end" in record:
            trial_id = self._known(record["end"], "an end")
            run_times, final = record.get("run_times"), record.get("final")
            if not isinstance(run_times, int) or isinstance(run_times, bool) or not isinstance(final, bool):
                raise BadRecord(f"end of trial {trial_id}: needs an integer run_times and a boolean final")
            self.run_times[trial_id] = run_times
            if final and trial_id not in self.end_order:
                self.end_order.append(trial_id)
        elif "stopped_early" in record:
            self.stopped_early.add(self._known(record["stopped_early"], "an early stop"))
        elif "cluster" in record:
            cluster = record["cluster"]
            if (not isinstance(cluster, dict) or not isinstance(cluster.get("done"), bool)
                    or not isinstance(cluster.get("failure"), (str, type(None)))):
                raise BadRecord("cluster record needs a boolean done and a failure string or null")
            self.cluster = cluster
        elif "definition" in record:
            definition = record["definition"]
            if not isinstance(definition, dict) or not isinstance(definition.get("budget"), dict):
                raise BadRecord("definition record needs an object with a budget object")
            self.definition = definition
        else:
            raise BadRecord(f"unknown kind of record (keys: {', '.join(sorted(map(str, record)))[:80]})")

    def _known(self, trial_id: Any, what: str) -> str:
        if not isinstance(trial_id, str) or trial_id not in self.trials:
            raise BadRecord(f"{what} of trial {trial_id!r:.60}, which no record created")
        return trial_id

    def _apply_oracle(self, record: dict[str, Any]) -> None:
        # Snapshots hold the whole `ongoing_trials` map and the search space; journal records
        # only what changed since the previous record (the map has a line per worker).
        oracle = record["oracle"]
        ongoing_set, ongoing_drop = record.get("ongoing_set", {}), record.get("ongoing_drop", [])
        if not isinstance(oracle, dict):
            raise BadRecord("oracle record must hold a JSON object")
        whole = oracle.get("ongoing_trials", {})
        for name, value in (("ongoing_trials", whole), ("ongoing_set", ongoing_set)):
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise BadRecord(f"oracle record: {name} must map tuner ids to trial ids")
        if not isinstance(ongoing_drop, list) or not all(isinstance(t, str) for t in ongoing_drop):
            raise BadRecord("oracle record: ongoing_drop must list tuner ids")
        has_space = isinstance(oracle.get("hyperparameters"), dict) and isinstance(
            oracle["hyperparameters"].get("space"), list)
        if "hyperparameters" in oracle and not has_space:
            raise BadRecord("oracle record: hyperparameters must hold a space list")
        if not has_space and (self.oracle is None or "hyperparameters" not in self.oracle):
            raise BadRecord("oracle record without a search space, and none before it")
        oracle = dict(oracle)
        if not has_space:
            oracle["hyperparameters"] = self.oracle["hyperparameters"]  # unchanged since
        if "ongoing_trials" in oracle:
            self.ongoing = dict(oracle.pop("ongoing_trials"))
        self.ongoing.update(ongoing_set)
        for tuner_id in ongoing_drop:
            self.ongoing.pop(tuner_id, None)
        self.oracle = oracle

    def to_snapshot(self) -> dict[str, Any]:
        oracle = None if self.oracle is None else dict(self.oracle, ongoing_trials=self.ongoing)
        return {
            "trials": list(self.trials.values()), "oracle": oracle, "end_order": self.end_order,
            "run_times": self.run_times, "cluster": self.cluster, "stopped_early": sorted(self.stopped_early),
            "updates": self.updates, "definition": self.definition,
        }

    @classmethod
    def from_snapshot(cls, data: Any) -> "Replayed":
        """A snapshot's state, checked as strictly as the journal's records (`BadRecord`)."""
        if not isinstance(data, dict):
            raise BadRecord("the snapshot's state must be a JSON object")
        missing = [k for k in ("trials", "oracle", "end_order", "run_times", "cluster", "stopped_early") if k not in data]
        if missing:
            raise BadRecord(f"snapshot state without {', '.join(missing)}")
        if not isinstance(data["trials"], list):
            raise BadRecord("snapshot trials must be a list")
        replayed = cls()
        for state in data["trials"]:
            replayed.apply({"trial": state})
        if data["oracle"] is not None:  # None: rebuilt from trial files (the config's oracle)
            replayed.apply({"oracle": data["oracle"]})
        if data["cluster"]:
            replayed.apply({"cluster": data["cluster"]})
        if data.get("definition") is not None:  # absent from snapshots written before definitions
            replayed.apply({"definition": data["definition"]})
        if not isinstance(data["run_times"], dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in data["run_times"].values()):
            raise BadRecord("snapshot run_times must map trial ids to integers")
        replayed.run_times = dict(data["run_times"])
        for key in ("end_order", "stopped_early"):
            if not isinstance(data[key], list):
                raise BadRecord(f"snapshot {key} must be a list")
            for trial_id in data[key]:
                replayed._known(trial_id, f"snapshot {key} entry")
        replayed.end_order, replayed.stopped_early = list(data["end_order"]), set(data["stopped_early"])
        updates = data.get("updates", {})
        if not isinstance(updates, dict):
            raise BadRecord("snapshot updates must be an object")
        for trial_id, entries in updates.items():
            for entry in entries if isinstance(entries, list) else [None]:
                if not isinstance(entry, list) or len(entry) != 2:
                    raise BadRecord(f"snapshot update of trial {trial_id!r:.60} must be [metrics, step]")
                replayed.apply({"update": trial_id, "metrics": entry[0], "step": entry[1]})
        return replayed


def parse_line(line: bytes) -> Any:
    """One journal line as JSON; `BadRecord` when it is not (nesting too deep included)."""
    try:
        return json.loads(line)
    except UnicodeDecodeError:
        raise BadRecord("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRecord(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise BadRecord("JSON nested too deep") from None


def journal_generations(directory: Path) -> list[int]:
    found = []
    for path in Path(directory).glob("journal-*.jsonl"):
        match = GENERATION.fullmatch(path.name)
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def read_snapshot(path: Path) -> tuple[int, Any]:
    """(generation, state) of a snapshot file; `BadRecord` when it is not one."""
    try:
        data = parse_line(path.read_bytes())
    except OSError as exc:
        raise BadRecord(f"cannot read it ({exc.strerror})") from None
    if not isinstance(data, dict) or not isinstance(data.get("generation"), int) or isinstance(
            data.get("generation"), bool) or data["generation"] < 1 or "state" not in data:
        raise BadRecord("not a snapshot (needs a positive integer generation and a state)")
    return data["generation"], data


class Journal:
    """Appends records; `load()` replays snapshot + journal strictly; `snapshot()` compacts."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.generation = 0
        self.records = 0
        self._fd: int | None = None
        self._held: list[bytes] | None = None  # lines kept for one write, between hold() and release()
        self._torn: int | None = None  # offset of a torn last line found by load()
        self.failing = False  # the last write failed (a full disk): see `probe`

    def load(self) -> Replayed:
        """The state the files on disk hold; `StateError` (naming file, line and what is wrong)
        when any part of it cannot be trusted. Reads only."""
        snapshot_path = self.directory / SNAPSHOT
        generations = journal_generations(self.directory)
        replayed = Replayed()
        self.generation = 0
        expect_journal = False
        if snapshot_path.exists():
            try:
                self.generation, data = read_snapshot(snapshot_path)
                replayed = Replayed.from_snapshot(data["state"])
            except BadRecord as exc:
                raise StateError(snapshot_path, str(exc)) from None
            expect_journal = bool(data.get("journal_created"))
        elif any(g > 0 for g in generations):
            raise StateError(snapshot_path, f"missing, yet journal-{max(generations)}.jsonl of a later "
                                            "generation exists (the snapshot it continues is gone)")
        journal = self._journal_path()
        if expect_journal and not journal.exists():
            raise StateError(journal, f"missing: snapshot.json (generation {self.generation}) was written "
                                      "with it, so the records made since are gone")
        for later in (g for g in generations if g > self.generation):
            path = self._journal_path(later)
            if path.stat().st_size:  # an empty one: a compaction cut short before its snapshot
                raise StateError(path, f"records of generation {later}, but snapshot.json is of generation "
                                       f"{self.generation}")
        self.records = 0
        for number, record in self._read(journal):
            try:
                replayed.apply(record)
            except BadRecord as exc:
                raise StateError(journal, str(exc), line=number) from None
            self.records += 1
        return replayed

    def _read(self, path: Path) -> Iterator[tuple[int, Any]]:
        self._torn = None
        if not path.exists():
            return
        offset = 0
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    self._torn = offset  # torn tail of a write cut short by a kill: never acknowledged
                    return
                offset += len(line)
                try:
                    yield number, parse_line(line)
                except BadRecord as exc:
                    raise StateError(path, str(exc), line=number) from None

    def _journal_path(self, generation: int | None = None) -> Path:
        return self.directory / f"journal-{self.generation if generation is None else generation}.jsonl"

    def _open(self) -> int:
        """The journal's file descriptor, opened once; a torn last line found by `load()` is first
        copied aside (`journal-<n>.jsonl.torn-<offset>`) and cut off, so new records start on a
        line of their own."""
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self._journal_path()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if self._torn is not None:
                with open(path, "rb") as handle:
                    handle.seek(self._torn)
                    atomic_write(f"{path}.torn-{self._torn}", handle.read())
                os.ftruncate(fd, self._torn)
                self._torn = None
            self._fd = fd
        return self._fd

    def append(self, record: dict[str, Any]) -> None:
        self._write(compact_json(record))

    def append_encoded(self, key: str, value_json: str) -> None:
        """Append `{key: value}` where the value is already JSON text and the key a plain name
        (letters and underscores: nothing to escape)."""
        self._write(f'{{"{key}":{value_json}}}')

    def _write(self, line: str) -> None:
        self.records += 1
        data = line.encode() + b"\n"
        if self._held is not None:
            self._held.append(data)
        else:
            self._write_all(data)

    def _write_all(self, data: bytes) -> None:
        """Write `data` whole, or raise `JournalWriteError` with the journal as it was before."""
        fd = self._open()
        start = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            self.failing = True
            try:
                os.ftruncate(fd, start)
            except OSError as again:
                raise JournalWriteError(again.errno, f"cannot write the journal ({exc.strerror}) nor cut "
                                                     f"it back ({again.strerror})") from exc
            raise JournalWriteError(exc.errno, f"cannot write the journal: {exc.strerror}") from exc
        self.failing = False

    def probe(self, record: dict[str, Any]) -> None:
        """Write `record`, one that changes nothing on replay, to learn whether writes work again
        (`JournalWriteError` if not). While they fail, a call probes before it changes anything: a
        refusal then costs one write, not a change undone by reloading the whole state."""
        self.records += 1
        self._write_all(compact_json(record).encode() + b"\n")

    def hold(self) -> None:
        """Keep the next records in memory until `release()` writes them in one go (one call's
        records: the caller releases before it reports the call done)."""
        self._held = []

    def release(self) -> None:
        """Write the held records; on failure none of them is on disk (`JournalWriteError`)."""
        held, self._held = self._held, None
        if held:
            self._write_all(b"".join(held))

    def holding(self) -> bool:
        """Whether records wait for `release()`."""
        return bool(self._held)

    def discard(self) -> None:
        """Drop the held records (the call failed before it changed anything worth keeping)."""
        if self._held is not None:
            self.records -= len(self._held)
            self._held = []

    def snapshot(self, state: Replayed, encoded_trials: list[str] | None = None) -> None:
        """Fold everything into a snapshot of the next generation. The generation it replaces
        (its snapshot as `snapshot-<n>.json`, its journal) is kept as evidence; older ones go.

        `encoded_trials`, the JSON text of each trial's state in start order, replaces
        `state.trials` (the caller keeps ended trials encoded; re-encoding them all was most of a
        snapshot's cost). On failure (a full disk) the journal goes on as before."""
        held = self._held is not None
        self.release()  # records made before the snapshot belong to the journal it replaces
        if held:
            self.hold()
        old, new = self.generation, self.generation + 1
        body = state.to_snapshot()
        head = f'{{"generation":{new},"journal_created":true,"state":'
        if encoded_trials is None:
            text = head + json.dumps(body) + "}"
        else:
            del body["trials"]
            text = f'{head}{{"trials":[{",".join(encoded_trials)}],{json.dumps(body)[1:]}}}'
        new_journal = self._journal_path(new)
        current = self.directory / SNAPSHOT
        try:
            os.close(os.open(new_journal, os.O_WRONLY | os.O_CREAT, 0o644))
            if current.exists():
                kept = self.directory / f"snapshot-{old}.json"
                os.link(current, f"{kept}.tmp")
                os.replace(f"{kept}.tmp", kept)
            atomic_write(current, text)
        except OSError:
            if new_journal.exists() and not new_journal.stat().st_size:
                new_journal.unlink()
            raise
        self.close()
        self.generation, self.records = new, 0
        for generation in range(old):
            self._journal_path(generation).unlink(missing_ok=True)
            (self.directory / f"snapshot-{generation}.json").unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
