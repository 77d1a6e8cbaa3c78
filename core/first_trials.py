"""Configurations a search trains first, before its tuner draws any (the config's `first_trials`).

A search that starts from a configuration known to train well measures its own draws against it,
instead of hoping to draw it: Ray Tune's `points_to_evaluate` and Optuna's `enqueue_trial` do the
same, and keras-tuner's tuners train the space's defaults first when the space is declared by the
first build. Each first trial is an ordinary trial of its tuner (under asha a first-rung trial,
promoted by rank like any other).

Left unset with the built-in U-Net, the search starts from `REFERENCE_UNET`: the article's U-Net
builder with the settings that train well on document pages (16 filters, depth 4, ELU, batch
normalisation before the activation, no dropout; the space's defaults for the rest). A space
that cannot hold it (a narrowed range, another activation list, an image too small for depth 4)
starts without it. Given explicitly, every configuration must lie inside the search space: a name
it does not declare or a value outside its range is a config error naming it.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable

from keras_tuner.engine import hyperparameters as hp_module

from kt_cluster.core.config import ConfigError, SearchConfig

log = logging.getLogger("ktc.chief")

REFERENCE_UNET: dict[str, Any] = {"start_neurons": 16, "net_depth": 4, "activation": "elu",
                                  "dropout": False, "bn_after_act": False}


def first_trials(config: SearchConfig, space: Iterable[hp_module.HyperParameter]) -> list[dict[str, Any]]:
    """The configurations to train first, each complete (the space's defaults for the names it
    leaves out); `ConfigError` naming the first configured value the space does not hold."""
    declared = {hp.name: hp for hp in space}
    if config.first_trials is not None:
        return [_complete(_checked(index, given, declared), declared)
                for index, given in enumerate(config.first_trials)]
    if config.hypermodel is not None:
        return []
    # Names the space does not declare are fixed there (dropout off, batch norm before).
    reference = {name: value for name, value in REFERENCE_UNET.items() if name in declared}
    outside = next((name for name, value in reference.items() if not _inside(declared[name], value)), None)
    if outside is not None:
        log.info("first trials: the reference U-Net's %s=%s is outside the search space: not trained first",
                 outside, reference[outside])
        return []
    return [_complete(reference, declared)]


def _checked(index: int, given: dict[str, Any], declared: dict[str, hp_module.HyperParameter]) -> dict[str, Any]:
    checked = {}
    for name, value in given.items():
        if name not in declared:
            raise ConfigError(f"first_trials.{index}: {name!r} is not a hyperparameter of the search space "
                              f"(it has {', '.join(sorted(declared))})")
        try:
            checked[name] = _declared_value(declared[name], value)
        except ValueError as exc:
            raise ConfigError(f"first_trials.{index}.{name}: {exc}, got {value!r}") from None
    return checked


def _complete(given: dict[str, Any], declared: dict[str, hp_module.HyperParameter]) -> dict[str, Any]:
    return {name: hp.default for name, hp in declared.items()} | given


def _inside(hp: hp_module.HyperParameter, value: Any) -> bool:
    try:
        _declared_value(hp, value)
    except ValueError:
        return False
    return True


def _same(a: Any, b: Any) -> bool:
    """Equal, and not only as 1 == True is."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _declared_value(hp: hp_module.HyperParameter, value: Any) -> Any:
    """`value` as `hp` holds it (16 for 16.0, 0.0 for 0); ValueError saying what `hp` takes when
    it does not hold it."""
    if isinstance(hp, hp_module.Boolean):
        if isinstance(value, bool):
            return value
        raise ValueError("must be true or false")
    if isinstance(hp, hp_module.Fixed):
        if _same(value, hp.value):
            return hp.value
        raise ValueError(f"is fixed at {hp.value!r}")
    if isinstance(hp, hp_module.Choice):
        found = [v for v in hp.values if _same(value, v)]
        if found:
            return found[0]
        raise ValueError(f"must be one of {', '.join(map(repr, hp.values))}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(hp, hp_module.Int):
        step = hp.step or 1
        if number and value == int(value) and hp.min_value <= value <= hp.max_value \
                and (int(value) - hp.min_value) % step == 0:
            return int(value)
        raise ValueError(f"must be an integer from {hp.min_value} to {hp.max_value} by {step}")
    if isinstance(hp, hp_module.Float):
        if number and hp.min_value <= value <= hp.max_value:
            return float(value)
        raise ValueError(f"must be a number from {hp.min_value} to {hp.max_value}")
    return value
