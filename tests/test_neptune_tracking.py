"""Neptune tracking: a real 2-worker search in Neptune's offline mode, read back from disk.

Offline mode never touches the network: each process (chief, every worker) appends its
operations as JSON lines to `.neptune/offline/run__<uuid>__.../data-<n>.log` under its working
directory. The test replays those operations into one dict per process and checks what a
Neptune user would see once they are synced. Unit tests use debug mode (in memory, fetchable).
"""

import json
import logging
from pathlib import Path

import keras_tuner
import pytest

from harness import TINY
from kt_cluster.core.config import load
from kt_cluster.core.neptune_tracking import NeptuneTracker

neptune = pytest.importorskip("neptune")


def read_offline(root: Path) -> list[dict]:
    """Replay every offline container under root: one {path: value or [(step, value)]} per process."""
    runs = []
    for container in sorted((root / ".neptune" / "offline").iterdir()):
        fields: dict = {}
        for log in sorted(container.glob("data-*.log"), key=lambda p: int(p.stem.split("-")[1])):
            for line in log.read_text().splitlines():
                op = json.loads(line)["obj"]
                path, kind = "/".join(op["path"]), op["type"]
                if kind.startswith("Assign"):
                    fields[path] = op["value"]
                elif kind.startswith("Log"):
                    fields.setdefault(path, []).extend((v["step"], v["value"]) for v in op["values"])
                elif kind.startswith("Clear"):
                    fields[path] = []
        runs.append(fields)
    return runs


@pytest.fixture(scope="module")
def offline_search(tmp_path_factory):
    from harness import Cluster

    tmp = tmp_path_factory.mktemp("neptune")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # the processes inherit it: .neptune/ lands in tmp
        mp.setenv("NEPTUNE_MODE", "offline")
        mp.setenv("NEPTUNE_PROJECT", "ktc/test")
        mp.delenv("NEPTUNE_API_TOKEN", raising=False)
        with Cluster(tmp, config={"search_id": "nep-search"}) as cluster:
            cluster.start_chief()
            cluster.start_worker(0)
            cluster.start_worker(1)
            assert cluster.wait_exit("chief", timeout=400) == 0, cluster.tail("chief")
            for name in ("worker-0", "worker-1"):
                assert cluster.wait_exit(name, timeout=60) == 0, cluster.tail(name)
            trials = cluster.trial_files()
            best = json.loads((cluster.results / "nep-search" / "best_hyperparameters.json").read_text())
    runs = read_offline(tmp)
    chief = [r for r in runs if "search/space/start_neurons/type" in r]
    workers = {tid: r for r in runs for tid in ("worker-0", "worker-1") if f"monitoring/{tid}/hostname" in r}
    assert len(chief) == 1 and len(runs) == 3, [sorted(r)[:20] for r in runs]
    merged = {k: v for r in runs for k, v in r.items() if not k.startswith(("sys/", "monitoring/"))}
    return {"trials": trials, "best": best, "chief": chief[0], "workers": workers, "merged": merged, "tmp": tmp}


def test_chief_logs_search_space_objective_and_tuner(offline_search):
    chief = offline_search["chief"]
    assert chief["search/id"] == "nep-search"
    assert chief["search/objective"] == "val_f1" and chief["search/direction"] == "max"
    assert chief["search/tuner"] == "random"
    assert chief["search/space/start_neurons/type"] == "Int"
    assert (chief["search/space/start_neurons/min_value"], chief["search/space/start_neurons/max_value"]) == (8, 16)
    assert chief["search/space/activation/type"] == "Choice"
    assert "relu" in chief["search/space/activation/values"]
    assert chief["search/config/max_trials"] == TINY["max_trials"]


def test_chief_logs_every_trial_and_the_best(offline_search):
    chief, trials, best = offline_search["chief"], offline_search["trials"], offline_search["best"]
    assert len(trials) == TINY["max_trials"]
    for t in trials:
        assert chief[f"trials/{t['trial_id']}/status"] == t["status"] == "COMPLETED"
        assert chief[f"trials/{t['trial_id']}/score"] == pytest.approx(t["score"])
    assert chief["best/trial_id"] == best["trial_id"]
    assert chief["best/score"] == pytest.approx(best["score"])
    assert {k.split("/")[-1]: v for k, v in chief.items() if k.startswith("best/hyperparameters/")} == best["hyperparameters"]


def test_workers_log_hyperparameters_tuner_id_and_per_epoch_metrics(offline_search):
    merged, workers = offline_search["merged"], offline_search["workers"]
    for t in offline_search["trials"]:
        ns = f"trials/{t['trial_id']}"
        logged_hp = {k[len(ns) + 17:]: v for k, v in merged.items() if k.startswith(f"{ns}/hyperparameters/")}
        assert logged_hp == t["hyperparameters"]["values"]
        tuner_id = merged[f"{ns}/tuner_id"]
        assert tuner_id in workers and workers[tuner_id][f"{ns}/tuner_id"] == tuner_id
        history = t["metrics"]["metrics"]["val_f1"]["observations"]
        assert merged[f"{ns}/metrics/val_f1"] == [(o["step"], pytest.approx(o["value"][0])) for o in history]
        assert [step for step, _ in merged[f"{ns}/metrics/loss"]] == list(range(TINY["epochs"]))
        assert {"f1", "iou", "precision", "recall", "val_loss"} <= {k.split("/")[-1] for k in merged if k.startswith(f"{ns}/metrics/")}


def test_workers_report_hardware_use_in_their_own_namespace(offline_search):
    merged = offline_search["merged"]
    assert set(offline_search["workers"]) == {"worker-0", "worker-1"}
    for tuner_id, run in offline_search["workers"].items():
        assert run.get(f"monitoring/{tuner_id}/hostname"), sorted(k for k in run if k.startswith("monitoring/"))
        # Neptune's own 10 s samples may all fall outside short trials: one sample per trial is ours.
        trials_run = sum(1 for t in offline_search["trials"] if merged[f"trials/{t['trial_id']}/tuner_id"] == tuner_id)
        for gauge in ("cpu", "memory"):
            samples = run.get(f"monitoring/{tuner_id}/{gauge}", [])
            assert len(samples) >= trials_run, (tuner_id, gauge, samples)
            assert all(v >= 0 for _, v in samples)
        assert 0 < max(v for _, v in run[f"monitoring/{tuner_id}/memory"]) < 1024  # GiB
    assert not any(k.startswith("monitoring/") and k.endswith("/cpu") for k in offline_search["chief"])


def test_offline_mode_writes_only_local_files(offline_search):
    neptune_dir = offline_search["tmp"] / ".neptune"
    assert [p.name for p in neptune_dir.iterdir()] == ["offline"]  # no async queue: nothing to send


# --- unit level, debug mode (in memory) -------------------------------------------------------

@pytest.fixture(autouse=True)
def _neptune_files_in_tmp(request, tmp_path, monkeypatch):
    if "offline_search" not in request.fixturenames:
        monkeypatch.chdir(tmp_path)

def test_off_unless_a_project_or_a_local_mode_is_set(monkeypatch):
    monkeypatch.delenv("NEPTUNE_PROJECT", raising=False)
    monkeypatch.delenv("NEPTUNE_MODE", raising=False)
    assert NeptuneTracker.for_worker(load(), "worker-0") is None
    assert NeptuneTracker.for_chief(load()) is None
    monkeypatch.setenv("NEPTUNE_MODE", "async")
    assert NeptuneTracker.for_worker(load(), "worker-0") is None


def test_a_failing_neptune_is_a_warning_never_an_error(monkeypatch, caplog):
    monkeypatch.setenv("NEPTUNE_MODE", "debug")
    tracker = NeptuneTracker.for_worker(load(), "worker-0")
    assert tracker is not None
    try:
        class Broken:
            def __getitem__(self, key):
                raise RuntimeError("neptune is down")

            def __setitem__(self, key, value):
                raise RuntimeError("neptune is down")

        run, tracker.run = tracker.run, Broken()
        with caplog.at_level(logging.WARNING, logger="ktc.neptune"):
            hp = keras_tuner.HyperParameters()
            hp.Int("units", 1, 4)
            trial = keras_tuner.engine.trial.Trial(hp, trial_id="07")
            callback, = tracker.trial_callbacks(trial)  # hyperparameters cannot be logged: still a callback
            callback.on_epoch_end(0, {"loss": 1.0})
        assert sum("neptune is down" in r.getMessage() for r in caplog.records) == 2
        tracker.run = run
        callback.on_epoch_end(1, {"loss": 0.5, "val_f1": float("nan"), "acc": "not a number"})
        assert run["trials/07/metrics/loss"].fetch_values()["value"].tolist() == [0.5]  # debug mode renumbers steps
        assert "val_f1" not in run.get_structure()["trials"]["07"]["metrics"]
    finally:
        tracker.stop()


def test_missing_token_in_async_mode_turns_tracking_off(monkeypatch, caplog):
    monkeypatch.setenv("NEPTUNE_PROJECT", "ktc/test")
    monkeypatch.setenv("NEPTUNE_MODE", "async")
    monkeypatch.delenv("NEPTUNE_API_TOKEN", raising=False)
    with caplog.at_level(logging.WARNING, logger="ktc.neptune"):
        assert NeptuneTracker.for_worker(load(), "worker-0") is None
    assert "Neptune tracking is off" in caplog.text
