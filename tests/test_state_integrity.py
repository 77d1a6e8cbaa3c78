"""A search's state on disk that cannot be trusted stops `ktc chief` in one line, changing nothing;
`ktc state rebuild` recovers it from the valid records and the trial files; ids are never reused.

The state is made by driving the chief's oracle in-process (42 completed trials, compacted once),
then damaged one way per case, then handed to real `ktc chief` and `ktc state` processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras_tuner
import pytest
import yaml

from harness import make_dataset
from kt_cluster.chief.oracle import cluster_oracle_class
from kt_cluster.local import free_ports

pytestmark = pytest.mark.timeout(600)
SEARCH = "integrity"
TRIALS = 42


def drive(search: Path, trials: int = TRIALS, compact_after: int = 10, max_trials: int = 100) -> None:
    hp = keras_tuner.HyperParameters()
    hp.Int("start_neurons", 8, 4096)
    oracle = cluster_oracle_class(keras_tuner.oracles.RandomSearchOracle)(
        objective=keras_tuner.Objective("val_f1", "max"), max_trials=max_trials, hyperparameters=hp, seed=1)
    oracle._set_project_dir(str(search.parent), search.name)
    oracle.setup_cluster(search / "ktc-state", 60.0, 600.0, False)
    oracle.save()
    for index in range(trials):
        trial = oracle.create_trial("w0", session="s0")
        oracle.update_trial(trial.trial_id, {"val_f1": index / 100}, step=0, tuner_id="w0", session="s0")
        trial.status = "COMPLETED"
        oracle.end_trial(trial, tuner_id="w0", session="s0")
        if index == compact_after:
            oracle._compact()
    oracle.journal.close()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("state")
    drive(root / "results" / SEARCH)
    make_dataset(root / "data")
    return root


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "chief.lock"}


def case(pristine: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the search and a config pointing at it."""
    results = tmp_path / "results"
    shutil.copytree(pristine / "results", results)
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({
        "tuner": "random", "max_trials": 100, "epochs": 1, "search_id": SEARCH, "results": str(results),
        "data": {"path": str(pristine / "data"), "image_size": 32, "classes": ["table_number", "stamp", "signature"]},
        # The space `drive` journaled (start_neurons 8..4096; the U-Net's others are new to it, which
        # the chief takes only when new hyperparameters are allowed): a chief that starts accepts it.
        "allow_new_hyperparameters": True,
        "space": {"start_neurons": {"min": 8, "max": 4096, "step": 1}, "net_depth": {"min": 2, "max": 2}}}))
    return results / SEARCH, config


def ktc(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    port, = free_ports(1)
    return subprocess.run([sys.executable, "-m", "kt_cluster", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port),
                                   **(env or {})))


def journal(search: Path, generation: int = 1) -> Path:
    return search / "ktc-state" / f"journal-{generation}.jsonl"


def insert_line(path: Path, line: bytes, where: float = 0.25) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    at = max(1, int(len(lines) * where))
    path.write_bytes(b"".join(lines[:at] + [line + b"\n"] + lines[at:]))


def rewrite_first(path: Path, kind: str, change) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    for index, line in enumerate(lines):
        record = json.loads(line)
        if kind in record:
            change(record)
            lines[index] = json.dumps(record).encode() + b"\n"
            break
    path.write_bytes(b"".join(lines))


def drop_last_end(path: Path) -> None:
    """Cut the journal cleanly just before the last trial's end: its trial.json says more."""
    lines = path.read_bytes().splitlines(keepends=True)
    records = [json.loads(line) for line in lines]
    last = next(r["end"] for r in reversed(records) if "end" in r)
    cut = next(i for i, r in enumerate(records) if r.get("trial", {}).get("trial_id") == last
               and r["trial"]["status"] == "COMPLETED")
    path.write_bytes(b"".join(lines[:cut]))


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {
    # name: (damage, what the refusal names)
    "garbage line mid-journal": (lambda s: insert_line(journal(s), b"garbage{{"), "journal-1.jsonl line"),
    "non-UTF-8 line": (lambda s: insert_line(journal(s), b'{"trial": "\xff\xfe"}'), "not UTF-8"),
    "bare 42": (lambda s: insert_line(journal(s), b"42"), "must be a JSON object"),
    "JSON nested 100,000 deep": (lambda s: insert_line(journal(s), b"[" * 100_000 + b"]" * 100_000), "journal-1.jsonl line"),
    "end record of an unknown trial": (lambda s: insert_line(journal(s), b'{"end":"977","run_times":1,"final":true}', 0.9),
                                       "which no record created"),
    "trial record without metrics": (lambda s: rewrite_first(journal(s), "trial", lambda r: r["trial"].pop("metrics")),
                                     "without metrics"),
    "journal cut in half": (lambda s: cut_in_half(journal(s)), "the state does not know"),
    "deleted journal": (lambda s: journal(s).unlink(), "journal-1.jsonl: missing"),
    "deleted snapshot": (lambda s: (s / "ktc-state" / "snapshot.json").unlink(), "snapshot.json: missing"),
    "truncated snapshot": (lambda s: cut_in_half(s / "ktc-state" / "snapshot.json"), "snapshot.json: not JSON"),
    "{} snapshot": (lambda s: (s / "ktc-state" / "snapshot.json").write_text("{}"), "snapshot.json: not a snapshot"),
    "deleted state dir": (lambda s: shutil.rmtree(s / "ktc-state"), "ktc-state: no state, yet 42 trial folders"),
    "journal cut at a record boundary": (lambda s: drop_last_end(journal(s)), "its trial.json says it ended"),
}


def chief_args(config: Path) -> list[str]:
    return ["chief", "--config", str(config), "--insecure", "--metrics-port", str(free_ports(1)[0])]


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_state_that_cannot_be_trusted_stops_the_chief_in_one_line_and_changes_nothing(pristine, tmp_path, name):
    search, config = case(pristine, tmp_path)
    damage, said = CORRUPTIONS[name]
    damage(search)
    before = tree(search.parent)
    for args in (chief_args(config), ["state", "check", "--config", str(config)]):
        result = ktc(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 3, (name, args[0], result.stdout, result.stderr[-2000:])
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert said in lines[0] and "ktc state rebuild" in lines[0], lines[0]
        assert tree(search.parent) == before  # nothing deleted, compacted or rewritten


def test_a_torn_last_line_is_a_kill_mid_write_not_corruption(pristine, tmp_path):
    search, config = case(pristine, tmp_path)
    with open(journal(search), "ab") as handle:
        handle.write(b'{"trial": {"trial_id": "042", "hyperpar')
    result = ktc("state", "check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"{TRIALS} trials ({TRIALS} completed)" in result.stdout


@pytest.mark.parametrize("name", ["garbage line mid-journal", "journal cut in half", "deleted journal",
                                  "deleted snapshot", "{} snapshot", "trial record without metrics"])
def test_rebuild_keeps_every_trial_the_files_or_valid_records_hold_and_sets_the_old_state_aside(
        pristine, tmp_path, name):
    search, config = case(pristine, tmp_path)
    CORRUPTIONS[name][0](search)
    damaged = tree(search / "ktc-state")
    result = ktc("state", "rebuild", "--config", str(config))
    assert result.returncode == 0, result.stderr
    kept = [line for line in result.stdout.splitlines() if ": kept, COMPLETED" in line]
    assert len(kept) == TRIALS, result.stdout
    aside = next(search.glob("ktc-state.before-rebuild-*"))
    assert tree(aside) == damaged  # the old files, all of them, untouched
    check = ktc("state", "check", "--config", str(config))
    assert check.returncode == 0 and f"{TRIALS} trials ({TRIALS} completed)" in check.stdout, check.stderr


def test_a_rebuilt_state_dir_resumes_the_search_with_new_ids_after_the_old_ones(pristine, tmp_path):
    """The worst case: the state dir is gone; the trial files alone give the trials back, and the
    next trial the real chief hands out is a new id, not trial 0 again."""
    from harness import Cluster  # noqa: F401 - the same environment as every chief test
    from kt_cluster.core import compat

    search, config = case(pristine, tmp_path)
    shutil.rmtree(search / "ktc-state")
    assert ktc("state", "rebuild", "--config", str(config)).returncode == 0
    port, metrics_port = free_ports(2)
    log = open(tmp_path / "chief.log", "wb")
    chief = subprocess.Popen([sys.executable, "-m", "kt_cluster", "chief", "--config", str(config), "--insecure",
                              "--metrics-port", str(metrics_port)], stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port)),
                             start_new_session=True)
    try:
        import grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = compat.oracle_stub_class()(channel)
            reply = stub.CreateTrial(compat.oracle_messages().CreateTrialRequest(tuner_id="w9"),
                                     timeout=120, wait_for_ready=True)
        assert reply.trial.trial_id == f"{TRIALS:03d}"
        second = ktc(*chief_args(config))
        assert second.returncode == 4 and "another chief serves this search" in second.stderr, second.stderr
        assert f"pid {chief.pid}" in second.stderr
    finally:
        os.killpg(chief.pid, 9)
        chief.wait()
        log.close()
    trial_files = sorted(search.glob("trial_*/trial.json"))
    assert len(trial_files) == TRIALS and all(json.loads(p.read_text())["status"] == "COMPLETED" for p in trial_files)


def test_rebuild_holds_the_ids_of_folders_it_cannot_read_so_no_new_trial_takes_them(pristine, tmp_path):
    search, config = case(pristine, tmp_path)
    shutil.rmtree(search / "ktc-state")
    for trial_id in ("010", "050"):  # one unreadable, one only holding checkpoints (a running trial)
        folder = search / f"trial_{trial_id}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / "checkpoint.weights.h5").write_bytes(b"\0")
    (search / "trial_010" / "trial.json").write_text("{torn")
    result = ktc("state", "rebuild", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "trial 010: could not be kept" in result.stdout and "trial 050: could not be kept" in result.stdout
    assert "trial 045: could not be kept" in result.stdout  # an id below the highest one on disk
    check = ktc("state", "check", "--config", str(config))
    assert check.returncode == 0 and "51 trials" in check.stdout, (check.stdout, check.stderr)


@pytest.mark.parametrize("which", ["oracle", "metrics"])
def test_a_port_in_use_stops_the_chief_in_one_line_after_it_cleaned_its_leftover_temporary_files(pristine, tmp_path, which):
    import socket

    search, config = case(pristine, tmp_path)
    leftovers = [search / "trial_003" / ".trial.tmp-4242.json", search / "ktc-state" / ".snapshot.tmp-4242.json"]
    for path in leftovers:  # writes a kill or a full disk cut short
        path.write_text('{"half')
    workers_own = search / "trial_003" / ".checkpoint.tmp-4242.weights.h5"
    workers_own.write_bytes(b"\0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = free_ports(1)[0]
        oracle_port, metrics_port = (port, other) if which == "oracle" else (other, port)
        result = subprocess.run(
            [sys.executable, "-m", "kt_cluster", "chief", "--config", str(config), "--insecure",
             "--metrics-port", str(metrics_port)], capture_output=True, text=True, timeout=180,
            env=dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(oracle_port)))
    errors = [line for line in result.stderr.splitlines() if line.startswith("ktc chief:")]
    assert result.returncode == 5, result.stderr[-3000:]
    assert len(errors) == 1 and str(port) in errors[0] and "in use" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not any(path.exists() for path in leftovers)  # the chief's own leftovers are cleaned at start
    assert workers_own.exists()  # a worker's, which may be writing it right now, is not the chief's to remove
