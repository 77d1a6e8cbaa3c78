"""The search config: bad input fails before training, naming the field; overrides stack."""

import pytest

from kt_cluster.core.config import ConfigError, from_dict, load


def write(tmp_path, text):
    path = tmp_path / "search.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, field", [
    ("tuner: grid\n", "tuner"),
    ("max_trials: 0\n", "max_trials"),
    ("max_trials: three\n", "max_trials"),
    ("direction: up\n", "direction"),
    ("batch_size: true\n", "batch_size"),
    ("data: {image_size: 4}\n", "data.image_size"),
    ("data: {channels: 2}\n", "data.channels"),
    ("data: {classes: [a, a]}\n", "data.classes"),
    ("space: {net_depth: {min: 4, max: 2}}\n", "space.net_depth.max"),
    ("space: {activation: [swish]}\n", "space.activation"),
    ("space: {start_neurons: {min: 16, max: 32, step: 0}}\n", "space.start_neurons.step"),
    ("hypermodel: nocolon\n", "hypermodel"),
    ("lease_seconds: -1\n", "lease_seconds"),
    ("epochz: 3\n", "epochz"),
    ("data: {pathh: /x}\n", "data.pathh"),
])
def test_invalid_config_names_the_field(tmp_path, text, field):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text), env={})
    assert str(err.value).startswith(field + ":")


def test_missing_config_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load(tmp_path / "nope.yaml", env={})


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(write(tmp_path, "- a\n- b\n"), env={})


def test_environment_overrides_file_and_flags_override_environment(tmp_path):
    path = write(tmp_path, "max_trials: 5\nepochs: 3\ndata: {image_size: 64}\n")
    config = load(path, env={"KTC_MAX_TRIALS": "7", "KTC_IMAGE_SIZE": "48"}, overrides={"max_trials": 9})
    assert (config.max_trials, config.epochs, config.data.image_size) == (9, 3, 48)


def test_bad_environment_value_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="^max_trials:"):
        load(None, env={"KTC_MAX_TRIALS": "many"})


def test_defaults_follow_the_reference_article():
    config = load(None, env={})
    assert (config.tuner, config.objective, config.direction) == ("asha", "val_f1", "max")
    assert (config.space.start_neurons.min, config.space.start_neurons.max, config.space.start_neurons.step) == (16, 128, 16)
    assert (config.space.net_depth.min, config.space.net_depth.max) == (2, 6)
    assert config.space.activation == ["mish", "elu", "lrelu"]
    assert config.learning_rate == 1e-3


def test_search_additions_default_to_asha_and_the_articles_space_with_a_spike_robust_score():
    config = load(None, env={})
    assert (config.tuner, config.score_window, config.min_epochs, config.max_trials) == ("asha", 3, None, 30)
    assert config.sampler == "model"  # asha's
    assert config.space.loss == ["weighted_bce"] and config.space.learning_rate is None
    assert config.space.bn_momentum == [0.9]
    assert config.space.pos_weight_power == [0.0, 0.5]
    assert config.lr_schedule == "cosine"


@pytest.mark.parametrize("raw, horizon", [({}, 20), ({"tuner": "hyperband", "max_epochs": 27}, 27),
                                          ({"tuner": "random", "epochs": 25}, 25), ({"tuner": "bayesian"}, 2)])
def test_the_schedules_horizon_is_the_longest_training_a_trial_can_reach(raw, horizon):
    assert load(None, overrides=raw, env={}).horizon == horizon


@pytest.mark.parametrize("raw, field", [
    ({"score_window": 0}, "score_window"),
    ({"sampler": "tpe"}, "sampler"),
    ({"min_epochs": 0}, "min_epochs"),
    ({"space": {"loss": ["dice"]}}, "space.loss"),
    ({"space": {"loss": ["bce_dice", "bce_dice"]}}, "space.loss"),
    ({"space": {"bn_momentum": [1.0]}}, "space.bn_momentum"),
    ({"space": {"bn_momentum": [0.9, 0.9]}}, "space.bn_momentum"),
    ({"space": {"bn_momentum": []}}, "space.bn_momentum"),
    ({"space": {"pos_weight_power": [1.5]}}, "space.pos_weight_power"),
    ({"space": {"pos_weight_power": [-0.5]}}, "space.pos_weight_power"),
    ({"space": {"pos_weight_power": [0.5, 0.5]}}, "space.pos_weight_power"),
    ({"space": {"pos_weight_power": []}}, "space.pos_weight_power"),
    ({"space": {"learning_rate": {"min": 0.01, "max": 0.001}}}, "space.learning_rate.max"),
    ({"space": {"learning_rate": {"min": 0, "max": 0.001}}}, "space.learning_rate.min"),
    ({"space": {"learning_rate": {"min": 1e-4, "max": 1e-2, "step": 1}}}, "space.learning_rate.step"),
    ({"lr_schedule": "step"}, "lr_schedule"),
    ({"data": {"augment": {"scale": 0.5}}}, "data.augment.scale"),
    ({"data": {"augment": {"shift": -0.1}}}, "data.augment.shift"),
    ({"data": {"augment": {"flip": True}}}, "data.augment.flip"),
])
def test_search_additions_are_validated_naming_the_field(raw, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        from_dict(raw)


def test_a_learning_rate_written_as_yaml_reads_it_is_a_number(tmp_path):
    path = write(tmp_path, "space:\n  learning_rate: {min: 1e-4, max: 1.0e-2}\n")  # 1e-4: a string to YAML 1.1
    rates = load(path, env={}).space.learning_rate
    assert (rates.min, rates.max) == (1e-4, 1e-2)


def test_augmentation_is_off_unless_a_scale_or_shift_is_set(tmp_path):
    assert not load(None, env={}).data.augment.on
    augment = load(write(tmp_path, "data:\n  augment: {shift: 5e-2}\n"), env={}).data.augment
    assert augment.on and (augment.scale, augment.shift) == (0.0, 0.05)


def test_early_stopping_defaults_off_under_asha_and_hyperband_only():
    assert not load(None, env={}).early_stopping_on
    assert not load(None, env={}, overrides={"tuner": "hyperband"}).early_stopping_on
    assert load(None, env={}, overrides={"tuner": "random"}).early_stopping_on
