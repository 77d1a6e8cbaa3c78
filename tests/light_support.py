"""The light paths of `ktc`: commands that must answer without TensorFlow or keras-tuner.

`--help` of every command, `ktc status`, `ktc results`, and every argument, config, token and
dataset error (they are found before anything heavy loads). `light_paths(folder)` lists them,
`write_files(folder)` writes what they read; `blocked(argv)` runs `ktc` with TensorFlow, Keras and
keras-tuner made unimportable, so that a light path that imports one of them fails loudly.
Used by tests/test_light_commands.py and benchmarks/light_commands.py.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

HEAVY = ("tensorflow", "keras", "keras_tuner", "tensorboard", "tf_keras")
BLOCKER = f"""
import runpy, sys
class Heavy:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}} is blocked: a light path must not import it")
sys.meta_path.insert(0, Heavy())
sys.argv[0] = "ktc"
runpy.run_module("kt_cluster", run_name="__main__", alter_sys=True)
"""


def blocked(args: list[str]) -> list[str]:
    """argv of `ktc ARGS` with the heavy modules unimportable."""
    return [sys.executable, "-c", BLOCKER, *args]


def plain(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "kt_cluster", *args]


@dataclass
class LightPath:
    name: str
    args: list[str]
    code: int  # expected exit status
    says: str  # expected in stdout + stderr
    env: dict[str, str] = field(default_factory=dict)


def write_files(folder: Path) -> None:
    """What the light paths of `light_paths(folder)` read."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "search.yaml").write_text(f"data: {{path: {folder / 'no-data'}}}\nresults: {folder / 'results'}\n")
    (folder / "bad.yaml").write_text("data: {image_size: 4}\n")
    (folder / "short-token").write_text("short")
    (folder / "token").write_text("a-token-of-more-than-16-characters")
    _results(folder / "results")


def light_paths(folder: Path) -> list[LightPath]:
    """Every light path, reading files under `folder` (see `write_files`)."""
    config, bad_config = folder / "search.yaml", folder / "bad.yaml"
    short_token, token, results = folder / "short-token", folder / "token", folder / "results"
    worker_env = {"KERASTUNER_TUNER_ID": "worker-0", "KERASTUNER_ORACLE_IP": "127.0.0.1"}
    paths = [LightPath(f"help-{c or 'ktc'}", [c, "--help"] if c else ["--help"], 0, "usage: ktc")
             for c in ("", "local", "chief", "worker", "status", "results", "data")]
    paths += [
        LightPath("status-no-token", ["status"], 2, "--auth-token-file: authentication is on by default"),
        LightPath("status-unreachable", ["status", "--chief", "127.0.0.1:9", "--insecure"], 1, "UNAVAILABLE"),
        LightPath("status-no-local-search", ["status", "--results", str(folder)], 2, "holds no search started by ktc local"),
        LightPath("results-summary", ["results", "--results", str(results)], 0, "rank  trial"),
        LightPath("results-json", ["results", "--results", str(results), "--format", "json"], 0, '"trial_id": "0"'),
        LightPath("results-missing", ["results", "--results", str(folder / "nowhere")], 1, "no search found"),
        LightPath("chief-no-token", ["chief", "--config", str(config)], 2, "--auth-token-file: authentication is on"),
        LightPath("chief-missing-token-file", ["chief", "--auth-token-file", str(folder / "nope")], 2,
                  f"--auth-token-file: cannot read {folder / 'nope'}"),
        LightPath("chief-short-token", ["chief", "--auth-token-file", str(short_token)], 2, "shorter than 16 characters"),
        LightPath("chief-config-error", ["chief", "--insecure", "--config", str(bad_config)], 2,
                  "data.image_size: must be >= 8 pixels, got 4"),
        LightPath("chief-flag-error", ["chief", "--insecure", "--max-trials", "0"], 2,
                  "max_trials: must be >= 1, got 0 (from --max-trials)"),
        LightPath("chief-env-error", ["chief", "--insecure"], 2, "tuner: must be one of", {"KTC_TUNER": "grid"}),
        LightPath("chief-argparse-error", ["chief", "--tuner", "grid"], 2, "invalid choice: 'grid'"),
        LightPath("chief-missing-dataset", ["chief", "--auth-token-file", str(token), "--config", str(config)], 2,
                  f"{folder / 'no-data'}: dataset directory does not exist"),
        LightPath("chief-bad-scale-target", ["chief", "--insecure", "--scale-workers-on-exit", "nope"], 2,
                  "NAMESPACE/STATEFULSET"),
        LightPath("chief-replicas-file-alone", ["chief", "--insecure", "--worker-replicas-file", "/x"], 2,
                  "--worker-replicas-file: goes with --scale-workers-on-exit"),
        LightPath("worker-no-tuner-id", ["worker", "--insecure"], 2, "KERASTUNER_TUNER_ID: must be set",
                  {"KERASTUNER_TUNER_ID": ""}),
        LightPath("worker-chief-like-id", ["worker", "--insecure"], 2, "reserves", dict(worker_env, KERASTUNER_TUNER_ID="mychief")),
        LightPath("worker-config-error", ["worker", "--insecure", "--config", str(bad_config)], 2,
                  "data.image_size", worker_env),
        LightPath("local-workers-0", ["local", "--workers", "0", "--config", str(config)], 2, "--workers: must be >= 1"),
        LightPath("local-missing-data", ["local", "--config", str(config)], 2, "dataset directory does not exist"),
        LightPath("local-config-error", ["local", "--config", str(bad_config)], 2, "data.image_size"),
        LightPath("data-check-missing", ["data", "check", "--config", str(config)], 2, "dataset directory does not exist"),
    ]
    return paths


def _results(root: Path) -> None:
    """A finished two-trial search, as the chief leaves it."""
    folder = root / "light"
    (folder / "ktc-state").mkdir(parents=True, exist_ok=True)
    for trial_id, score in (("0", 0.4), ("1", 0.6)):
        trial = {"trial_id": trial_id, "hyperparameters": {"space": [], "values": {"start_neurons": 8}},
                 "metrics": {"metrics": {"val_f1": {"direction": "max", "observations": [
                     {"value": [score], "step": 0}]}}}, "score": score, "best_step": 0, "status": "COMPLETED",
                 "message": None, "stopped_early": False}
        (folder / f"trial_{trial_id}").mkdir(exist_ok=True)
        (folder / f"trial_{trial_id}" / "trial.json").write_text(json.dumps(trial))
