"""A chief oracle in-process for tests: small search space, fake lease clock, no server."""

import keras_tuner
from keras_tuner.src.engine import trial as trial_module

from kt_cluster.chief.oracle import cluster_oracle_class

Status = trial_module.TrialStatus


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_oracle(tmp_path, max_trials=4, early_stopping=False, lease=10.0, restore=False):
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 1, 1000)
    oracle = cluster_oracle_class(keras_tuner.oracles.RandomSearchOracle)(
        objective=keras_tuner.Objective("val_f1", "max"), max_trials=max_trials, hyperparameters=hp, seed=1,
        max_consecutive_failed_trials=2)
    oracle._set_project_dir(str(tmp_path), "search")
    oracle.setup_cluster(tmp_path / "state", lease, 100.0, early_stopping)
    oracle.leases.clock = FakeClock()
    if restore:
        assert oracle.restore()
    else:
        oracle.save()  # as `ktc chief` does for a new search
    return oracle


def finish(oracle, trial, value, tuner_id="w0", session="s0"):
    oracle.update_trial(trial.trial_id, {"val_f1": value}, step=0, tuner_id=tuner_id, session=session)
    trial.status = Status.COMPLETED
    return oracle.end_trial(trial, tuner_id=tuner_id, session=session)
