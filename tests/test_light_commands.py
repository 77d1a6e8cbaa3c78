"""Help, status, results and every argument, config, token and dataset error answer without
TensorFlow, Keras or keras-tuner: run here with those made unimportable (timings:
benchmarks/light_commands.py)."""

import os
import subprocess
from pathlib import Path

import pytest

from light_support import blocked, light_paths, write_files

NAMES = [p.name for p in light_paths(Path("light"))]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("light")
    write_files(folder)
    return {p.name: p for p in light_paths(folder)}


@pytest.mark.parametrize("name", NAMES)
def test_light_path_answers_without_tensorflow(paths, name):
    path = paths[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KTC_", "KERASTUNER_"))}
    out = subprocess.run(blocked(path.args), capture_output=True, text=True, timeout=60, env=env | path.env)
    said = out.stdout + out.stderr
    assert "is blocked" not in said, said
    assert out.returncode == path.code, said
    assert path.says in said
    if path.code != 0:  # one clear last line (after argparse's usage), no traceback
        assert "Traceback" not in said and path.says in out.stderr.strip().splitlines()[-1], said
