"""A full disk under a real chief: results on a small tmpfs, filled while trials run.

Every call that answers an error must have changed nothing (in memory and after a restart), no
temporary file is left behind, calls succeed again once there is room, and a chief started on a
full disk says so in one line. Needs root to mount the tmpfs; skipped with the reason otherwise.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest

from harness import TOKEN, make_dataset
from kt_cluster.core import compat, protocol

pytestmark = pytest.mark.timeout(400)

TMPFS_BYTES = 8 * 1024 * 1024
TRIALS = 8


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder: Path) -> Path:
    """Take every free byte of the file system holding `folder` (unbuffered: a buffered writer
    would try its failed buffer again on close)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


class Worker:
    """A kt-cluster worker's calls (session and tuner id), without training."""

    def __init__(self, address: str, tuner_id: str):
        self.channel = grpc.insecure_channel(address)
        self.stub = compat.oracle_stub_class()(self.channel)
        self.m = compat.oracle_messages()
        self.tuner_id = tuner_id
        self.meta = [(protocol.AUTHORIZATION, f"Bearer {TOKEN}"), (protocol.SESSION, uuid.uuid4().hex),
                     (protocol.TUNER_ID, tuner_id)]

    def create(self):
        return self.stub.CreateTrial(self.m.CreateTrialRequest(tuner_id=self.tuner_id), metadata=self.meta,
                                     timeout=10, wait_for_ready=True).trial

    def update(self, trial_id: str, value: float, step: int = 0):
        self.stub.UpdateTrial(self.m.UpdateTrialRequest(trial_id=trial_id, metrics={"val_f1": value}, step=step),
                              metadata=self.meta, timeout=10)

    def end(self, trial) -> grpc.StatusCode:
        trial.status = compat.status_proto("COMPLETED")
        try:
            self.stub.EndTrial(self.m.EndTrialRequest(trial=trial), metadata=self.meta, timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()

    def status_of(self, trial_id: str) -> str:
        trial = self.stub.GetTrial(self.m.GetTrialRequest(trial_id=trial_id), metadata=self.meta, timeout=10).trial
        return compat.TrialStatus.from_proto(trial.status)


def temp_files(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp-" in p.name]


def test_calls_that_fail_on_a_full_disk_change_nothing_and_succeed_once_there_is_room(cluster, tmp_path, small_disk):
    c = cluster(data=make_dataset(tmp_path / "data"), config={
        "max_trials": 1000, "space": {"start_neurons": {"min": 8, "max": 100_000, "step": 1}}})
    c.results = small_disk / "results"
    c.config["results"] = str(c.results)
    import yaml

    c.config_path.write_text(yaml.safe_dump(c.config))
    c.token_path.chmod(0o600)
    c.start_chief()
    c.wait_for(lambda s: True, timeout=120, what="chief up")
    workers = [Worker(c.address, f"w{n}") for n in range(TRIALS)]
    trials = []
    for n, worker in enumerate(workers):
        trial = worker.create()
        worker.update(trial.trial_id, 0.1 * (n + 1))
        trials.append(trial)
    (done_before := workers[0]).end(trials[0])  # one trial completes before the disk fills
    filler = fill(small_disk)

    answers = {}
    for worker, trial in zip(workers[1:], trials[1:]):
        answers[trial.trial_id] = worker.end(trial)
    failed = [t for t, code in answers.items() if code != grpc.StatusCode.OK]
    assert len(failed) >= 3, f"the disk was not full enough to test anything: {answers}"
    assert all(code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED)
               for t, code in answers.items() if t in failed), answers
    # An error means nothing happened: still running, in memory...
    for worker, trial in zip(workers[1:], trials[1:]):
        expected = "COMPLETED" if answers[trial.trial_id] == grpc.StatusCode.OK else "RUNNING"
        assert worker.status_of(trial.trial_id) == expected, trial.trial_id
    status = c.status()  # read paths keep answering on a full disk
    assert status is not None and status["completed"] == 1 + TRIALS - 1 - len(failed)
    assert "ktc_chief_trials" in c.scrape(c.chief_metrics_port)
    assert not temp_files(c.results), "temporary files left behind"

    # ... and after a restart from what is on disk.
    filler.unlink()
    c.kill("chief")
    c.start_chief()
    c.wait_for(lambda s: True, timeout=120, what="chief back")
    assert done_before.status_of(trials[0].trial_id) == "COMPLETED"
    for worker, trial in zip(workers[1:], trials[1:]):
        expected = "COMPLETED" if answers[trial.trial_id] == grpc.StatusCode.OK else "RUNNING"
        assert worker.status_of(trial.trial_id) == expected, f"{trial.trial_id} after a restart"
    # With room again, the same calls succeed, once each.
    for worker, trial in zip(workers[1:], trials[1:]):
        if trial.trial_id in failed:
            assert worker.end(trial) == grpc.StatusCode.OK
            assert worker.status_of(trial.trial_id) == "COMPLETED"
    status = c.wait_for(lambda s: s["completed"] == TRIALS, timeout=30, what="every trial completed")
    assert status["total"] == TRIALS
    assert not temp_files(c.results)


def test_a_chief_started_on_a_full_disk_says_so_in_one_line(tmp_path, small_disk):
    results = small_disk / "results"
    filler = fill(small_disk)
    try:
        out = subprocess.run([sys.executable, "-m", "kt_cluster", "chief", "--insecure", "--results", str(results),
                              "--data", str(make_dataset(tmp_path / "data")), "--metrics-port", "0"],
                             capture_output=True, text=True, timeout=180,
                             env=dict(os.environ, KERASTUNER_ORACLE_PORT="0", TF_CPP_MIN_LOG_LEVEL="2"))
    finally:
        filler.unlink()
    errors = [line for line in out.stderr.splitlines() if line.startswith("ktc chief")]
    assert out.returncode == 5, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(errors) == 1, out.stderr[-2000:]
    assert "No space left on device" in errors[0]
    assert not temp_files(small_disk)
