"""ASHA's model-based sampler: cheap configurations first, then draws near the best ones, per
unit of cost, never a configuration twice, deterministic per seed."""

import random

import keras_tuner
import pytest
from keras_tuner.engine import trial as trial_module

from kt_cluster.core.asha import ASHAOracle
from kt_cluster.core.sampler import ModelSampler

Status = trial_module.TrialStatus


def space():
    hp = keras_tuner.HyperParameters()
    hp.Int("units", 8, 128, step=8)
    hp.Float("lr", 1e-4, 1e-1, sampling="log")
    hp.Choice("loss", ["a", "b", "c"])
    return hp


def units_cost(values):
    return float(values["units"]) ** 2


def drawer(hp, seed=0):
    rng = random.Random(seed)

    def draw():
        return {p.name: p.random_sample(rng.randrange(1 << 30)) for p in hp.space}

    return draw


def test_before_the_model_has_data_it_picks_cheap_configurations_of_more_than_the_cheapest_architecture():
    hp = space()
    sampler = ModelSampler(cost=units_cost)  # 32 draws: the cheapest is almost always 8 or 16 units
    picks = [sampler.sample(hp.space, drawer(hp, i), [], True, random.Random(i))["units"] for i in range(60)]
    assert max(picks) <= 24  # at most 3 times the cheapest cost (units squared)
    assert {8, 16} <= set(picks)  # not always the cheapest


def test_with_scores_it_samples_near_the_good_configurations():
    hp = space()
    # Good trials have a high learning rate and loss "c"; units do not matter.
    scored = [({"units": u, "lr": lr, "loss": loss}, (1.0 if loss == "c" else 0.0) + lr)
              for u in (16, 64, 120) for lr in (1e-4, 1e-3, 5e-2) for loss in ("a", "b", "c")]
    sampler = ModelSampler(cost=None, random_fraction=0.0)
    picks = [sampler.sample(hp.space, drawer(hp, i), scored, True, random.Random(i)) for i in range(30)]
    assert sum(p["loss"] == "c" for p in picks) >= 24
    by_lr = [(values, values["lr"]) for values, _ in scored]  # now only the learning rate matters
    picks = [sampler.sample(hp.space, drawer(hp, i), by_lr, True, random.Random(i)) for i in range(30)]
    assert sorted(p["lr"] for p in picks)[15] > 1e-2


def test_cost_weighs_against_expensive_configurations_that_look_alike():
    hp = space()
    scored = [({"units": u, "lr": 1e-3, "loss": "a"}, 0.5) for u in (16, 64, 120)] + \
             [({"units": u, "lr": 1e-3, "loss": "b"}, 0.1) for u in (16, 64, 120)]
    with_cost = ModelSampler(cost=units_cost, random_fraction=0.0)
    without = ModelSampler(cost=None, random_fraction=0.0)
    mean = lambda s: sum(s.sample(hp.space, drawer(hp, i), scored, True, random.Random(i))["units"]  # noqa: E731
                         for i in range(30)) / 30
    assert mean(with_cost) < 0.7 * mean(without)


def test_its_random_share_draws_in_inverse_proportion_to_cost_yet_explores():
    hp = space()
    scored = [({"units": u, "lr": 1e-3, "loss": "a"}, 0.1 * i) for i, u in enumerate((16, 32, 48, 64))]
    sampler = ModelSampler(cost=units_cost, random_fraction=1.0)
    picks = [sampler.sample(hp.space, drawer(hp, i), scored, True, random.Random(i)) for i in range(200)]
    units = [p["units"] for p in picks]
    # Chances proportional to 1/units**2: 8 units is drawn about 100 times as often as 80.
    assert sum(u <= 24 for u in units) > 0.6 * len(units)
    assert sum(u >= 80 for u in units) < 0.05 * len(units)
    assert len({p["loss"] for p in picks}) == 3 and len(set(units)) >= 4  # every hyperparameter explored
    without_cost = ModelSampler(cost=None, random_fraction=1.0)
    plain = [without_cost.sample(hp.space, drawer(hp, i), scored, True, random.Random(i))["units"] for i in range(200)]
    assert sum(u >= 80 for u in plain) > 0.3 * len(plain)  # uniform: no cost, no weighting


def run_asha(seed, sampler, tmp_path, trials=24):
    oracle = ASHAOracle(objective=keras_tuner.Objective("val_f1", "max"), max_trials=trials, min_epochs=1,
                        max_epochs=9, eta=3, hyperparameters=space(), seed=seed, sampler=sampler)
    oracle._set_project_dir(str(tmp_path / f"s{seed}-{len(list(tmp_path.iterdir()))}"), "search")
    seen = []
    for _ in range(trials):
        trial = oracle.create_trial("w0")
        if trial.status != Status.RUNNING:
            break
        values = trial.hyperparameters.values
        seen.append(dict(values))
        score = (1.0 if values["loss"] == "c" else 0.0) - values["units"] / 1000
        oracle.update_trial(trial.trial_id, {"val_f1": score}, step=values["tuner/epochs"] - 1)
        trial.status = Status.COMPLETED
        oracle.end_trial(trial)
    return seen


def test_asha_with_the_sampler_never_repeats_a_configuration_and_is_deterministic_per_seed(tmp_path):
    sampler = ModelSampler()
    first = run_asha(5, sampler, tmp_path)
    assert first == run_asha(5, sampler, tmp_path)
    fresh = [tuple(sorted((k, v) for k, v in t.items() if not k.startswith("tuner/"))) for t in first
             if "tuner/trial_id" not in t]
    assert len(fresh) == len(set(fresh)) and len(first) == 24
    model_phase = [t for t in first if "tuner/trial_id" not in t][8:]
    assert sum(t["loss"] == "c" for t in model_phase) > len(model_phase) / 2


@pytest.mark.parametrize("sampler", [None, ModelSampler()])
def test_asha_runs_its_whole_budget_with_or_without_the_sampler(sampler, tmp_path):
    seen = run_asha(1, sampler, tmp_path, trials=12)
    assert len(seen) == 12 and any("tuner/trial_id" in t for t in seen)


def test_first_configurations_of_the_default_space_are_its_cheap_architectures(tmp_path):
    from kt_cluster.core.config import from_dict
    from kt_cluster.core.tuner import build_tuner

    config = from_dict({"tuner": "asha", "data": {"image_size": 128}, "results": str(tmp_path), "max_trials": 13})
    space = build_tuner(config).oracle.hyperparameters
    base = None
    costs = []
    for seed in range(1, 21):
        oracle = make_oracle_for(config, space, seed, tmp_path / str(seed))
        base = base or oracle.sampler.cost({"start_neurons": 16, "net_depth": 4})
        for _ in range(3):
            costs.append(oracle.sampler.cost(oracle.create_trial("w0").hyperparameters.values) / base)
    # The space's median configuration costs about 15 times a 16-filter depth-4 U-Net; the
    # cheapest (16 filters, depth 2) 0.38 of it, and within 3 times that lie depths 3 and 4 too.
    assert sum(costs) / len(costs) <= 1.0
    assert {0.38, 0.69, 1.0} <= {round(c, 2) for c in costs}  # not only the cheapest architecture


def make_oracle_for(config, space, seed, where):
    from kt_cluster.core.tuner import make_oracle

    oracle = make_oracle(config)
    oracle.hyperparameters = space.copy()
    oracle._seed_state = seed
    oracle._set_project_dir(str(where), "search")
    return oracle


def test_asha_gets_the_cost_aware_model_sampler_unless_random_is_asked_for(tmp_path):
    from kt_cluster.core.config import from_dict
    from kt_cluster.core.tuner import make_oracle

    sampler = make_oracle(from_dict({"tuner": "asha"})).sampler
    assert isinstance(sampler, ModelSampler) and sampler.cost({"start_neurons": 32, "net_depth": 3}) > \
        sampler.cost({"start_neurons": 16, "net_depth": 3})
    assert make_oracle(from_dict({"tuner": "asha", "sampler": "random"})).sampler is None


@pytest.mark.parametrize("random_fraction", [0.0, 1.0])
def test_no_pick_costs_more_than_the_cap_while_cheaper_draws_exist(random_fraction):
    hp = space()
    # The model would like big units: the good configurations are the biggest.
    scored = [({"units": u, "lr": 1e-3, "loss": "a"}, u / 128) for u in (16, 48, 96, 128)]
    sampler = ModelSampler(cost=units_cost, random_fraction=random_fraction)
    capped = [sampler.sample(hp.space, drawer(hp, i), scored, True, random.Random(i), max_cost=40.0**2)
              for i in range(40)]
    assert max(p["units"] for p in capped) <= 40
    free = [sampler.sample(hp.space, drawer(hp, i), scored, True, random.Random(i)) for i in range(40)]
    assert max(p["units"] for p in free) > 40  # without the cap it does go there


def test_asha_never_starts_a_configuration_dearer_than_finishing_its_best_one(tmp_path):
    from kt_cluster.core.config import from_dict
    from kt_cluster.core.tuner import build_tuner

    config = from_dict({"tuner": "asha", "data": {"image_size": 128}, "results": str(tmp_path),
                        "max_trials": 30, "max_epochs": 27})
    space = build_tuner(config).oracle.hyperparameters
    for seed in range(1, 6):
        oracle = make_oracle_for(config, space, seed, tmp_path / str(seed))
        cost, ratio = oracle.sampler.cost, oracle.max_epochs / oracle.rungs[0]
        best: tuple[float, dict] | None = None
        for _ in range(30):
            trial = oracle.create_trial("w0")
            if trial.status != Status.RUNNING:
                break
            values = trial.hyperparameters.values
            fresh = "tuner/trial_id" not in values
            if fresh and best is not None:
                assert cost(values) <= cost(best[1]) * ratio * (1 + 1e-9), (values, best)
            # Bigger is better here: the model alone would climb to the space's dearest U-Nets.
            score = values["start_neurons"] * values["net_depth"] / 1000
            if fresh and (best is None or score > best[0]):
                best = (score, dict(values))
            oracle.update_trial(trial.trial_id, {"val_f1": score}, step=values["tuner/epochs"] - 1)
            trial.status = Status.COMPLETED
            oracle.end_trial(trial)
        assert oracle.exploration_cap([(best[1], best[0])]) == pytest.approx(cost(best[1]) * ratio)
