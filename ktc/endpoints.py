"""`endpoints.json`: where a `ktc local` search can be reached, for tools and tests.

`ktc local` writes it into its run folder, `<results>/<search_id>/local/`, once its processes
are started:

    {"search_id": "quickstart", "chief": "127.0.0.1:41231", "chief_metrics_port": 38411,
     "token_file": ".../local/token", "results": "/abs/ktc-results",
     "search_dir": "/abs/ktc-results/quickstart", "launcher_pid": 4242,
     "processes": {"chief": {"pid": 4243, "metrics_port": 38411, "log": ".../local/chief.log"},
                   "worker-0": {"pid": 4244, "metrics_port": 40199, "log": ".../local/worker-0.log"}}}

`ktc status --results DIR` reads it to find the chief and its token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kt_cluster.core.atomic_files import atomic_write
from kt_cluster.core.config import ConfigError

RUN_FOLDER = "local"
FILE = "endpoints.json"


def run_dir(search_dir: Path) -> Path:
    """The folder of a `ktc local` run: its config, token, logs and endpoints file."""
    return Path(search_dir) / RUN_FOLDER


def write(path: Path, endpoints: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(endpoints, indent=2) + "\n", fsync=False)


def read(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def find(results: Path, search_id: str | None = None) -> Path:
    """The endpoints file of the one local search in `results` (or of `search_id`)."""
    results = Path(results)
    if search_id:
        path = run_dir(results / search_id) / FILE
        if not path.is_file():
            raise ConfigError(f"--results: no local search {search_id!r} in {results} (no {path})")
        return path
    found = sorted(results.glob(f"*/{RUN_FOLDER}/{FILE}"))
    if not found:
        raise ConfigError(f"--results: {results} holds no search started by ktc local (no */{RUN_FOLDER}/{FILE})")
    if len(found) > 1:
        names = ", ".join(p.parent.parent.name for p in found)
        raise ConfigError(f"--results: {results} holds several local searches ({names}); pick one with --search-id")
    return found[0]
