"""The Dockerfile, read as text (no container engine on the test machines): the targets the chart
runs, bases pinned by digest, dependencies in a layer of their own, and its embedded commands.

Checkov's Dockerfile policies run over it too (tests/test_chart_security.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from chart_support import CHART, DOCS, ROOT, container, find, render

DOCKERFILE = ROOT / "Dockerfile"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def runs(self) -> list[str]:
        return [args for op, args in self.instructions if op == "RUN"]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages), continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " " if raw.rstrip().endswith("\\") else raw.strip()
        if not raw.rstrip().endswith("\\"):
            lines.append(current)
            current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.I)
            assert match, f"every stage is named: {line}"
            stages.append(Stage(match.group(1), match.group(2)))
        elif not stages:
            assert op == "ARG", f"only ARG before the first FROM: {line}"
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append((op, rest.strip()))
    return args, stages


ARGS, STAGES = parse(DOCKERFILE.read_text())
BY_NAME = {stage.name: stage for stage in STAGES}


def resolve(image: str) -> str:
    """A FROM's image after ARG defaults: another stage's name, or a registry image."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: ARGS[m.group(1) or m.group(2)], image)


def ancestry(name: str) -> list[str]:
    chain = [name]
    while (base := resolve(BY_NAME[chain[-1]].base)) in BY_NAME:
        chain.append(base)
    return chain + [resolve(BY_NAME[chain[-1]].base)]


def test_every_base_image_is_pinned_by_digest():
    external = {resolve(s.base) for s in STAGES} - set(BY_NAME)
    assert external, "no base image found"
    for image in external:
        assert DIGEST.search(image), f"{image}: not pinned by digest"
        assert not image.split("@")[0].endswith(":latest")


def test_the_targets_the_chart_runs_exist_and_share_the_dependency_layers():
    """The chart runs `<tag>` (target gpu) on GPU workers and `<tag>-cpu` (target cpu) elsewhere."""
    objects = render()
    assert container(find(objects, "StatefulSet", "-worker"))["image"] == "kt-cluster:0.1.0"
    assert container(find(objects, "StatefulSet", "-chief"))["image"] == "kt-cluster:0.1.0-cpu"
    assert {"cpu", "gpu"} <= set(BY_NAME)
    assert ancestry("cpu")[:-1] == ["cpu", "deps-cpu", "base"]
    assert ancestry("gpu")[:-1] == ["gpu", "deps-gpu", "deps-cpu", "base"]  # CUDA on top of the same layers
    assert STAGES[-1].name == "gpu"  # `docker build .` without --target gives the GPU image
    assert any("tensorflow[and-cuda]" in run for run in BY_NAME["deps-gpu"].runs())
    assert not any("cuda" in run for name in ancestry("cpu")[:-1] for run in BY_NAME[name].runs())
    for target in ("cpu", "gpu"):
        stage = dict(BY_NAME[target].instructions)
        assert stage["USER"] == "1000:1000" and stage["ENTRYPOINT"] == '["ktc"]', target
        assert re.search(r'pip install --no-deps /wheels/\*\.whl', stage["RUN"]), target
    # The build commands in the Dockerfile and the docs tag what the chart expects.
    for text in (DOCKERFILE.read_text(), DOCS.read_text()):
        assert re.search(r"docker build --target gpu -t \S+/kt-cluster:0\.1\.0 \.", text)
        assert re.search(r"docker build --target cpu -t \S+/kt-cluster:0\.1\.0-cpu \.", text)
    chart_version = (CHART / "Chart.yaml").read_text()
    assert 'appVersion: "0.1.0"' in chart_version


def test_dependencies_are_installed_before_the_source_is_seen():
    """A change of the source must not reinstall every dependency: the dependency stages see only
    pyproject.toml, and only the wheel stage mounts the build context."""
    for name in ("base", "deps-cpu", "deps-gpu"):
        for op, args in BY_NAME[name].instructions:
            if op in ("COPY", "ADD"):
                assert args.split() == ["pyproject.toml", "/build/pyproject.toml"], (name, args)
            assert "--mount=type=bind,target=/src" not in args, name
    mounts = [s.name for s in STAGES for run in s.runs() if re.search(r"--mount=type=bind,target=/src", run)]
    assert mounts == ["wheel"]
    assert not any(op in ("COPY", "ADD") for s in STAGES if s.name in ("cpu", "gpu") for op, _ in s.instructions)


def test_the_requirements_command_lists_pyproject_dependencies(tmp_path):
    """The dependency layer's `python -c` really turns pyproject.toml into a requirements list."""
    run = next(r for r in BY_NAME["deps-cpu"].runs() if "tomllib" in r)
    code = re.search(r'python -c "(.*?)" >', run).group(1)  # the shell passes it as is
    out = subprocess.run([sys.executable, "-c", code.replace("/build/pyproject.toml", str(ROOT / "pyproject.toml"))],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [line for line in out if line] == project["dependencies"] + project["optional-dependencies"]["neptune"]
    assert any(line.startswith("tensorflow") for line in out)


@pytest.mark.parametrize("path", [".dockerignore"])
def test_the_build_context_leaves_out_what_the_image_does_not_need(path):
    ignored = {line.strip() for line in (ROOT / path).read_text().splitlines() if line and not line.startswith("#")}
    assert {".git", ".venv*", "tests", "helm"} <= ignored
    assert not {"pyproject.toml", "README.md", "ktc", "core", "chief", "worker"} & ignored  # what `pip wheel` builds
