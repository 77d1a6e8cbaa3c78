"""benchmarks/gpu_bench.py stays runnable: a tiny run of it on the CPU, as it runs on a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_bench.py"


def _run(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "rows.json"
    result = subprocess.run([sys.executable, str(BENCH), "--tiny", "--scenarios", "2 per GPU", "--seconds", "5",
                             "--data-dir", str(tmp_path / "data"), "--json", str(out), *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "| 2 per GPU | 2 | " in result.stdout and "overhead split" in result.stdout
    return json.loads(out.read_text())


def _check(rows: list[dict], backend: str) -> None:
    (row,) = rows
    assert row["backend"] == backend and row["processes"] == 2 and "error" not in row
    assert row["overhead"]["n"] >= 1  # complete trials observed, split into phases
    assert row["gpu_util"] is None  # no nvidia-smi here: said as n/a, never made up


def test_two_worker_processes_share_the_device_and_are_measured(tmp_path):
    _check(_run(tmp_path, "--backend", "tensorflow"), "tensorflow")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                    reason="JAX is not installed (not a project dependency): the TensorFlow-free path needs it")
def test_without_tensorflow_the_same_run_goes_through_keras_on_jax(tmp_path):
    _check(_run(tmp_path, "--backend", "jax", "--no-tensorflow"), "jax")
