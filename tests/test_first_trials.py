"""The configurations a search trains first: the reference U-Net by default, a user's list in order,
each once (also across a chief restart), promotions untouched, and a list the space cannot hold
refused with one line naming the value, before any state is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import TINY, merge
from kt_cluster.core.config import ConfigError, from_dict
from kt_cluster.core.first_trials import REFERENCE_UNET, first_trials
from kt_cluster.core.tuner import build_tuner

TUNER_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/trial_id", "tuner/bracket", "tuner/round")


def config(tmp: Path, **fields):
    return from_dict(merge({"results": str(tmp / "results"), "data": {"image_size": 64}}, fields))


def resolved(tmp: Path, **fields) -> list[dict]:
    cfg = config(tmp, **fields)
    return first_trials(cfg, build_tuner(cfg).oracle.hyperparameters.space)


def open_chief(cfg):
    """`ktc chief`'s start: the oracle built, restored from its journal and reconciled."""
    from kt_cluster.chief.main import open_search

    return open_search(cfg)[0].oracle


def start_and_end(oracle, score: float, tuner_id: str = "w0") -> dict:
    trial = oracle.create_trial(tuner_id, session="s0")
    assert trial.status == "RUNNING"
    oracle.update_trial(trial.trial_id, {"val_f1": score}, step=0, tuner_id=tuner_id, session="s0")
    trial.status = "COMPLETED"
    oracle.end_trial(trial, tuner_id=tuner_id, session="s0")
    return trial.hyperparameters.values


def configuration(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in TUNER_KEYS}


def test_a_default_search_trains_the_reference_unet_first_then_what_its_tuner_draws(tmp_path):
    oracle = open_chief(config(tmp_path, max_trials=6, max_epochs=9, seed=3))
    first = start_and_end(oracle, 0.5)
    assert configuration(first) == {**REFERENCE_UNET, "pos_weight_power": 0.0}
    # An ordinary first-rung trial of asha: its rung-0 keys are the tuner's own.
    assert (first["tuner/round"], first["tuner/initial_epoch"], first["tuner/epochs"]) == (0, 0, oracle.rungs[0])
    drawn = [configuration(start_and_end(oracle, 0.4 - 0.1 * i)) for i in range(2)]
    assert all(values != configuration(first) for values in drawn)
    promoted = oracle.create_trial("w0", session="s0").hyperparameters.values  # 3 results: the best goes up
    assert promoted["tuner/trial_id"] and configuration(promoted) == configuration(first)
    oracle.journal.close()


def test_given_first_trials_train_in_order_once_each_also_after_a_chief_restart(tmp_path):
    given = [{"start_neurons": 64, "net_depth": 3, "activation": "mish"}, {"dropout": True}]
    cfg = config(tmp_path, tuner="random", max_trials=5, seed=1, first_trials=given)
    oracle = open_chief(cfg)
    defaults = {"start_neurons": 16, "net_depth": 2, "dropout": False, "bn_after_act": False,
                "activation": "mish", "pos_weight_power": 0.0}
    assert configuration(start_and_end(oracle, 0.3)) == defaults | given[0]
    oracle.journal.close()

    restarted = open_chief(cfg)  # the journal says the first one ran: the second is next
    assert configuration(start_and_end(restarted, 0.2)) == defaults | given[1]
    third = configuration(start_and_end(restarted, 0.1))
    assert third not in (defaults | given[0], defaults | given[1])
    restarted.journal.close()


def test_the_reference_unet_is_left_out_where_the_space_cannot_hold_it(tmp_path):
    assert resolved(tmp_path, space={"activation": ["mish", "relu"]}) == []
    assert resolved(tmp_path, space={"net_depth": {"min": 2, "max": 3}}) == []
    space = build_tuner(config(tmp_path)).oracle.hyperparameters.space
    assert first_trials(config(tmp_path, hypermodel="mypackage.models:build"), space) == []  # a space of yours
    assert resolved(tmp_path, first_trials=[]) == []
    # Names the space does not search are fixed there as the reference has them.
    assert resolved(tmp_path, space={"dropout": False, "bn_after_act": False}) == [
        {"start_neurons": 16, "net_depth": 4, "activation": "elu", "pos_weight_power": 0.0}]


def test_values_are_taken_as_the_space_holds_them(tmp_path):
    [values] = resolved(tmp_path, first_trials=[{"pos_weight_power": 0, "start_neurons": 32.0,
                                                 "learning_rate": "2e-3"}],
                        space={"learning_rate": {"min": 1e-4, "max": 1e-2}})
    assert (values["pos_weight_power"], values["start_neurons"], values["learning_rate"]) == (0.0, 32, 0.002)
    assert type(values["start_neurons"]) is int and type(values["pos_weight_power"]) is float


@pytest.mark.parametrize("given, message", [
    ({"depth": 3}, "first_trials.0: 'depth' is not a hyperparameter of the search space (it has activation, "),
    ({"net_depth": 9}, "first_trials.0.net_depth: must be an integer from 2 to 6 by 1, got 9"),
    ({"start_neurons": 24}, "first_trials.0.start_neurons: must be an integer from 16 to 128 by 16, got 24"),
    ({"net_depth": float("inf")}, "first_trials.0.net_depth: must be an integer from 2 to 6 by 1, got inf"),
    ({"activation": "relu"}, "first_trials.0.activation: must be one of 'mish', 'elu', 'lrelu', got 'relu'"),
    ({"dropout": 1}, "first_trials.0.dropout: must be true or false, got 1"),
    ({"pos_weight_power": True}, "first_trials.0.pos_weight_power: must be one of 0.0, 0.5, got True"),
])
def test_a_first_trial_the_space_cannot_hold_is_refused_naming_it_before_any_state_is_written(
        tmp_path, given, message):
    cfg = config(tmp_path, first_trials=[given])
    with pytest.raises(ConfigError) as refused:
        open_chief(cfg)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    assert not (tmp_path / "results" / "ktc-search" / "ktc-state").exists()


def test_a_value_that_is_no_hyperparameter_value_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^first_trials\.0\.start_neurons: must be a boolean, a number or a "
                                          r"name, got \[16\]$"):
        from_dict({"first_trials": [{"start_neurons": [16]}]})
