"""keras-tuner behind one seam: only core/compat.py reaches into keras-tuner's internals, and
keras-tuner is pinned to the releases that seam was tested against, checked at start-up."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras_tuner
import pytest

from kt_cluster.core import compat

from harness import make_dataset

ROOT = Path(__file__).resolve().parent.parent
COMPAT = ROOT / "core" / "compat.py"
PRODUCTION = sorted(path for part in ("core", "chief", "worker", "ktc") for path in (ROOT / part).rglob("*.py")
                    if path != COMPAT)

# The private names of keras-tuner that compat wraps, each behind a name of its own.
WRAPPED = {
    "_hps", "_space",  # HyperParameters' name index and ordered space (search-space copy, trial from state)
    "_seed_state", "_max_collisions", "_duplicate",  # the sampler's state and duplicate check
    "_tried_so_far", "_retry_queue", "_run_times",  # Oracle state
    "_record_values", "_check_objective_found", "_maybe_infer_direction_from_objective",
    "_random_values", "_save_trial", "_check_consecutive_failures", "_compute_values_hash",  # hooks
    "_observations",  # MetricHistory's observations by step
    "_display", "_directory", "_project_name",  # the Oracle's printer and project folder
    "_get_checkpoint_fname",  # the Tuner's checkpoint path
}
MODULE_TABLES = {"THREADS", "LOCKS"}  # keras-tuner's oracle lock tables
STATE_KEYS = {"tried_so_far", "id_to_hash", "seed_state", "retry_queue"}  # get_state keys of private state


def keras_tuner_private_names() -> set[str]:
    """Every underscore name keras-tuner's source defines or uses as an attribute."""
    names = set()
    for path in Path(keras_tuner.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if _private(n)}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _root(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def reaches(source: str, private: set[str]) -> list[str]:
    """Where `source` reaches into keras-tuner's internals: `keras_tuner.src` imports, private
    names of keras-tuner as attributes or overridden methods, its module lock tables, underscore
    attributes of names bound to keras-tuner imports, get_state keys of its private state."""
    found = []
    tree = ast.parse(source)
    kt_names: set[str] = set()  # names bound to keras-tuner modules or objects
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "keras_tuner":
                    kt_names.add((alias.asname or alias.name).split(".")[0])
                if alias.name.startswith("keras_tuner.src"):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "keras_tuner":
            kt_names.update(alias.asname or alias.name for alias in node.names)
            if node.module.startswith("keras_tuner.src") or any(a.name == "src" for a in node.names):
                found.append(f"{node.lineno}: from {node.module} import ...")
    for node in ast.walk(tree):  # aliases such as `TrialStatus = trial_module.TrialStatus`
        if isinstance(node, ast.Assign) and _root(node.value) in kt_names:
            kt_names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr in MODULE_TABLES or _private(node.attr) and (
                    node.attr in private or _root(node) in kt_names):
                found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in private:
                    found.append(f"{item.lineno}: def {node.name}.{item.name} (an override)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "getattr", "setattr", "hasattr", "delattr"):
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in private:
                found.append(f"{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
        elif isinstance(node, ast.Constant) and node.value in STATE_KEYS:
            found.append(f"{node.lineno}: {node.value!r} (a get_state key)")
    return found


@pytest.fixture(scope="module")
def private() -> set[str]:
    return keras_tuner_private_names() | WRAPPED


def test_no_production_module_but_compat_reaches_into_keras_tuner(private):
    wrong = {str(path.relative_to(ROOT)): hits for path in PRODUCTION if (hits := reaches(path.read_text(), private))}
    assert not wrong, f"keras-tuner internals outside core/compat.py: {wrong}"


def test_the_scan_finds_each_kind_of_reach(private):
    source = textwrap.dedent("""
        import keras_tuner as kt
        from keras_tuner.src.engine import oracle as kt_oracle
        from keras_tuner.engine import trial as trial_module
        TrialStatus = trial_module.TrialStatus

        class Mine(kt.Oracle):
            def _random_values(self):
                kt_oracle.LOCKS[self].release()
                return getattr(self, "_seed_state"), self._retry_queue, TrialStatus._hidden, kt._x

            def save(self):
                return self.get_state()["tried_so_far"], self._my_own
    """)
    assert sorted(hit.split(": ", 1)[1] for hit in reaches(source, private)) == sorted([
        "from keras_tuner.src.engine import ...", "def Mine._random_values (an override)", ".LOCKS",
        "getattr(..., '_seed_state')", "._retry_queue", "._hidden", "._x", "'tried_so_far' (a get_state key)"])


def test_every_name_the_seam_wraps_is_keras_tuners_and_used_in_compat():
    source = COMPAT.read_text()
    assert WRAPPED <= keras_tuner_private_names()
    missing = {name for name in WRAPPED | MODULE_TABLES if not re.search(rf"\b{name}\b", source)}
    assert not missing, f"names the seam no longer uses: {missing}"


def test_keras_tuner_is_pinned_to_the_releases_compat_supports():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"keras-tuner[bayesian]{compat.SUPPORTED_RANGE}"' in pyproject
    assert compat.check_keras_tuner() == keras_tuner.__version__  # the tests run on a supported release
    assert (ROOT / "Dockerfile").read_text().count('python -c "import kt_cluster.core.compat"') == 2  # both images


@pytest.mark.parametrize("version, supported", [
    ("1.4.8", True), ("1.4.8.post1", True), ("1.4.7", False), ("1.4.9", False), ("1.4.9rc1", False),
    ("1.5.0", False), ("2.0", False), ("unknown", False)])
def test_only_the_tested_keras_tuner_releases_are_supported(version, supported):
    if supported:
        assert compat.check_keras_tuner(version) == version
    else:
        with pytest.raises(compat.UnsupportedKerasTuner, match=re.escape(f"supports keras-tuner{compat.SUPPORTED_RANGE}")):
            compat.check_keras_tuner(version)


# Runs `ktc` as if keras-tuner 1.4.7 were installed (its package metadata says so).
FAKE_VERSION = """
import importlib.metadata, sys
real = importlib.metadata.version
importlib.metadata.version = lambda name: "1.4.7" if name == "keras-tuner" else real(name)
from kt_cluster.cli import main
code = main(sys.argv[1:])
print("keras_tuner imported:", "keras_tuner" in sys.modules)
sys.exit(code)
"""


def _ktc_with_keras_tuner_1_4_7(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FAKE_VERSION, *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("role", ["chief", "worker"])
def test_chief_and_worker_refuse_an_untested_keras_tuner_in_one_line(role, tmp_path):
    env = {"KERASTUNER_TUNER_ID": "worker-0", "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "1"}
    data = make_dataset(tmp_path / "data")  # a good dataset: the chief checks it before keras-tuner
    results = tmp_path / "results"
    result = _ktc_with_keras_tuner_1_4_7(role, "--insecure", "--data", str(data), "--results", str(results),
                                         "--image-size", "32", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ktc {role}: keras-tuner 1.4.7 is installed; kt-cluster supports keras-tuner>=1.4.8,<1.4.9 "
        "(pip install 'keras-tuner>=1.4.8,<1.4.9')"]
    assert not results.exists()  # refused before anything was written


def test_light_commands_neither_import_nor_check_keras_tuner():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _ktc_with_keras_tuner_1_4_7("status", "--chief", f"127.0.0.1:{port}", "--insecure")
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr and "keras-tuner" not in result.stderr
    assert "keras_tuner imported: False" in result.stdout
