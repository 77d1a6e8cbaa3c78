"""The package layout: one installed namespace, and chief and worker independent of each other."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = {"core": ROOT / "core", "chief": ROOT / "chief", "worker": ROOT / "worker", "cli": ROOT / "ktc"}
# Which parts each part may import (beyond itself).
ALLOWED = {"core": set(), "chief": {"core"}, "worker": {"core"}, "cli": {"core", "chief", "worker"}}


def imported_parts(path: Path) -> set[str]:
    """The kt_cluster parts a module imports, wherever the import statement is."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            pieces = name.split(".")
            if pieces[0] in ("chief", "worker", "ktc", "core"):
                parts.add(f"top-level {pieces[0]}")  # a generic top-level name: never
            elif pieces[0] == "kt_cluster":
                parts.add(pieces[1] if len(pieces) > 1 and pieces[1] in ("core", "chief", "worker") else "cli")
    return parts


@pytest.mark.parametrize("part", sorted(PARTS))
def test_parts_import_only_what_they_may(part):
    wrong = {}
    for path in PARTS[part].rglob("*.py"):
        bad = imported_parts(path) - ALLOWED[part] - {part}
        if bad:
            wrong[str(path.relative_to(ROOT))] = sorted(bad)
    assert not wrong, f"{part} imports parts it must not: {wrong}"


def test_a_wheel_installs_only_the_kt_cluster_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel, = tmp_path.glob("kt_cluster-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"kt_cluster"}
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("kt_cluster/cli.py", "kt_cluster/core/config.py", "kt_cluster/chief/main.py",
                   "kt_cluster/worker/main.py", "kt_cluster/worker/data/pipeline.py"):
        assert module in names
