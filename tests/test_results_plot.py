"""`ktc results --plot` and the exports, on a results directory written by hand."""

import csv
import io
import json
import re

import pytest
from PIL import Image

from kt_cluster.cli import main

pytest.importorskip("matplotlib")

HP = {"start_neurons": 16, "net_depth": 3, "activation": "mish"}


def trial(trial_id, status, score, curve, message=None, stopped_early=False, **hp):
    observations = {name: {"direction": "max" if name.endswith("f1") else "min",
                           "observations": [{"value": [v], "step": step} for step, v in enumerate(values)]}
                    for name, values in {"val_f1": curve, "loss": [1 - v for v in curve]}.items()}
    return {"trial_id": trial_id, "hyperparameters": {"space": [], "values": HP | hp},
            "metrics": {"metrics": observations}, "score": score, "best_step": len(curve) - 1,
            "status": status, "message": message, "stopped_early": stopped_early}


TRIALS = [
    trial("0", "COMPLETED", 0.61, [0.3, 0.5, 0.61]),
    trial("1", "FAILED", None, [0.2], net_depth=6,
          message="DatasetError: train/masks/stamp/scan_007.png: cannot decode\nTraceback (most recent call last):\n  ..."),
    trial("2", "COMPLETED", 0.35, [0.2, 0.35], stopped_early=True, activation="elu"),
    trial("10", "COMPLETED", 0.83, [0.4, 0.7, 0.83], start_neurons=32),
]


@pytest.fixture
def results(tmp_path):
    project = tmp_path / "results" / "unet-search"
    (project / "ktc-state").mkdir(parents=True)
    for t in TRIALS:
        (project / f"trial_{t['trial_id']}").mkdir()
        (project / f"trial_{t['trial_id']}" / "trial.json").write_text(json.dumps(t))
    (project / "best_hyperparameters.json").write_text(json.dumps(
        {"trial_id": "10", "score": 0.83, "objective": "val_f1", "direction": "max", "hyperparameters": HP}))
    return tmp_path / "results"


def test_plot_writes_a_png_with_both_panels(results, tmp_path, capsys):
    out = tmp_path / "plots" / "search.png"
    assert main(["results", "--results", str(results), "--plot", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    assert out.stat().st_size > 10_000
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1400, 550)
        colours = {c for _, c in image.convert("RGB").getcolors(1_000_000)}
    assert (214, 39, 40) in colours  # the failed trial's red cross
    assert (44, 160, 44) in colours  # the best trial's green bar


def test_plot_without_best_hyperparameters_guesses_the_objective(results, tmp_path):
    (results / "unet-search" / "best_hyperparameters.json").unlink()
    out = tmp_path / "running.png"
    assert main(["results", "--results", str(results), "--plot", str(out), "--format", "json"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG"


def test_exports_list_every_trial_in_id_order_with_status_score_and_first_error_line(results, capsys):
    assert main(["results", "--results", str(results), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in rows] == ["0", "1", "2", "10"]
    assert [(r["status"], r["score"]) for r in rows] == [("COMPLETED", 0.61), ("FAILED", None),
                                                          ("COMPLETED", 0.35), ("COMPLETED", 0.83)]
    assert rows[1]["error"] == "DatasetError: train/masks/stamp/scan_007.png: cannot decode"
    assert rows[2]["stopped_early"] is True and rows[1]["net_depth"] == 6

    assert main(["results", "--results", str(results), "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["trial_id"], r["status"], r["score"]) for r in table] == [
        ("0", "COMPLETED", "0.61"), ("1", "FAILED", ""), ("2", "COMPLETED", "0.35"), ("10", "COMPLETED", "0.83")]
    assert table[1]["error"] == rows[1]["error"] and "Traceback" not in "".join(r["error"] for r in table)


def test_summary_names_the_failed_and_early_stopped_trials(results, capsys):
    assert main(["results", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "  1 FAILED: DatasetError: train/masks/stamp/scan_007.png: cannot decode" in out
    assert re.search(r"^ +3 +2 +0\.3500 .* stopped early$", out, flags=re.M)


def test_keras_tuner_format_prints_the_chiefs_copy_of_keras_tuners_summary(results, capsys):
    assert main(["results", "--results", str(results), "--format", "keras-tuner"]) == 1
    assert "no " in capsys.readouterr().err
    (results / "unet-search" / "summary-keras-tuner.txt").write_text("Results summary\nShowing 10 best trials\n")
    assert main(["results", "--results", str(results), "--format", "keras-tuner"]) == 0
    assert capsys.readouterr().out == "Results summary\nShowing 10 best trials\n"
