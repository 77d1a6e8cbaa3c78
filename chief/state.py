"""Durable chief state: an append-only journal plus an occasional atomic snapshot.

keras-tuner rewrites `oracle.json` (every trial id and hash) on each CreateTrial and EndTrial, so a
call costs more as the search grows, and a kill mid-write tears the file. Here each change is one
JSON line appended to `journal-<generation>.jsonl`; a torn last line (the process died mid-write)
is dropped on replay. The records of one call are written and flushed together before the call
returns (`hold`/`release`), so a completed call survives a kill. A snapshot folds the journal
into `snapshot.json` (written to a temporary file, fsynced, renamed) and starts the next
generation, so restart time stays bounded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from kt_cluster.core.atomic_files import atomic_write

SNAPSHOT = "snapshot.json"


# `json.dumps(x, separators=(",", ":"))`, with the encoder object made once rather than per call,
# and without cycle checks: journal records are trees.
compact_json: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


@dataclass
class Replayed:
    """What a journal says, folded: the input of `ClusterOracle.restore`."""

    trials: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> Trial state, start order
    oracle: dict[str, Any] | None = None  # the oracle's small state (no per-trial lists, no ongoing)
    ongoing: dict[str, str] = field(default_factory=dict)  # tuner id -> trial id of its running trial
    end_order: list[str] = field(default_factory=list)
    run_times: dict[str, int] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)  # kt-cluster's own small state
    stopped_early: set[str] = field(default_factory=set)
    # trial id -> [(metrics, step)]: UpdateTrial calls since that trial's last full record
    updates: dict[str, list[tuple[dict[str, float], int]]] = field(default_factory=dict)

    def apply(self, record: dict[str, Any]) -> None:
        if "trial" in record:
            state = record["trial"]
            self.trials[state["trial_id"]] = state
            self.updates.pop(state["trial_id"], None)  # the full state includes them
        elif "update" in record:
            if record["update"] in self.trials:
                self.updates.setdefault(record["update"], []).append((record["metrics"], record["step"]))
        elif "oracle" in record:
            # Snapshots hold the whole `ongoing_trials` map and the search space; journal records
            # only what changed since the previous record (the map has a line per worker).
            oracle = record["oracle"]
            if self.oracle is not None and "hyperparameters" in self.oracle:
                oracle.setdefault("hyperparameters", self.oracle["hyperparameters"])  # unchanged since
            if "ongoing_trials" in oracle:
                self.ongoing = dict(oracle.pop("ongoing_trials"))
            self.ongoing.update(record.get("ongoing_set", {}))
            for tuner_id in record.get("ongoing_drop", ()):
                self.ongoing.pop(tuner_id, None)
            self.oracle = oracle
        elif "end" in record:
            self.run_times[record["end"]] = record["run_times"]
            if record["final"]:
                self.end_order.append(record["end"])
        elif "stopped_early" in record:
            self.stopped_early.add(record["stopped_early"])
        elif "cluster" in record:
            self.cluster = record["cluster"]

    def to_snapshot(self) -> dict[str, Any]:
        oracle = None if self.oracle is None else dict(self.oracle, ongoing_trials=self.ongoing)
        return {
            "trials": list(self.trials.values()), "oracle": oracle, "end_order": self.end_order,
            "run_times": self.run_times, "cluster": self.cluster, "stopped_early": sorted(self.stopped_early),
            "updates": self.updates,
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> "Replayed":
        replayed = cls(
            trials={t["trial_id"]: t for t in data["trials"]},
            end_order=list(data["end_order"]), run_times=dict(data["run_times"]),
            cluster=dict(data["cluster"]), stopped_early=set(data["stopped_early"]),
            updates={k: [tuple(u) for u in v] for k, v in data.get("updates", {}).items()},
        )
        if data["oracle"] is not None:
            replayed.apply({"oracle": data["oracle"]})
        return replayed


class Journal:
    """Appends records; `load()` replays snapshot + journal; `snapshot()` compacts."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.generation = 0
        self.records = 0
        self._handle = None
        self._held: list[bytes] | None = None  # lines kept for one write, between hold() and release()

    def load(self) -> Replayed:
        snapshot_path = self.directory / SNAPSHOT
        replayed = Replayed()
        if snapshot_path.exists():
            data = json.loads(snapshot_path.read_text())
            self.generation = data["generation"]
            replayed = Replayed.from_snapshot(data["state"])
        for record in self._read(self._journal_path()):
            replayed.apply(record)
        return replayed

    def _read(self, path: Path) -> Iterator[dict[str, Any]]:
        if not path.exists():
            return
        with open(path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    return  # torn tail of a write cut short by a kill
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    return

    def _journal_path(self, generation: int | None = None) -> Path:
        return self.directory / f"journal-{self.generation if generation is None else generation}.jsonl"

    def append(self, record: dict[str, Any]) -> None:
        self._write(compact_json(record))

    def append_encoded(self, key: str, value_json: str) -> None:
        """Append `{key: value}` where the value is already JSON text and the key a plain name
        (letters and underscores: nothing to escape)."""
        self._write(f'{{"{key}":{value_json}}}')

    def _write(self, line: str) -> None:
        self.records += 1
        if self._held is not None:
            self._held.append(line.encode() + b"\n")
            return
        if self._handle is None:
            self._handle = open(self._journal_path(), "ab")
        self._handle.write(line.encode() + b"\n")
        self._handle.flush()  # in the OS's hands: survives a kill of this process

    def hold(self) -> None:
        """Keep the next records in memory until `release()` writes them in one go (one call's
        records: the caller releases before it reports the call done)."""
        self._held = []

    def release(self) -> None:
        held, self._held = self._held, None
        if held:
            if self._handle is None:
                self._handle = open(self._journal_path(), "ab")
            self._handle.write(b"".join(held))
            self._handle.flush()

    def snapshot(self, state: Replayed, encoded_trials: list[str] | None = None) -> None:
        """Fold everything into a snapshot of the next generation, then drop the old journal.

        `encoded_trials`, the JSON text of each trial's state in start order, replaces
        `state.trials` (the caller keeps ended trials encoded; re-encoding them all was most of a
        snapshot's cost)."""
        held = self._held is not None
        self.release()  # records made before the snapshot belong to the journal it replaces
        if held:
            self.hold()
        old = self._journal_path()
        self.generation += 1
        body = state.to_snapshot()
        if encoded_trials is None:
            text = json.dumps({"generation": self.generation, "state": body})
        else:
            del body["trials"]
            text = (f'{{"generation":{self.generation},"state":{{"trials":[{",".join(encoded_trials)}],'
                    f'{json.dumps(body)[1:]}}}')
        atomic_write(self.directory / SNAPSHOT, text)
        self.close()
        self.records = 0
        old.unlink(missing_ok=True)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
