"""What the chief's /metrics says about the search, read back with Prometheus' own text parser."""

import keras_tuner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kt_cluster.chief.exporter import TOP_TRIALS, ChiefMetrics
from kt_cluster.chief.oracle import cluster_oracle_class

Status = keras_tuner.engine.trial.TrialStatus


def scrape(metrics: ChiefMetrics) -> dict:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_top_trials_hyperparameters_are_labels_of_a_bounded_info_metric(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 1, 1000)
    hp.Choice("activation", ["relu", "elu"])
    with hp.conditional_scope("activation", ["elu"]):
        hp.Float("elu-alpha", 0.1, 1.0)  # "-" is not allowed in a label name
    oracle = cluster_oracle_class(keras_tuner.oracles.RandomSearchOracle)(
        objective=keras_tuner.Objective("val_f1", "max"), max_trials=TOP_TRIALS + 5, hyperparameters=hp, seed=2)
    oracle._set_project_dir(str(tmp_path), "search")
    oracle.setup_cluster(tmp_path / "state", 60.0, 600.0, early_stopping=False)
    metrics = ChiefMetrics()
    metrics.watch(oracle)
    scores = {}
    for n in range(TOP_TRIALS + 5):
        trial = oracle.create_trial("w0", session="s0")
        scores[trial.trial_id] = n / 100
        oracle.update_trial(trial.trial_id, {"val_f1": n / 100}, step=0, tuner_id="w0", session="s0")
        trial.status = Status.COMPLETED
        oracle.end_trial(trial, tuner_id="w0", session="s0")
    samples = scrape(metrics)["ktc_chief_trial_hyperparameters_info"].samples
    best = sorted(scores, key=scores.get, reverse=True)[:TOP_TRIALS]
    assert sorted(s.labels["trial_id"] for s in samples) == sorted(best)
    for sample in samples:
        values = oracle.trials[sample.labels["trial_id"]].hyperparameters.values
        assert sample.value == 1 and sample.labels["hp_units"] == str(values["units"])
        assert sample.labels["hp_activation"] == values["activation"]
        assert sample.labels["hp_elu_alpha"] == (str(values["elu-alpha"]) if "elu-alpha" in values else "")
    assert {s.labels["hp_activation"] for s in samples} == {"relu", "elu"}  # both branches present


def test_failed_invalid_and_stopped_trials_are_listed_with_their_reason(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 1, 1000)
    oracle = cluster_oracle_class(keras_tuner.oracles.RandomSearchOracle)(
        objective=keras_tuner.Objective("val_f1", "max"), max_trials=TOP_TRIALS + 10, hyperparameters=hp, seed=3,
        max_consecutive_failed_trials=100, max_retries_per_trial=0)
    oracle._set_project_dir(str(tmp_path), "search")
    oracle.setup_cluster(tmp_path / "state", 60.0, 600.0, early_stopping=False)
    metrics = ChiefMetrics()
    metrics.watch(oracle)
    assert scrape(metrics)["ktc_chief_trial_setback_info"].samples == []
    expected = {}
    for n in range(TOP_TRIALS + 10):
        trial = oracle.create_trial("w0", session="s0")
        oracle.update_trial(trial.trial_id, {"val_f1": 0.5}, step=0, tuner_id="w0", session="s0")
        if n % 3 == 0:
            trial.status, trial.message = Status.FAILED, f"DatasetError: scan_{n}.png is not an image\ndetails"
            expected[trial.trial_id] = ("failed", f"DatasetError: scan_{n}.png is not an image")
        elif n % 3 == 1:
            trial.status = Status.INVALID
            trial.message = f"Traceback (most recent call last):\n  File x\nValueError: bad {n}"
            expected[trial.trial_id] = ("failed", f"ValueError: bad {n}")  # no retries left: FAILED
        else:
            trial.status = Status.COMPLETED
        oracle.end_trial(trial, tuner_id="w0", session="s0", stopped_early=n == 2)
        if n == 2:
            expected[trial.trial_id] = ("stopped_early", "median stopping rule")
    samples = scrape(metrics)["ktc_chief_trial_setback_info"].samples
    listed = {s.labels["trial_id"]: (s.labels["status"], s.labels["reason"]) for s in samples}
    newest = list(expected)[-TOP_TRIALS:]
    assert listed == {t: expected[t] for t in newest}
