"""The end-of-search summary (core/summary.py) and what `ktc results` shows from it: a ranked
table of the searched hyperparameters, the lineage of promoted trials, the trials that did not
complete, where each file is; and the plot's one curve per promoted configuration."""

import json
import re

import pytest

from kt_cluster.cli import main
from kt_cluster.core import summary

HP = {"start_neurons": 16, "net_depth": 3, "activation": "mish"}


def trial(trial_id, status, score, curve, first_epoch=0, parent=None, message=None, **hp):
    """A trial.json as the chief writes it; Hyperband's bookkeeping in `tuner/*`."""
    tuner = {"tuner/epochs": first_epoch + len(curve), "tuner/initial_epoch": first_epoch, "tuner/bracket": 1,
             "tuner/round": 0 if parent is None else 1}
    if parent is not None:
        tuner["tuner/trial_id"] = parent
    steps = range(first_epoch, first_epoch + len(curve))
    return {"trial_id": trial_id, "hyperparameters": {"space": [], "values": HP | hp | tuner},
            "metrics": {"metrics": {"val_f1": {"direction": "max", "observations": [
                {"value": [v], "step": s} for s, v in zip(steps, curve)]}}},
            "score": score, "best_step": 0, "status": status, "message": message, "stopped_early": False}


TRIALS = [
    trial("0", "COMPLETED", 0.50, [0.3, 0.5]),
    trial("1", "COMPLETED", 0.30, [0.2, 0.3], start_neurons=32),
    trial("2", "COMPLETED", 0.70, [0.6, 0.7], first_epoch=2, parent="0"),
    trial("3", "FAILED", None, [], net_depth=4,
          message="DatasetError: a.png: cannot be decoded\nTraceback (most recent call last):\n  ..."),
    trial("4", "COMPLETED", 0.80, [0.72, 0.75, 0.78, 0.8], first_epoch=4, parent="2"),
]


@pytest.fixture
def search(tmp_path):
    folder = tmp_path / "results" / "quickstart"
    (folder / "ktc-state").mkdir(parents=True)
    for t in TRIALS:
        (folder / f"trial_{t['trial_id']}").mkdir()
        (folder / f"trial_{t['trial_id']}" / "trial.json").write_text(json.dumps(t))
    (folder / "status.json").write_text(json.dumps({
        "objective": "val_f1", "direction": "max", "done": True, "failure": None,
        "search": {"search_id": "quickstart", "tuner": "hyperband"}}))
    (folder / "best_model.keras").write_bytes(b"model")
    return folder


def test_summary_ranks_trials_with_only_the_searched_hyperparameters(search):
    text = summary.render(summary.load_trials(search), "val_f1", "max", search,
                          search={"search_id": "quickstart", "tuner": "hyperband"})
    lines = text.splitlines()
    assert lines[0] == "Search quickstart (hyperband): 5 trials, 4 completed, 1 failed; best val_f1 0.8000 (trial 4)"
    header = lines[2].split()
    assert header == ["rank", "trial", "val_f1", "(max)", "start_neurons", "net_depth", "activation", "epochs", "status"]
    rows = [line.split() for line in lines[3:8]]
    assert rows == [["1", "4", "0.8000", "16", "3", "mish", "5-8", "completed"],
                    ["2", "2", "0.7000", "16", "3", "mish", "3-4", "completed"],
                    ["3", "0", "0.5000", "16", "3", "mish", "1-2", "completed"],
                    ["4", "1", "0.3000", "32", "3", "mish", "1-2", "completed"],
                    ["-", "3", "-", "16", "4", "mish", "-", "failed"]]
    assert "tuner/" not in text and "bracket" not in text


def test_summary_shows_the_lineage_of_promoted_trials(search):
    text = summary.render(summary.load_trials(search), "val_f1", "max", search)
    assert "  0 (epochs 1-2, 0.5000) -> 2 (epochs 3-4, 0.7000) -> 4 (epochs 5-8, 0.8000)" in text.splitlines()
    assert [[t["trial_id"] for t in chain] for chain in summary.lineages(TRIALS)] == [["0", "2", "4"]]


def test_summary_gives_the_first_line_of_each_failure_and_where_each_file_is(search):
    text = summary.render(summary.load_trials(search), "val_f1", "max", search, writing={"summary.txt"})
    assert "  3 FAILED: DatasetError: a.png: cannot be decoded" in text.splitlines()
    assert "Traceback" not in text
    assert f"  best model    {search / 'best_model.keras'}" in text
    assert f"  this summary  {search / 'summary.txt'}" in text
    assert f"  final status  {search / 'status.json'}" in text
    assert "best hyperparameters" not in text  # not written (yet): not listed


def test_ktc_results_prints_the_summary_of_the_only_search(search, capsys):
    assert main(["results", "--results", str(search.parent)]) == 0
    out = capsys.readouterr().out
    assert out == summary.render(summary.load_trials(search), "val_f1", "max", search,
                                 search={"search_id": "quickstart", "tuner": "hyperband"})


def test_ktc_results_asks_which_search_when_there_are_several(search, capsys):
    (search.parent / "other" / "ktc-state").mkdir(parents=True)
    assert main(["results", "--results", str(search.parent)]) == 1
    assert "several searches (other, quickstart); pick one with --search-id" in capsys.readouterr().err
    assert main(["results", "--results", str(search.parent), "--search-id", "quickstart", "--format", "json"]) == 0
    assert [r["trial_id"] for r in json.loads(capsys.readouterr().out)] == ["0", "1", "2", "3", "4"]


def test_the_plot_draws_a_promoted_configuration_as_one_curve(search):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from kt_cluster.results import figure

    fig = figure(TRIALS, "val_f1", "max")
    curves = fig.axes[1]
    labels = [line.get_label() for line in curves.lines]
    assert labels == ["trial 1 (completed)", "trials 0 > 2 > 4 (completed, best)"]  # trial 3 has no epoch
    joined = curves.lines[1]
    assert list(joined.get_xdata()) == list(range(8))
    assert list(joined.get_ydata()) == [0.3, 0.5, 0.6, 0.7, 0.72, 0.75, 0.78, 0.8]
    plt.close(fig)
    assert re.search(r"continue", curves.get_title())
