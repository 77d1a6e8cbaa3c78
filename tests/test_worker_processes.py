"""`ktc worker --processes N`: N worker processes in one pod, each its own worker, one supervisor."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from kt_cluster.core.config import ConfigError
from kt_cluster.processes import Slot, plan, supervise

ARGV = ["worker", "--config", "/etc/ktc/search.yaml", "--processes", "4", "--gpus=2", "--gpus-per-trial", "1",
        "--metrics-port", "9101", "--threads=8", "--grace-seconds", "25", "--gpu-memory-mb", "20000"]


def test_each_child_gets_its_own_id_port_threads_and_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = plan(ARGV, "worker-3", processes=4, metrics_port=9101, threads=None, gpus=2, gpus_per_trial="1")
    assert [s.tuner_id for s in slots] == ["worker-3.0", "worker-3.1", "worker-3.2", "worker-3.3"]
    assert [s.env["KERASTUNER_TUNER_ID"] for s in slots] == [s.tuner_id for s in slots]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "1", "0", "1"]
    threads = str(max(1, (os.cpu_count() or 1) // 4))
    for i, slot in enumerate(slots):
        assert slot.argv[:4] == [sys.executable, "-m", "kt_cluster", "worker"]
        args = slot.argv[4:]
        assert args == ["--config", "/etc/ktc/search.yaml", "--grace-seconds", "25", "--gpu-memory-mb", "20000",
                        "--metrics-port", str(9101 + i), "--threads", threads]
        assert slot.env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_trials_on_all_gpus_see_every_gpu_and_one_gpu_trials_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    everywhere = plan(["worker"], "worker-0", processes=2, metrics_port=9101, threads=2, gpus=2, gpus_per_trial="all")
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in everywhere] == ["5,7", "5,7"]
    one_each = plan(["worker"], "worker-0", processes=2, metrics_port=9101, threads=2, gpus=2, gpus_per_trial="1")
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in one_each] == ["5", "7"]


@pytest.mark.parametrize("processes, gpus, mode, says", [
    (3, 2, "1", r"^--processes: 3 processes do not spread evenly over 2 GPUs"),
    (2, 0, "1", r"^--gpus-per-trial 1: needs --gpus"),
    (0, 1, "all", r"^--processes: must be >= 1"),
])
def test_impossible_layouts_are_refused_before_anything_starts(processes, gpus, mode, says):
    with pytest.raises(ConfigError, match=says):
        plan(["worker"], "worker-0", processes=processes, metrics_port=9101, threads=1, gpus=gpus, gpus_per_trial=mode)


def _slot(index: int, code: str) -> Slot:
    return Slot(index, f"w.{index}", [sys.executable, "-c", code], dict(os.environ))


def test_a_failed_child_is_restarted_alone_and_the_pod_ends_when_all_are_done(tmp_path):
    marker = tmp_path / "failed-once"
    flaky = f"import pathlib, sys; m = pathlib.Path({str(marker)!r}); sys.exit(0 if m.exists() else m.touch() or 1)"
    count = tmp_path / "starts"
    steady = f"open({str(count)!r}, 'a').write('x')"
    started = time.monotonic()
    assert supervise([_slot(0, flaky), _slot(1, steady)], grace_seconds=5) == 0
    assert marker.exists() and count.read_text() == "x"  # the healthy child ran once
    assert time.monotonic() - started < 20


def test_a_usage_error_in_a_child_stops_the_others_and_exits_2(tmp_path):
    assert supervise([_slot(0, "import sys; sys.exit(2)"), _slot(1, "import time; time.sleep(60)")],
                     grace_seconds=1) == 2


def _adjacent_free_ports(count: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        try:
            sockets = [socket.create_server(("127.0.0.1", first + i)) for i in range(count)]
        except OSError:
            continue
        for s in sockets:
            s.close()
        return first
    raise AssertionError("no adjacent free ports")


def test_sigterm_to_the_pod_hands_back_every_processs_trial(cluster):
    c = cluster(config={"max_trials": 3, "epochs": 60, "lease_seconds": 60})
    c.start_chief("--linger")
    port = _adjacent_free_ports(2)
    pod = c._spawn("pod", ["worker", "--config", str(c.config_path), *c._auth_args(), "--processes", "2",
                           "--metrics-port", str(port)], {"KERASTUNER_TUNER_ID": "worker-0"})
    ids = {"worker-0.0", "worker-0.1"}
    c.wait_for(lambda s: {r["tuner_id"] for r in s["running"] if r["epoch"] >= 0} == ids,
               what="both processes training a trial")
    for i, tuner_id in enumerate(sorted(ids)):  # each serves its own metrics
        assert f'ktc_worker_info{{tuner_id="{tuner_id}"}} 1.0' in c.scrape(port + i)
    os.kill(pod.pid, signal.SIGTERM)  # as the kubelet does: to the pod's first process only
    assert c.wait_exit("pod", timeout=60) == 0, c.tail("pod", 80)
    status = c.wait_for(lambda s: not s["running"], timeout=10, what="no trial held")
    assert status["queued"] == 2 and not status["done"]
    assert 'ktc_chief_trials_requeued_total{reason="handback"} 2.0' in c.scrape(c.chief_metrics_port)
    left = subprocess.run(["pgrep", "-f", f"kt_cluster worker --config {c.config_path}"], capture_output=True)
    assert left.stdout == b"", "a worker process outlived its pod"
