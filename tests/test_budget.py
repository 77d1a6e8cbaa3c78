"""Budgets that make Hyperband or ASHA degenerate are warned about, naming what to set (in the
chief's log, its status, `ktc status` and `ktc local`); ASHA's first rung follows the budget."""

import subprocess
import sys
from pathlib import Path

import keras_tuner
import pytest
import yaml

from kt_cluster.core.budget import asha_min_epochs, budget_warnings, first_rung, hyperband_brackets, trials_to_top
from kt_cluster.core.config import from_dict, load
from kt_cluster.core.tuner import make_oracle
from kt_cluster.progress import render

from harness import Cluster

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("max_epochs,factor", [(27, 3), (20, 3), (4, 2), (100, 3), (9, 4), (1, 3)])
def test_bracket_plan_matches_keras_tuners_hyperband(max_epochs, factor):
    oracle = keras_tuner.oracles.HyperbandOracle(objective=keras_tuner.Objective("val_f1", "max"),
                                                 max_epochs=max_epochs, factor=factor)
    expected = [[(oracle._get_size(b, r), oracle._get_epochs(b, r)) for r in range(oracle._get_num_rounds(b))]
                for b in reversed(range(oracle._get_num_brackets()))]
    assert hyperband_brackets(max_epochs, factor) == expected


def test_hyperband_ending_inside_its_first_bracket_is_warned_with_the_trials_to_set():
    config = from_dict({"tuner": "hyperband", "max_epochs": 27, "max_trials": 30})
    [warning] = budget_warnings(config)
    assert "first bracket (40 trials)" in warning
    assert "no trial trains more than 3 of max_epochs 27" in warning
    assert "set max_trials >= 40" in warning
    assert budget_warnings(from_dict({"tuner": "hyperband", "max_epochs": 27, "max_trials": 40})) == []


def test_asha_with_too_few_trials_for_promotions_by_rank_is_warned():
    config = from_dict({"tuner": "asha", "max_epochs": 27, "min_epochs": 1, "max_trials": 30})
    [warning] = budget_warnings(config)
    assert "below the 40 trials that asha's rungs from min_epochs 1 need for promotions by rank" in warning
    assert "only 27 configurations start, and the last 3 trials carry the best one" in warning
    assert "set max_trials >= 40" in warning
    assert budget_warnings(from_dict({"tuner": "asha", "max_epochs": 27, "min_epochs": 1, "max_trials": 40})) == []


def test_asha_that_cannot_reach_max_epochs_is_warned():
    [warning] = budget_warnings(from_dict({"tuner": "asha", "max_epochs": 27, "min_epochs": 1, "max_trials": 3}))
    assert "cannot carry any asha trial to max_epochs 27" in warning
    assert "the longest trial trains 9 epochs" in warning and "set max_trials >= 40" in warning
    tiny = budget_warnings(from_dict({"tuner": "asha", "max_epochs": 9, "min_epochs": 9, "max_trials": 2}))
    assert any("nothing is ever promoted" in w for w in tiny)


def test_random_and_bayesian_have_no_brackets_to_warn_about():
    for tuner in ("random", "bayesian"):
        assert budget_warnings(from_dict({"tuner": tuner, "max_trials": 1})) == []


def test_shipped_examples_are_not_degenerate():
    assert budget_warnings(load(ROOT / "examples" / "quickstart.yaml", env={})) == []
    for path in sorted((ROOT / "examples" / "helm").glob("*.yaml")):
        search = (yaml.safe_load(path.read_text()) or {}).get("search", {})
        assert budget_warnings(from_dict(search)) == [], path.name


def test_asha_first_rung_is_derived_from_the_trial_budget():
    assert trials_to_top(2, 3) == 13
    assert asha_min_epochs(20, 3, 13) == 3  # rungs 3, 9, 20
    assert asha_min_epochs(27, 3, 40) == 3  # rungs 3, 9, 27: never a 1-epoch rung
    assert asha_min_epochs(20, 3, 10) == 7  # one promotion: rungs 7, 20
    assert asha_min_epochs(20, 3, 3) == 20  # no promotion affordable: every trial trains max_epochs
    assert asha_min_epochs(2, 3, 100) == 2  # max_epochs too short to divide
    assert make_oracle(from_dict({"tuner": "asha", "max_epochs": 20, "max_trials": 13})).rungs == [3, 9, 20]
    assert make_oracle(from_dict({"tuner": "asha", "max_epochs": 20, "min_epochs": 1,
                                  "max_trials": 13})).rungs == [1, 3, 9, 20]
    assert budget_warnings(from_dict({"tuner": "asha", "max_epochs": 20, "max_trials": 13})) == []


def test_under_a_budget_in_worker_hours_the_first_rung_trains_a_fifth_of_max_epochs_at_least():
    # max_trials (its default, 30) would pay for two promotions from 5 epochs: hours do not count trials.
    config = from_dict({"tuner": "asha", "max_epochs": 45, "max_worker_hours": 0.4})
    assert first_rung(config) == 9 and make_oracle(config).rungs == [9, 27, 45]
    assert budget_warnings(config) == []
    assert asha_min_epochs(45, 3, 30) == 5 and asha_min_epochs(45, 3, 30, worker_hours=True) == 9
    assert asha_min_epochs(8, 2, 100, worker_hours=True) == 2  # rungs 2, 4, 8: a fifth of 8 does not bind
    assert asha_min_epochs(20, 3, 10, worker_hours=True) == 7  # one promotion: already longer than a fifth
    hours = {"tuner": "asha", "max_epochs": 45, "max_worker_hours": 0.4}
    assert make_oracle(from_dict(hours | {"min_epochs": 3})).rungs == [3, 9, 27, 45]  # set, it is kept


def test_progress_view_shows_the_chiefs_warnings():
    status = {"completed": 0, "failed": 0, "max_trials": 3, "total": 0, "running": [], "queued": 0,
              "stopped_early": 0, "best": None, "objective": "val_f1", "done": False, "failure": None,
              "search": {"search_id": "s", "tuner": "hyperband", "warnings": ["max_trials 3 ends hyperband ..."]}}
    assert "warning: max_trials 3 ends hyperband ..." in render(status)


def test_status_shows_the_worker_hours_spent_against_their_budget():
    status = {"completed": 1, "failed": 0, "max_trials": 30, "total": 2, "running": [], "queued": 0,
              "stopped_early": 0, "best": None, "objective": "val_f1", "done": False, "failure": None,
              "worker_seconds": 5400.0, "max_worker_seconds": 7200.0}
    assert "[" + "#" * 22 + "-" * 8 + "] 1.50/2 worker hours" in render(status).splitlines()
    assert "worker hours" not in render(status | {"max_worker_seconds": None})


def test_status_bars_stay_full_width_when_the_trials_running_at_the_end_overrun_the_budget():
    status = {"completed": 32, "failed": 0, "max_trials": 30, "total": 32, "running": [], "queued": 0,
              "stopped_early": 0, "best": None, "objective": "val_f1", "done": True, "failure": None,
              "worker_seconds": 7900.0, "max_worker_seconds": 7200.0}
    lines = render(status).splitlines()
    assert lines[0].startswith("[" + "#" * 30 + "] 32/30 trials")
    assert "[" + "#" * 30 + "] 2.19/2 worker hours" in lines


@pytest.mark.timeout(300)
def test_chief_log_status_and_ktc_status_show_a_degenerate_budget(tmp_path):
    cluster = Cluster(tmp_path, config={"tuner": "hyperband", "max_epochs": 27, "max_trials": 3})
    cluster.start_chief()
    try:
        status = cluster.wait_for(lambda s: True, timeout=120, what="chief up")
        [warning] = status["search"]["warnings"]
        assert "set max_trials >= 40" in warning
        shown = subprocess.run([sys.executable, "-m", "kt_cluster", "status", "--chief", cluster.address,
                                "--auth-token-file", str(cluster.token_path)],
                               capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        assert "warning: max_trials 3 ends hyperband inside its first bracket" in shown.stdout
    finally:
        cluster.stop()
    assert "budget: max_trials 3 ends hyperband inside its first bracket" in (cluster.logs / "chief.log").read_text()


def test_ktc_local_prints_the_warning_before_anything_starts(tmp_path):
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({"tuner": "hyperband", "max_epochs": 27, "max_trials": 30,
                                      "data": {"path": str(tmp_path / "missing")}, "results": str(tmp_path / "r")}))
    run = subprocess.run([sys.executable, "-m", "kt_cluster", "local", "--config", str(config)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "ktc local: warning: max_trials 30 ends hyperband inside its first bracket" in run.stdout
    # Then the missing dataset stops it, before any process starts.
    assert run.returncode != 0 and "dataset directory does not exist" in run.stdout + run.stderr
