"""ASHA: promotions as soon as a rung has enough results, the top 1/eta only, warm-start
hyperparameters, no IDLE while the budget lasts, small JSON state; and one real 2-worker search."""

import json
import random

import keras_tuner
import pytest
from keras_tuner.src.engine import trial as trial_module

from kt_cluster.chief.oracle import cluster_oracle_class
from kt_cluster.core import compute
from kt_cluster.core.asha import ASHAOracle, rung_epochs
from kt_cluster.core.config import TUNERS, ConfigError, from_dict
from kt_cluster.core.tuner import ORACLES, make_oracle

Status = trial_module.TrialStatus


def make(max_trials=50, min_epochs=1, max_epochs=9, eta=3, seed=1, tmp_path=None):
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 1, 10_000)
    hp.Choice("activation", ["relu", "elu"])
    oracle = ASHAOracle(objective=keras_tuner.Objective("val_f1", "max"), max_trials=max_trials,
                        min_epochs=min_epochs, max_epochs=max_epochs, eta=eta, hyperparameters=hp, seed=seed)
    if tmp_path is not None:
        oracle._set_project_dir(str(tmp_path), "search")
    return oracle


@pytest.fixture
def oracle(tmp_path):
    return make(tmp_path=tmp_path)


def finish(oracle, trial, score, status=Status.COMPLETED):
    if status == Status.COMPLETED:
        oracle.update_trial(trial.trial_id, {"val_f1": score}, step=trial.hyperparameters.values["tuner/epochs"] - 1)
    trial.status = status
    oracle.end_trial(trial)


def values(trial):
    return trial.hyperparameters.values


def test_rungs_grow_by_eta_and_end_at_max_epochs():
    assert rung_epochs(1, 9, 3) == [1, 3, 9]
    assert rung_epochs(1, 20, 3) == [1, 3, 9, 20]
    assert rung_epochs(2, 3, 2) == [2, 3]
    assert rung_epochs(4, 4, 3) == [4]


def test_new_trials_start_at_rung_zero_with_distinct_configurations(oracle):
    trials = [oracle.create_trial(f"w{i}") for i in range(5)]
    assert all(t.status == Status.RUNNING for t in trials)
    for t in trials:
        assert (values(t)["tuner/epochs"], values(t)["tuner/initial_epoch"], values(t)["tuner/round"]) == (1, 0, 0)
        assert "tuner/trial_id" not in values(t)
    assert len({(values(t)["units"], values(t)["activation"]) for t in trials}) == 5


def test_promotion_happens_as_soon_as_a_rung_has_eta_results(oracle):
    a, b, c, d = (oracle.create_trial(f"w{i}") for i in range(4))
    finish(oracle, a, 0.2)
    finish(oracle, b, 0.9)
    nxt = oracle.create_trial("w0")  # 2 results at rung 0: floor(2/3) = 0 promotable
    assert "tuner/trial_id" not in values(nxt)
    finish(oracle, c, 0.5)  # 3 results: the best one goes up, while d is still running
    promoted = oracle.create_trial("w1")
    assert values(promoted)["tuner/trial_id"] == b.trial_id
    assert promoted.trial_id not in (a.trial_id, b.trial_id, c.trial_id)


def test_promoted_trial_carries_the_warm_start_hyperparameters(oracle):
    first = [oracle.create_trial(f"w{i}") for i in range(3)]
    for t, score in zip(first, (0.1, 0.7, 0.3)):
        finish(oracle, t, score)
    promoted = oracle.create_trial("w0")
    parent = first[1]
    expected = {k: v for k, v in values(parent).items() if not k.startswith("tuner/")}
    assert {k: v for k, v in values(promoted).items() if not k.startswith("tuner/")} == expected
    assert values(promoted)["tuner/trial_id"] == parent.trial_id
    assert values(promoted)["tuner/epochs"] == 3 and values(promoted)["tuner/initial_epoch"] == 1
    assert values(promoted)["tuner/bracket"] == 0 and values(promoted)["tuner/round"] == 1


def test_only_the_top_third_is_promoted_and_each_trial_once(oracle):
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    first = [oracle.create_trial(f"w{i}") for i in range(9)]
    for t, s in zip(first, scores):
        finish(oracle, t, s)
    parents = []
    for i in range(5):
        t = oracle.create_trial(f"x{i}")
        parents.append(values(t).get("tuner/trial_id"))
    by_id = {t.trial_id: s for t, s in zip(first, scores)}
    # floor(9/3) = 3 promotions, best first, then new configurations at rung 0.
    assert [by_id.get(p) for p in parents[:3]] == [0.9, 0.8, 0.7]
    assert parents[3:] == [None, None]


def test_highest_rung_is_promoted_first(oracle):  # rungs [1, 3, 9]
    base = [oracle.create_trial(f"w{i}") for i in range(12)]
    for i, t in enumerate(base[:9]):
        finish(oracle, t, i / 10)
    middle = [oracle.create_trial(f"m{i}") for i in range(3)]  # the top 3 of 9 go to rung 1
    assert [values(t)["tuner/round"] for t in middle] == [1, 1, 1]
    for t, s in zip(middle, (0.5, 0.95, 0.6)):
        finish(oracle, t, s)
    for t in base[9:]:  # rung 0 now has 12 results: a 4th promotion is due there too
        finish(oracle, t, 0.05)
    up = oracle.create_trial("x0")
    assert values(up)["tuner/round"] == 2 and values(up)["tuner/trial_id"] == middle[1].trial_id
    assert (values(up)["tuner/initial_epoch"], values(up)["tuner/epochs"]) == (3, 9)
    again = oracle.create_trial("x1")
    assert values(again)["tuner/round"] == 1 and values(again)["tuner/trial_id"] == base[5].trial_id


def test_top_rung_is_never_promoted(tmp_path):
    oracle = make(max_epochs=3, eta=3, tmp_path=tmp_path)  # rungs [1, 3]
    first = [oracle.create_trial(f"w{i}") for i in range(3)]
    for t, s in zip(first, (0.3, 0.2, 0.1)):
        finish(oracle, t, s)
    top = oracle.create_trial("w0")
    assert values(top)["tuner/round"] == 1 and values(top)["tuner/epochs"] == 3
    finish(oracle, top, 0.99)
    more = [oracle.create_trial(f"y{i}") for i in range(4)]
    assert all(values(t)["tuner/round"] == 0 for t in more)


def test_failed_trials_are_never_promoted(oracle):
    first = [oracle.create_trial(f"w{i}") for i in range(3)]
    finish(oracle, first[0], 0.0, status=Status.FAILED)
    finish(oracle, first[1], 0.5)
    finish(oracle, first[2], 0.4)
    assert values(oracle.create_trial("w0")).get("tuner/trial_id") is None  # 2 completed < eta


def test_never_idle_while_the_budget_lasts_beyond_the_final_climb(tmp_path):
    oracle = make(max_trials=50, tmp_path=tmp_path)  # rungs [1, 3, 9]
    running = [oracle.create_trial(f"w{i}") for i in range(48)]  # nothing finished: still no IDLE
    assert [t.status for t in running] == [Status.RUNNING] * 48


def test_the_last_trials_carry_the_best_configuration_to_max_epochs_then_stopped(tmp_path):
    oracle = make(max_trials=7, tmp_path=tmp_path)  # rungs [1, 3, 9]: two promotions to the top
    first = [oracle.create_trial(f"w{i}") for i in range(5)]
    assert [t.status for t in first] == [Status.RUNNING] * 5
    assert oracle.create_trial("w5").status == Status.IDLE  # 2 left, kept for the climb
    finish(oracle, first[0], 0.4)
    finish(oracle, first[1], 0.8)  # 2 results: below ASHA's quota of 3, promoted all the same
    up = oracle.create_trial("w1")
    assert (values(up)["tuner/trial_id"], values(up)["tuner/round"]) == (first[1].trial_id, 1)
    finish(oracle, first[2], 0.9)  # better, but rung 1 is the highest reached: wait for it
    assert oracle.create_trial("w2").status == Status.IDLE
    finish(oracle, up, 0.85)
    top = oracle.create_trial("w2")
    assert (values(top)["tuner/trial_id"], values(top)["tuner/round"]) == (up.trial_id, 2)
    assert values(top)["tuner/epochs"] == 9
    assert oracle.create_trial("late").status == Status.STOPPED
    assert len(oracle.trials) == 7


def test_a_budget_smaller_than_the_climb_still_starts_a_configuration(tmp_path):
    oracle = make(max_trials=2, tmp_path=tmp_path)  # rungs [1, 3, 9]: too few trials to reach 9
    first = oracle.create_trial("w0")
    assert first.status == Status.RUNNING and values(first)["tuner/round"] == 0
    assert oracle.create_trial("w1").status == Status.IDLE
    finish(oracle, first, 0.5)
    up = oracle.create_trial("w1")
    assert (values(up)["tuner/trial_id"], values(up)["tuner/epochs"]) == (first.trial_id, 3)
    assert oracle.create_trial("w0").status == Status.STOPPED


@pytest.mark.parametrize("max_trials", [7, 9, 13, 16, 25])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_workers_bring_a_configuration_to_max_epochs_within_the_budget(tmp_path, max_trials, seed):
    """Two workers, each trial lasting as many time units as it trains epochs, scores at random."""
    oracle = make(max_trials=max_trials, min_epochs=3, max_epochs=27, seed=seed, tmp_path=tmp_path / "s")
    scores, clock, running = random.Random(seed), 0, {}
    for worker in ("w0", "w1"):
        t = oracle.create_trial(worker)
        running[worker] = (clock + values(t)["tuner/epochs"] - values(t)["tuner/initial_epoch"], t)
    while running:
        worker = min(running, key=lambda w: running[w][0])
        clock, trial = running.pop(worker)
        if trial.status == Status.RUNNING:
            finish(oracle, trial, scores.random())
        nxt = oracle.create_trial(worker)
        if nxt.status == Status.RUNNING:
            running[worker] = (clock + values(nxt)["tuner/epochs"] - values(nxt)["tuner/initial_epoch"], nxt)
        elif nxt.status == Status.IDLE:
            others = [end for end, _ in running.values()]
            assert others, "IDLE with nothing running"
            running[worker] = (min(others), nxt)  # ask again once another trial has ended
    assert len(oracle.trials) == max_trials
    assert max(values(t)["tuner/epochs"] for t in oracle.trials.values()) == 27


def test_budget_counts_promoted_trials(tmp_path):
    oracle = make(max_trials=10, tmp_path=tmp_path)
    made = 0
    while True:
        t = oracle.create_trial("w0")
        if t.status != Status.RUNNING:
            break
        made += 1
        finish(oracle, t, (made * 37 % 11) / 11)
    assert t.status == Status.STOPPED and made == len(oracle.trials) == 10
    promoted = [x for x in oracle.trials.values() if "tuner/trial_id" in values(x)]
    assert promoted and all(values(x)["tuner/round"] >= 1 for x in promoted)


def test_min_direction_promotes_the_lowest_scores(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 1, 1000)
    oracle = ASHAOracle(objective=keras_tuner.Objective("val_loss", "min"), max_trials=20, max_epochs=4,
                        eta=2, hyperparameters=hp, seed=3)
    oracle._set_project_dir(str(tmp_path), "search")
    a, b = oracle.create_trial("w0"), oracle.create_trial("w1")
    for t, s in ((a, 0.9), (b, 0.1)):
        oracle.update_trial(t.trial_id, {"val_loss": s})
        t.status = Status.COMPLETED
        oracle.end_trial(t)
    assert values(oracle.create_trial("w0"))["tuner/trial_id"] == b.trial_id


def test_state_is_small_json_and_round_trips(tmp_path):
    oracle = make(tmp_path=tmp_path)
    first = [oracle.create_trial(f"w{i}") for i in range(6)]
    for t, s in zip(first, (0.1, 0.9, 0.3, 0.4, 0.5, 0.6)):
        finish(oracle, t, s)
    promoted = oracle.create_trial("w0")  # the 0.9 one: rung 0 has 6 results, top 2
    state = json.loads(json.dumps(oracle.get_state()))
    assert {k: state[k] for k in ("min_epochs", "max_epochs", "eta")} == {"min_epochs": 1, "max_epochs": 9, "eta": 3}
    ours = set(state) - set(keras_tuner.Oracle.get_state(oracle))
    assert ours == {"min_epochs", "max_epochs", "eta"}  # nothing per trial

    # As keras-tuner's reload and the chief's journal do: trials first, then set_state.
    fresh = make(tmp_path=tmp_path, seed=99)
    fresh.trials = {tid: trial_module.Trial.from_state(json.loads(json.dumps(t.get_state())))
                    for tid, t in oracle.trials.items()}
    fresh.set_state(state)
    nxt_a, nxt_b = oracle.create_trial("w1"), fresh.create_trial("w1")
    assert values(nxt_b)["tuner/trial_id"] == values(nxt_a)["tuner/trial_id"] == first[5].trial_id
    assert values(promoted)["tuner/trial_id"] == first[1].trial_id
    # The same seed state samples the same next configuration, and no promotion repeats.
    assert values(oracle.create_trial("w2")) == values(fresh.create_trial("w2"))
    assert "tuner/trial_id" not in values(fresh.create_trial("w3"))


def test_chief_wrapped_oracle_restores_asha_from_its_journal(tmp_path):
    config = from_dict({"tuner": "asha", "max_trials": 12, "max_epochs": 4, "hyperband_factor": 2, "seed": 5})
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 1, 1000)

    def chief():
        oracle = make_oracle(config, cluster_oracle_class)
        oracle.hyperparameters = hp.copy()
        oracle._set_project_dir(str(tmp_path), "search")
        oracle.setup_cluster(tmp_path / "state", 60.0, 100.0, early_stopping=False)
        return oracle

    one = chief()
    one.save()
    a, b = one.create_trial("w0", "s"), one.create_trial("w1", "s")
    for t, s, holder in ((a, 0.2, "w0"), (b, 0.8, "w1")):  # each call from the trial's holder
        one.update_trial(t.trial_id, {"val_f1": s}, tuner_id=holder, session="s")
        t.status = Status.COMPLETED
        one.end_trial(t, tuner_id=holder, session="s")
    promoted = one.create_trial("w0", "s")
    assert values(promoted)["tuner/trial_id"] == b.trial_id and values(promoted)["tuner/epochs"] == 2
    two = chief()
    assert two.restore()
    assert isinstance(two, ASHAOracle) and two.eta == 2
    nxt = two.create_trial("w1", "s")  # b is promoted already and a is not in the top half
    assert "tuner/trial_id" not in values(nxt) and values(nxt)["tuner/round"] == 0


@pytest.mark.parametrize("raw, field", [
    ({"tuner": "asha", "min_epochs": 5, "max_epochs": 4}, "min_epochs"),
    ({"tuner": "asha", "min_epochs": 0}, "min_epochs"),
    ({"tuner": "asha", "hyperband_factor": 1}, "hyperband_factor"),
])
def test_asha_config_is_validated(raw, field):
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert str(err.value).startswith(field + ":")


def test_asha_config_defaults_and_early_stopping_off():
    config = from_dict({"tuner": "asha"})
    assert config.min_epochs is None and not config.early_stopping_on
    oracle = make_oracle(config)
    # The first rung is derived from the budget: 30 trials pay for two promotions.
    assert isinstance(oracle, ASHAOracle) and oracle.rungs == [3, 9, 20] and oracle.max_trials == 30
    assert make_oracle(from_dict({"tuner": "asha", "max_trials": 10})).rungs == [7, 20]  # one promotion
    assert make_oracle(from_dict({"tuner": "asha", "min_epochs": 1})).rungs == [1, 3, 9, 20]


def test_two_worker_search_completes_with_a_warm_started_promotion(cluster):
    # eta 2: the second rung-0 result already promotes one trial, whichever worker finishes first.
    c = cluster(config={"tuner": "asha", "max_trials": 4, "max_epochs": 3, "min_epochs": 1,
                        "hyperband_factor": 2, "seed": 3})
    c.start_chief()
    c.start_worker(0)
    c.start_worker(1)
    assert c.wait_exit("chief", timeout=600) == 0, c.tail("chief")
    trials = {t["trial_id"]: t for t in c.trial_files()}
    assert len(trials) == 4 and {t["status"] for t in trials.values()} == {"COMPLETED"}
    rungs = rung_epochs(1, 3, 2)  # [1, 2, 3]
    promoted = [t for t in trials.values() if "tuner/trial_id" in t["hyperparameters"]["values"]]
    assert promoted, [t["hyperparameters"]["values"] for t in trials.values()]
    for child in promoted:
        hps = child["hyperparameters"]["values"]
        parent = trials[hps["tuner/trial_id"]]
        parent_hps = parent["hyperparameters"]["values"]
        assert parent["status"] == "COMPLETED"
        assert hps["tuner/round"] == parent_hps["tuner/round"] + 1
        assert (hps["tuner/initial_epoch"], hps["tuner/epochs"]) == tuple(rungs[hps["tuner/round"] - 1:][:2])
        assert hps["tuner/initial_epoch"] == parent_hps["tuner/epochs"]
        assert {k: v for k, v in hps.items() if not k.startswith("tuner/")} == \
               {k: v for k, v in parent_hps.items() if not k.startswith("tuner/")}
        # It trained only the epochs after its parent's, starting from the parent's checkpoint.
        steps = [o["step"] for o in child["metrics"]["metrics"]["val_f1"]["observations"]]
        assert steps == list(range(hps["tuner/initial_epoch"], hps["tuner/epochs"]))
        assert list((c.results / "ktc-search" / f"trial_{parent['trial_id']}").glob("checkpoint*"))
    for name in ("worker-0", "worker-1"):
        assert c.wait_exit(name, timeout=60) == 0, c.tail(name)


@pytest.mark.parametrize("tuner", TUNERS)
def test_every_tuner_builds_its_oracle_for_the_chief(tuner):
    """Each registered tuner starts (`bayesian` needs scipy and scikit-learn installed)."""
    oracle = make_oracle(from_dict({"tuner": tuner, "max_trials": 5}), cluster_oracle_class)
    assert isinstance(oracle, ORACLES[tuner]) and oracle.max_trials == 5


def train(oracle, trial, score, seconds_per_epoch):
    """Report every epoch of `trial` as a worker does: the objective and the worker time it took."""
    for epoch in range(values(trial)["tuner/initial_epoch"], values(trial)["tuner/epochs"]):
        oracle.update_trial(trial.trial_id, {"val_f1": score, "epoch_seconds": seconds_per_epoch}, step=epoch)
    trial.status = Status.COMPLETED
    oracle.end_trial(trial)


@pytest.mark.parametrize("budget", [100, 150, 250])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_worker_time_budget_keeps_its_end_for_carrying_a_configuration_to_max_epochs(tmp_path, budget, seed):
    """Two workers; a configuration's epoch costs 1 to 6 worker seconds (by its units); the trial
    budget is out of reach, so only worker time ends the search."""
    oracle = make(max_trials=1000, min_epochs=3, max_epochs=27, seed=seed, tmp_path=tmp_path / "s")
    oracle.max_worker_seconds = budget
    scores, clock, running, spent_at_start = random.Random(seed), 0.0, {}, []

    def cost(trial):
        return 1 + values(trial)["units"] / 2000

    def start(worker, trial):
        spent_at_start.append(compute.spent_seconds(oracle.trials.values()))
        epochs = values(trial)["tuner/epochs"] - values(trial)["tuner/initial_epoch"]
        running[worker] = (clock + epochs * cost(trial), trial)

    for worker in ("w0", "w1"):
        start(worker, oracle.create_trial(worker))
    stopped = set()
    while running:
        worker = min(running, key=lambda w: running[w][0])
        clock, trial = running.pop(worker)
        if trial.status == Status.RUNNING:
            train(oracle, trial, scores.random(), cost(trial))
        if compute.spent_seconds(oracle.trials.values()) >= budget:
            stopped.add(worker)  # as the chief's oracle does: no trial starts once it is spent
            continue
        nxt = oracle.create_trial(worker)
        if nxt.status == Status.RUNNING:
            start(worker, nxt)
        elif nxt.status == Status.IDLE:
            others = [end for end, _ in running.values()]
            assert others, "IDLE with nothing running"
            running[worker] = (min(others), nxt)  # ask again once another trial has ended
    assert max(values(t)["tuner/epochs"] for t in oracle.trials.values()) == 27
    assert all(spent < budget for spent in spent_at_start)
    assert len(oracle.trials) < 1000
    # Every other trial fitted when it started, at the costs known then: only the climb's last
    # step, planned at an estimate, may run past the budget.
    top = max(oracle.trials.values(), key=lambda t: values(t)["tuner/epochs"])
    assert compute.spent_seconds(oracle.trials.values()) <= budget + compute.spent_seconds([top])


def test_without_a_worker_time_budget_asha_ignores_the_epochs_cost(tmp_path):
    oracle = make(max_trials=1000, min_epochs=3, max_epochs=27, tmp_path=tmp_path)
    first = oracle.create_trial("w0")
    train(oracle, first, 0.5, 1e9)
    assert oracle.time_plan() is None
    assert values(oracle.create_trial("w0"))["tuner/round"] == 0


def test_a_real_search_on_a_worker_time_budget_climbs_to_max_epochs_and_stops_on_time(cluster):
    """Two real workers report the worker time of every epoch; the chief counts it against
    max_worker_hours (40 s), keeps the end for the climb and starts nothing once it is spent."""
    budget = 40.0
    space = {"start_neurons": {"min": 8, "max": 32, "step": 8}, "activation": ["relu", "elu", "lrelu", "mish"],
             "dropout": True}  # 32 configurations: more than the budget pays for
    c = cluster(config={"tuner": "asha", "max_trials": 200, "max_epochs": 9, "min_epochs": 1, "seed": 4,
                        "max_worker_hours": budget / 3600, "space": space})
    c.start_chief()
    c.start_worker(0)
    c.start_worker(1)
    assert c.wait_exit("chief", timeout=600) == 0, c.tail("chief")
    trials = c.trial_files()
    seconds = {t["trial_id"]: [v for o in t["metrics"]["metrics"]["epoch_seconds"]["observations"] for v in o["value"]]
               for t in trials}
    for t in trials:  # one positive figure per epoch trained
        steps = [o["step"] for o in t["metrics"]["metrics"]["val_f1"]["observations"]]
        assert len(seconds[t["trial_id"]]) == len(steps) and all(s > 0 for s in seconds[t["trial_id"]])
    spent = sum(map(sum, seconds.values()))
    status = json.loads((c.results / "ktc-search" / "status.json").read_text())
    assert status["done"] and status["worker_seconds"] == pytest.approx(spent)
    longest = max(map(sum, seconds.values()))  # a trial's worker time: what estimates can miss by
    assert len(trials) < 200 and budget - 2 * longest <= spent < budget + 2 * longest
    assert max(t["hyperparameters"]["values"]["tuner/epochs"] for t in trials) == 9


def test_the_climb_goes_first_when_the_promotion_due_would_leave_too_little_worker_time_for_it(tmp_path):
    """Rungs 3, 9, 27. A cheap configuration (1 s an epoch) has reached rung 1; an expensive one
    (10 s an epoch) is due for rung 1. The 50 s left pay for the climb (18 s) and a first-rung
    trial (12 s on average), not for the climb and that promotion (60 s)."""
    oracle = make(max_trials=1000, min_epochs=3, max_epochs=27, tmp_path=tmp_path)

    def rung0(score, seconds):
        trial = oracle.create_trial("w0")
        assert values(trial)["tuner/round"] == 0
        train(oracle, trial, score, seconds)
        return trial

    cheap = rung0(0.9, 1.0)
    rung0(0.5, 10.0)
    rung0(0.1, 1.0)
    climbed = oracle.create_trial("w0")
    assert values(climbed)["tuner/trial_id"] == cheap.trial_id
    train(oracle, climbed, 0.9, 1.0)
    rung0(0.2, 1.0)
    rung0(0.3, 1.0)
    due = rung0(0.95, 10.0)
    assert oracle.promotable() == (due.trial_id, 0)
    oracle.max_worker_seconds = compute.spent_seconds(oracle.trials.values()) + 50
    top = oracle.create_trial("w0")
    assert (values(top)["tuner/trial_id"], values(top)["tuner/epochs"]) == (climbed.trial_id, 27)
    oracle.max_worker_seconds += 100  # enough for both: the promotion by rank comes first again
    assert values(oracle.create_trial("w1"))["tuner/trial_id"] == due.trial_id


def test_no_trial_starts_that_could_not_finish_in_the_worker_time_left(tmp_path):
    """Rungs 3, 9, 27; first-rung trials of 3 epochs at 2 s. With the top rung reached there is
    no climb to keep time for, but a new first-rung trial (6 s) must still fit."""
    oracle = make(max_trials=1000, min_epochs=1, max_epochs=1, tmp_path=tmp_path)  # one rung: no climb
    for _ in range(3):
        t = oracle.create_trial("w0")
        train(oracle, t, 0.5, 2.0)  # 1 epoch, 2 s
    spent = compute.spent_seconds(oracle.trials.values())
    oracle.max_worker_seconds = spent + 5
    running = oracle.create_trial("w0")
    assert running.status == Status.RUNNING  # 2 s of 5 left
    assert oracle.create_trial("w1").status == Status.RUNNING  # 2 s of the 3 left after the first
    assert oracle.create_trial("w2").status == Status.IDLE  # 1 s left after both: wait for them
    train(oracle, running, 0.5, 2.0)
    assert oracle.create_trial("w0").status == Status.IDLE


def test_with_every_configuration_sampled_the_best_one_is_carried_to_max_epochs(tmp_path):
    hp = keras_tuner.HyperParameters()
    hp.Choice("activation", ["relu", "elu"])  # two configurations: too few for promotions by rank
    oracle = ASHAOracle(objective=keras_tuner.Objective("val_f1", "max"), max_trials=50, min_epochs=1,
                        max_epochs=9, eta=3, hyperparameters=hp, seed=1)
    oracle._set_project_dir(str(tmp_path), "search")
    finish(oracle, oracle.create_trial("w0"), 0.3)
    best = oracle.create_trial("w0")
    finish(oracle, best, 0.6)
    for epochs in (3, 9):
        up = oracle.create_trial("w0")
        assert (values(up)["tuner/trial_id"], values(up)["tuner/epochs"]) == (best.trial_id, epochs)
        finish(oracle, up, 0.7)
        best = up
    assert oracle.create_trial("w0").status == Status.STOPPED
