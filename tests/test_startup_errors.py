"""A chief that cannot start says why in one line, with the exit code for the system's refusal
(5), no traceback, and leaves its lock free for the next try."""

import os
import socket
import subprocess
import sys

import pytest

from harness import make_dataset

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("taken", ["oracle", "metrics"])
def test_a_port_in_use_is_one_line_and_exit_5(tmp_path, taken):
    with socket.socket() as holder, socket.socket() as free:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        free.bind(("127.0.0.1", 0))
        busy, spare = holder.getsockname()[1], free.getsockname()[1]
    # (the spare port is released here: only the busy one stays taken)
        oracle_port, metrics_port = (busy, spare) if taken == "oracle" else (spare, busy)
        free.close()
        out = subprocess.run([sys.executable, "-m", "kt_cluster", "chief", "--insecure",
                              "--results", str(tmp_path / "results"), "--data", str(make_dataset(tmp_path / "data")),
                              "--image-size", "32", "--metrics-port", str(metrics_port)],
                             capture_output=True, text=True, timeout=240,
                             env=dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1",
                                      KERASTUNER_ORACLE_PORT=str(oracle_port), TF_CPP_MIN_LOG_LEVEL="2"))
    errors = [line for line in out.stderr.splitlines() if line.startswith("ktc chief")]
    assert out.returncode == 5, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr and len(errors) == 1, out.stderr[-2000:]
    assert str(busy) in errors[0] and "in use" in errors[0], errors[0]
