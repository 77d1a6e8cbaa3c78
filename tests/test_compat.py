"""compat's copies of keras-tuner's code give what stock keras-tuner 1.4.8 gives: scoring, best
trials, the consecutive-failure check, sampling, the search-space copy, trials from their state,
metric updates, Trial protos both ways, the oracle's small state and ASHA's duplicate check.
Each test runs ours and keras-tuner's own code on the same random (seeded) inputs."""

import json
import math
import random

import keras_tuner
import pytest
from keras_tuner.src.engine import metrics_tracking
from keras_tuner.src.engine import oracle as kt_oracle
from keras_tuner.src.engine import trial as trial_module

from kt_cluster.chief.oracle import cluster_oracle_class
from kt_cluster.core import compat
from kt_cluster.core.asha import ASHAOracle

Status = trial_module.TrialStatus
DIRECTIONS = ["max", "min"]


def make_oracle(tmp_path, max_trials=4, direction="max", space=None):
    """The chief's oracle (random search over `units`, or `space`), as `ktc chief` sets it up."""
    hp = space or keras_tuner.HyperParameters()
    if space is None:
        hp.Int("units", 1, 1000)
    oracle = cluster_oracle_class(keras_tuner.oracles.RandomSearchOracle)(
        objective=keras_tuner.Objective("val_f1", direction), max_trials=max_trials, hyperparameters=hp, seed=1,
        max_consecutive_failed_trials=2)
    oracle._set_project_dir(str(tmp_path), "search")
    oracle.setup_cluster(tmp_path / "state", 10.0, 100.0, False)
    oracle.save()
    return oracle


def random_space(rng: random.Random) -> keras_tuner.HyperParameters:
    """A space with every kind of hyperparameter and a conditional one."""
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 1, rng.choice([4, 1000]), step=rng.choice([1, 3]))
    hp.Float("lr", 1e-4, 1e-1, sampling=rng.choice(["linear", "log"]))
    hp.Choice("activation", ["relu", "elu", "mish"], ordered=False)
    with hp.conditional_scope("activation", ["elu"]):
        hp.Float("alpha", 0.1, 1.0)
    hp.Boolean("dropout")
    hp.Fixed("classes", 3)
    return hp


def random_trial(rng: random.Random, space: keras_tuner.HyperParameters, trial_id: str) -> trial_module.Trial:
    """A trial of `space` with active values drawn, a random metric history and outcome."""
    hps = space.copy()
    for hp in hps.space:
        if hps.is_active(hp):
            hps.values[hp.name] = hp.random_sample(rng.randrange(10**6))
    trial = trial_module.Trial(hps, trial_id=trial_id, status=rng.choice(
        [Status.COMPLETED, Status.FAILED, Status.INVALID, Status.RUNNING]))
    for name in rng.sample(["val_f1", "loss", "accuracy", "custom"], rng.randint(0, 3)):
        trial.metrics.register(name, direction=rng.choice(DIRECTIONS))
        for step in range(rng.randint(1, 4)):
            trial.metrics.update(name, rng.choice([0.5, rng.random(), float("nan")]), step=step)
    if trial.status == Status.COMPLETED:
        trial.score, trial.best_step = rng.random(), rng.randint(0, 3)
    if trial.status in (Status.FAILED, Status.INVALID):
        trial.message = "ValueError: bad trial"
    return trial


def same_state(a: trial_module.Trial, b: trial_module.Trial) -> bool:
    """Equal states, NaN included (JSON writes NaN alike where == says NaN != NaN)."""
    return json.dumps(a.get_state()) == json.dumps(b.get_state())


@pytest.mark.parametrize("direction", ["max", "min"])
def test_trial_scores_match_keras_tuner_scoring(tmp_path, direction):
    oracle = make_oracle(tmp_path)
    oracle.objective = keras_tuner.Objective("val_f1", direction)
    rng = random.Random(7)
    for case in range(300):
        metrics = metrics_tracking.MetricsTracker()
        metrics.register("val_f1", direction=direction)
        for step in range(rng.randint(1, 6)):
            value = rng.choice([0.25, 0.5, rng.random()])  # ties: the first step reaching the best wins
            if case % 10 == 0:
                value = float("nan")
            metrics.update("val_f1", value, step=step)
            if case % 7 == 0:
                metrics.update("val_f1", rng.random(), step=step)  # two values at one step: a mean
        ours, stock = (trial_module.Trial(oracle.hyperparameters.copy(), trial_id=str(case)) for _ in range(2))
        ours.metrics = stock.metrics = metrics
        oracle.score_trial(ours)
        kt_oracle.Oracle.score_trial(oracle, stock)
        same = ours.score == stock.score or (math.isnan(ours.score) and math.isnan(stock.score))
        assert same and ours.best_step == stock.best_step, (case, ours.score, stock.score)


def test_new_trials_get_an_independent_copy_of_the_search_space(tmp_path):
    oracle = make_oracle(tmp_path)
    oracle.hyperparameters.Choice("activation", ["relu", "elu"], ordered=False)
    with oracle.hyperparameters.conditional_scope("activation", ["elu"]):
        oracle.hyperparameters.Float("alpha", 0.1, 1.0, sampling="log")
    stock = keras_tuner.HyperParameters.copy(oracle.hyperparameters)
    ours = oracle.hyperparameters.copy()
    assert type(ours) is keras_tuner.HyperParameters and ours.get_config() == stock.get_config()
    ours.space[0].min_value = 500
    ours.values["units"] = 7
    ours.space[1].values.append("gelu")
    ours.space[2].conditions.clear()
    assert oracle.hyperparameters.space[0].min_value == 1 and oracle.hyperparameters.values["units"] != 7
    assert oracle.hyperparameters.get_config() == stock.get_config()
    restored = make_oracle(tmp_path / "again")
    restored.set_state(oracle.get_state())  # keras-tuner's restore assigns a plain HyperParameters
    assert restored.hyperparameters.copy().get_config() == stock.get_config()


def test_random_values_equal_keras_tuners_for_the_same_seed_state(tmp_path):
    def pair(name):
        oracle = make_oracle(tmp_path / name, max_trials=500)
        oracle.hyperparameters.Choice("activation", ["relu", "elu"], ordered=False)
        with oracle.hyperparameters.conditional_scope("activation", ["elu"]):
            oracle.hyperparameters.Float("alpha", 0.1, 1.0, sampling="log")
        oracle.hyperparameters.Boolean("norm")
        return oracle

    ours, stock = pair("ours"), pair("stock")
    drawn = []
    for _ in range(200):  # each draw recorded as tried, so collisions are retried as keras-tuner does
        values = ours._random_values()
        assert values == kt_oracle.Oracle._random_values(stock) and ours._seed_state == stock._seed_state
        for oracle in (ours, stock):
            oracle._tried_so_far.add(oracle._compute_values_hash(values))
        drawn.append(values)
    assert {"alpha" in v for v in drawn} == {True, False}  # the conditional one drawn only when active

    ours.hyperparameters, stock.hyperparameters = keras_tuner.HyperParameters(), keras_tuner.HyperParameters()
    for oracle in (ours, stock):
        oracle.hyperparameters.Boolean("flag")
        oracle._tried_so_far = {oracle._compute_values_hash({"flag": flag}) for flag in (True, False)}
    assert ours._random_values() is None is kt_oracle.Oracle._random_values(stock)  # gave up alike
    assert ours._seed_state == stock._seed_state


def test_update_trial_replies_equal_keras_tuners_trial_proto(tmp_path):
    from kt_cluster.chief.exporter import ChiefMetrics
    from kt_cluster.chief.service import OracleService

    oracle = make_oracle(tmp_path, max_trials=50)
    service = OracleService(oracle, ChiefMetrics())
    rng = random.Random(3)
    for _ in range(20):
        trial = oracle.create_trial("w0", session="s0")
        assert service.protos.to_proto(trial) == trial.to_proto()
        step = 0
        for _ in range(rng.randint(1, 8)):
            step = max(0, step + rng.choice([1, 1, 2, 0, -1, -3]))  # resumed, repeated, skipped, earlier steps
            metrics = {"val_f1": rng.random()} | ({"loss": rng.random()} if rng.random() < 0.7 else {})
            trial = oracle.update_trial(trial.trial_id, metrics, step=step, tuner_id="w0", session="s0")
            assert service.protos.to_proto(trial, metrics, step) == trial.to_proto()
        trial.status = Status.COMPLETED
        oracle.end_trial(trial, tuner_id="w0", session="s0")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_best_trials_equal_keras_tuners_sorted_choice_ties_included(tmp_path, direction):
    oracle = make_oracle(tmp_path, direction=direction)
    rng = random.Random(11)
    for case in range(200):
        oracle.trials = {}
        for n in range(rng.randint(0, 12)):
            trial = trial_module.Trial(oracle.hyperparameters.copy(), trial_id=f"{n:02d}",
                                       status=rng.choice([Status.COMPLETED] * 3 + [Status.FAILED, Status.INVALID]))
            if trial.status == Status.COMPLETED:
                trial.score = rng.choice([0.25, 0.5, 0.75, rng.random()])  # ties keep the trials' order
            oracle.trials[trial.trial_id] = trial
        count = rng.randint(0, len(oracle.trials) + 2)
        ours = [t.trial_id for t in oracle.best_trials(count)]
        assert ours == [t.trial_id for t in kt_oracle.Oracle.get_best_trials(oracle, count)], case


def test_consecutive_failure_check_at_the_tail_equals_keras_tuners_full_scan(tmp_path):
    oracle = make_oracle(tmp_path)
    rng = random.Random(5)
    raised = 0
    for case in range(100):
        oracle.trials, oracle.end_order = {}, []
        oracle.max_consecutive_failed_trials = rng.randint(1, 4)
        for n in range(rng.randint(1, 12)):  # trials end one by one, each EndTrial checks; a raise ends the search
            trial = trial_module.Trial(oracle.hyperparameters.copy(), trial_id=str(n),
                                       status=rng.choice([Status.FAILED, Status.COMPLETED]),
                                       message=f"ValueError: trial {n}")
            oracle.trials[trial.trial_id] = trial
            oracle.end_order.append(trial.trial_id)
            outcomes = []
            for check in (oracle._check_consecutive_failures, lambda: kt_oracle.Oracle._check_consecutive_failures(oracle)):
                try:
                    check()
                    outcomes.append(None)
                except RuntimeError as exc:
                    outcomes.append(str(exc))
            assert outcomes[0] == outcomes[1], (case, n)
            if outcomes[0] is not None:
                raised += 1
                break
    assert 0 < raised < 100


def test_trials_from_their_state_equal_keras_tuners_from_state():
    rng = random.Random(9)
    for case in range(20):
        space = random_space(rng)
        definitions: dict = {}  # shared across trials, as a restore shares them
        trials = []
        for n in range(15):
            text = json.dumps(random_trial(rng, space, f"{n:02d}").get_state())  # as journaled
            # Each reads its own copy: keras-tuner's from_config deserializes conditions in place.
            ours, stock = compat.trial_from_state(json.loads(text), definitions), trial_module.Trial.from_state(json.loads(text))
            assert same_state(ours, stock), (case, n)
            assert [hp.name for hp in ours.hyperparameters.space] == [hp.name for hp in stock.hyperparameters.space]
            assert ours.hyperparameters.values == stock.hyperparameters.values
            trials.append(ours)
        first, second = trials[0].hyperparameters, trials[1].hyperparameters
        assert all(a is not b for a, b in zip(first.space, second.space))  # each trial its own objects
        assert len(definitions) == len(space.space)  # each definition deserialized once


def test_metric_updates_equal_keras_tuners_update_trial(tmp_path):
    ours = make_oracle(tmp_path / "ours", max_trials=50)
    stock = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("val_f1", "max"), max_trials=50, hyperparameters=ours.hyperparameters.copy(),
        seed=1)
    stock._set_project_dir(str(tmp_path / "stock"), "search")
    rng = random.Random(4)
    for n in range(10):
        pair = [trial_module.Trial(ours.hyperparameters.copy(), trial_id=f"{n:02d}") for _ in range(2)]
        stock.trials[pair[1].trial_id] = pair[1]
        step = 0
        for _ in range(rng.randint(1, 6)):
            step = max(0, step + rng.choice([1, 1, 0, -1]))  # repeated and earlier steps too
            # The objective, names whose direction keras-tuner infers (loss: min, accuracy: max) or not.
            metrics = {"val_f1": rng.random()} | {name: rng.choice([rng.random(), 3]) for name in
                                                   rng.sample(["loss", "accuracy", "custom"], rng.randint(0, 3))}
            ours.apply_metrics(pair[0], metrics, step)
            kt_oracle.Oracle.update_trial(stock, pair[1].trial_id, metrics, step=step)
        assert pair[0].metrics.get_config() == pair[1].metrics.get_config()
        assert {name: history.direction for name, history in pair[0].metrics.metrics.items()} == {
            name: history.direction for name, history in pair[1].metrics.metrics.items()}


def test_end_trial_protos_read_as_keras_tuners_from_proto(tmp_path):
    rng = random.Random(6)
    oracle = make_oracle(tmp_path, max_trials=200, space=random_space(rng))
    protos = compat.TrialProtos()
    reused = 0
    for n in range(40):
        trial = oracle.create_trial(f"w{n}", session="s")
        sent = protos.to_proto(trial)  # CreateTrial's reply: cached against the trial's objects
        back = trial_module.Trial.from_proto(sent)  # what the worker reports at the end
        back.status = rng.choice([Status.COMPLETED, Status.INVALID, Status.FAILED])
        for step in range(rng.randint(0, 3)):
            back.metrics.update("val_f1", rng.random(), step=step)
        if back.status == Status.COMPLETED:
            back.score, back.best_step = rng.random(), 0
        kind = rng.choice(["same", "grown", "unknown"])
        if kind == "grown":  # the worker's hypermodel registered one more hyperparameter
            back.hyperparameters.Float("momentum", 0.5, 0.99)
        if kind == "unknown":
            back.trial_id = f"x{n}"
        proto = back.to_proto()
        ours, stock = protos.from_proto(proto), trial_module.Trial.from_proto(proto)
        if kind == "same":
            # The very objects the chief sent, not parsed again: all that the proto says. keras-tuner's
            # parse also spells out defaults left unset (`default: None` -> 1) and orders the space
            # by kind of hyperparameter, as the proto groups them.
            assert ours.hyperparameters is trial.hyperparameters
            assert ours.hyperparameters.to_proto() == stock.hyperparameters.to_proto() == proto.hyperparameters
            assert ours.hyperparameters.values == stock.hyperparameters.values
            assert ({hp.name: (hp.default, hp.conditions) for hp in ours.hyperparameters.space}
                    == {hp.name: (hp.default, hp.conditions) for hp in stock.hyperparameters.space})
            ours, stock = ({k: v for k, v in t.get_state().items() if k != "hyperparameters"} for t in (ours, stock))
            assert json.dumps(ours) == json.dumps(stock), n
            reused += 1
        else:
            assert same_state(ours, stock), (n, kind)
        protos.forget(trial.trial_id)
    assert reused > 0


def test_the_small_state_is_keras_tuners_state_without_the_per_trial_parts(tmp_path):
    oracle = make_oracle(tmp_path, max_trials=20)
    for n in range(6):
        trial = oracle.create_trial(f"w{n}", session="s")
        if n % 2:
            trial.status = Status.COMPLETED
            oracle.update_trial(trial.trial_id, {"val_f1": 0.5}, tuner_id=f"w{n}", session="s")
            oracle.end_trial(trial, tuner_id=f"w{n}", session="s")
    tried = set(oracle._tried_so_far)
    full = kt_oracle.Oracle.get_state(oracle)
    small = oracle.state_without_trials()
    dropped = set(compat.PER_TRIAL_STATE_KEYS) | {"ongoing_trials"}
    assert json.dumps(small) == json.dumps({k: v for k, v in full.items() if k not in dropped})
    assert dropped <= set(full) and oracle._tried_so_far == tried and len(tried) == 6


def test_asha_hashes_a_configuration_as_keras_tuner_hashes_it_without_its_rung(tmp_path):
    oracle = ASHAOracle(objective=keras_tuner.Objective("val_f1", "max"), max_trials=10, seed=1)
    rng = random.Random(2)
    for _ in range(50):
        values = {"units": rng.randint(1, 9), "activation": rng.choice(["relu", "elu"])}
        rung = {"tuner/epochs": rng.randint(1, 9), "tuner/initial_epoch": 0, "tuner/round": rng.randint(0, 3)}
        assert oracle._compute_values_hash(values | rung) == kt_oracle.Oracle._compute_values_hash(oracle, values)
        assert oracle._compute_values_hash(values | {"units": values["units"] + 1}) != oracle._compute_values_hash(values)


def test_metric_directions_come_from_the_objective_the_project_the_config_then_keras_tuner(tmp_path):
    oracle = make_oracle(tmp_path, direction="min")  # the objective val_f1, minimised: its own direction wins
    oracle.metric_directions = {"dice": "max", "val_wobble": "min"}
    trial = trial_module.Trial(oracle.hyperparameters.copy(), trial_id="00")
    metrics = {"val_f1": 0.5, "f1": 0.5, "iou": 0.4, "val_iou": 0.4, "precision": 0.3, "val_recall": 0.2, "loss": 1.0,
               "val_dice_loss": 1.0, "dice": 0.5, "val_dice": 0.5, "val_wobble": 1.0, "accuracy": 0.9, "custom": 1.0}
    oracle.apply_metrics(trial, metrics, step=0)
    stock = metrics_tracking.MetricsTracker()  # keras-tuner's inference, for what neither project nor config knows
    stock.register("accuracy")
    stock.register("custom")
    assert {name: history.direction for name, history in trial.metrics.metrics.items()} == {
        "val_f1": "min", "f1": "max", "iou": "max", "val_iou": "max", "precision": "max", "val_recall": "max",
        "loss": "min", "val_dice_loss": "min", "dice": "max", "val_dice": "max", "val_wobble": "min",
        "accuracy": stock.metrics["accuracy"].direction, "custom": stock.metrics["custom"].direction}
