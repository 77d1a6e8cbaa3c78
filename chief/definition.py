"""What a search is, stored when the search is created and compared with the config at each start.

A search's trials only mean something under the definition they ran with: the objective and its
direction, the tuner and its epoch schedule, the hypermodel, the training settings that every
trial shares, the data's shape and the search space. The chief journals that definition (a
"definition" record, `kt_cluster.chief.state`) when it creates a search, and at every start
compares the configured one with it (`reconcile`):

- a change of the budget (`BUDGET`) or of a setting (`SETTINGS`: leases, early stopping, retries,
  precision, data loading, ...) is compatible: it is applied and logged;
- a change of any other field of the definition is incompatible: `IncompatibleChange`, one line
  naming the field, the stored value and the new one, and how to start a new search instead;
- the search space may change where every existing trial's values stay valid: a range widened
  (or narrowed without excluding a value a trial used), a choice added, a sampling changed. A
  hyperparameter removed, added, or of another type, a changed condition, or a range or choice
  that excludes a value some trial used, is incompatible. A search that lets workers add
  hyperparameters (`allow_new_hyperparameters`) keeps the stored ones its config no longer
  declares (a hypermodel's build may declare them only on some branches) and takes new ones.

A journal written before definitions were stored has none: the first start takes the configured
definition as the search's own, and says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from keras_tuner.engine import hyperparameters as hp_module

from kt_cluster.core.config import SearchConfig

log = logging.getLogger("ktc.chief")

# Raising these gives a search more to do; `kt_cluster.chief.main` reopens a finished one.
BUDGET = ("max_trials", "max_worker_hours", "hyperband_iterations", "max_consecutive_failed_trials")
# Settings a change of which is applied and logged: they change how trials are run, not what they mean.
SETTINGS = ("lease_seconds", "stock_lease_seconds", "early_stopping", "max_retries_per_trial", "mixed_precision",
            "jit_compile", "seed", "allow_new_hyperparameters", "metric_directions", "first_trials", "data.path",
            "data.steps_per_epoch", "data.validation_steps", "data.parallel_calls", "data.cache_mb")


# What a stored search that lacks a field of its meaning did: fields added by a later release.
IMPLIED_BEFORE = {"lr_schedule": "constant", "data.augment": {"scale": 0.0, "shift": 0.0}}


class IncompatibleChange(Exception):
    """The configured search is not the stored one: the chief refuses to start, changing nothing."""

    def __init__(self, search_id: str, what: str, stored: Any, new: Any, why: str = ""):
        self.search_id, self.what, self.stored, self.new = search_id, what, stored, new
        back = (f"put {what} back as it was ({_show(stored)})" if what.startswith("hyperparameter ")
                else f"set {what} back to {_show(stored)}")
        super().__init__(
            f"search {search_id!r}: {what} is {_show(new)} in the config but {_show(stored)} in the stored search"
            f"{f' ({why})' if why else ''}; nothing was changed: {back} to go on with this search, or give the new "
            f"one a search_id of its own (search_id, --search-id, KTC_SEARCH_ID)")


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def of(config: SearchConfig, space: list[dict[str, Any]]) -> dict[str, Any]:
    """The definition of the configured search; `space` is the search space's `get_config()["space"]`."""
    meaning: dict[str, Any] = {
        "tuner": config.tuner, "objective": config.objective, "direction": config.direction,
        "hypermodel": config.hypermodel, "score_window": config.score_window, "batch_size": config.batch_size,
        "lr_schedule": config.lr_schedule,
        "data.image_size": config.data.image_size, "data.channels": config.data.channels,
        "data.classes": list(config.data.classes), "data.augment": config.data.augment.model_dump(),
    }
    if config.tuner in ("bayesian", "random"):
        meaning["epochs"] = config.epochs
    else:  # hyperband, asha: the epochs of each bracket or rung
        meaning.update({"max_epochs": config.max_epochs, "hyperband_factor": config.hyperband_factor})
    if config.tuner == "asha":
        meaning["min_epochs"] = config.min_epochs
    if config.hypermodel is None and config.space.learning_rate is None:
        meaning["learning_rate"] = config.learning_rate  # the built-in U-Net trains every trial at it
    settings = {name: _field(config, name) for name in SETTINGS}
    return {"meaning": meaning, "space": space, "budget": {name: getattr(config, name) for name in BUDGET},
            "settings": settings}


def _field(config: SearchConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return dict(value) if isinstance(value, dict) else value


@dataclass
class Reconciled:
    """What a start changes: `changes` (one line each, logged), the space to adopt (None: the
    stored one stands) and the budget fields raised (name, stored, new)."""

    definition: dict[str, Any]
    changes: list[str] = field(default_factory=list)
    space: list[dict[str, Any]] | None = None
    raised: list[tuple[str, Any, Any]] = field(default_factory=list)
    first: bool = False  # no definition was stored (an older journal)


def _raised(old: Any, new: Any) -> bool:
    """Whether a budget field went up; None is no limit (`max_worker_hours`)."""
    return old is not None and (new is None or new > old)


def check_meaning(stored: dict[str, Any] | None, configured: dict[str, Any], search_id: str) -> None:
    """`IncompatibleChange` for the first field of the definition other than the space and the
    budget that the config changes. Checked before the stored state is restored: an oracle of
    another tuner cannot even take the stored one's state."""
    for name, new in configured["meaning"].items():
        # A field a later release added: what searches stored before it did, else no change.
        old = (stored or configured)["meaning"].get(name, IMPLIED_BEFORE.get(name, new))
        if old != new:
            raise IncompatibleChange(search_id, name, old, new)


Values = list[tuple[str, dict[str, Any]]]  # (trial id, its hyperparameter values) of every trial


def reconcile(stored: dict[str, Any] | None, configured: dict[str, Any], stored_space: list[dict[str, Any]],
              trials: Values, search_id: str, allow_new: bool) -> Reconciled:
    """Compare the configured definition with the stored one; `IncompatibleChange` for the first
    field whose change would change what the stored trials (their hyperparameter values) mean.
    `stored_space` is the space the journal holds (which workers may have added to)."""
    if stored is None:
        stored = {"meaning": configured["meaning"], "space": stored_space, "budget": configured["budget"]}
        result = Reconciled(configured, first=True)
    else:
        result = Reconciled(configured)
    check_meaning(stored, configured, search_id)
    space, changes = merged_space(stored_space, configured["space"], trials, search_id, allow_new)
    result.changes += changes
    if changes:
        result.space = space
    result.definition = dict(configured, space=space)
    for name, new in configured["budget"].items():
        old = stored["budget"].get(name, new)
        if old != new:
            result.changes.append(f"{name}: {old} -> {new}")
            if _raised(old, new):
                result.raised.append((name, old, new))
    for name, new in configured["settings"].items():
        old = stored.get("settings", configured["settings"]).get(name, new)
        if old != new:
            # The oracle keeps drawing from its stored seed state: a new seed seeds the data shuffle only.
            note = " (the tuner goes on from its stored seed state)" if name == "seed" else ""
            result.changes.append(f"{name}: {_show(old)} -> {_show(new)}{note}")
    return result


def merged_space(stored: list[dict[str, Any]], configured: list[dict[str, Any]], trials: Values,
                 search_id: str, allow_new: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """The space to search from now on (the configured one, plus the stored hyperparameters it no
    longer declares when workers may add them), and one line per compatible change."""
    old = {entry["config"]["name"]: entry for entry in stored}
    new = {entry["config"]["name"]: entry for entry in configured}
    changes: list[str] = []
    for name, entry in old.items():
        if name not in new:
            if not allow_new:
                raise IncompatibleChange(search_id, f"hyperparameter {name}", _describe(entry), "absent",
                                         "removed from the search space")
            log.info("hyperparameter %s: not declared by the config, kept as stored", name)
    for name, entry in new.items():
        if name not in old:
            if not allow_new:
                raise IncompatibleChange(search_id, f"hyperparameter {name}", "absent", _describe(entry),
                                         "the stored trials have no value for it")
            changes.append(f"hyperparameter {name}: added ({_describe(entry)})")
            continue
        before = old[name]
        if before == entry:
            continue
        if before["class_name"] != entry["class_name"]:
            raise IncompatibleChange(search_id, f"hyperparameter {name}", _describe(before), _describe(entry),
                                     "its type changed")
        if before["config"].get("conditions") != entry["config"].get("conditions"):
            raise IncompatibleChange(search_id, f"hyperparameter {name}", _describe(before), _describe(entry),
                                     "its conditions changed")
        hp = hp_module.deserialize(entry)
        for trial_id, values in trials:
            if name in values and not _admits(hp, values[name]):
                raise IncompatibleChange(search_id, f"hyperparameter {name}", _describe(before), _describe(entry),
                                         f"it excludes the value {values[name]!r} of trial {trial_id}")
        changes.append(f"hyperparameter {name}: {_describe(before)} -> {_describe(entry)}")
    space = list(configured) + [entry for name, entry in old.items() if name not in new]
    return space, changes


def _admits(hp, value: Any) -> bool:
    """Whether `value` is one the hyperparameter `hp` can take (what an existing trial used)."""
    if isinstance(hp, hp_module.Fixed):
        return value == hp.value
    if isinstance(hp, hp_module.Boolean):
        return isinstance(value, bool)
    if isinstance(hp, hp_module.Choice):
        return value in hp.values
    if isinstance(hp, (hp_module.Int, hp_module.Float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        tolerance = 1e-9 * max(1.0, abs(hp.max_value))
        if not hp.min_value - tolerance <= value <= hp.max_value + tolerance:
            return False
        if hp.step and hp.sampling == "linear":  # a value off the new grid could never be drawn again
            offset = (value - hp.min_value) / hp.step
            return math.isclose(offset, round(offset), abs_tol=1e-6)
        return True
    return True  # a kind of hyperparameter this check does not know: its type and name matched


def _describe(entry: dict[str, Any]) -> str:
    """A hyperparameter's definition in a few words: `Int 16..128 step 16`, `Choice [a, b]`."""
    kind, config = entry["class_name"], entry["config"]
    if kind in ("Int", "Float"):
        step = f" step {config['step']}" if config.get("step") else ""
        sampling = f" {config['sampling']}" if config.get("sampling") not in (None, "linear") else ""
        return f"{kind} {config['min_value']}..{config['max_value']}{step}{sampling}"
    if kind == "Choice":
        return f"Choice [{', '.join(map(str, config['values']))}]"
    if kind == "Fixed":
        return f"Fixed {config['value']!r}"
    return kind
