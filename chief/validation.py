"""What a client may say about the search space and a trial's hyperparameters.

A search space reaches the chief through UpdateSpace (a worker's hypermodel met hyperparameters
the space lacks) and a trial's hyperparameters come back with EndTrial. Both are checked whole,
before anything changes, in O(size of the request):
- a hyperparameter is an Int, Float, Choice, Boolean or Fixed with a printable name of at most
  `MAX_NAME` characters (letters, digits, `_ . - /`, no `..`), finite bounds within `MAX_INT` /
  `MAX_FLOAT`, min <= max, a step > 0, at most `MAX_CHOICES` distinct values of one type, and
  conditions only on parents that exist; a name may not be declared again differently;
- the space holds at most `MAX_HYPERPARAMETERS`;
- a trial's hyperparameters are the ones the chief handed out: EndTrial may not change a value or a
  definition; it may add hyperparameters the worker's build met (well-formed, at their default
  values, as keras-tuner's HyperParameters gives them) to that trial, never to the search space.
`Invalid` says what is wrong; the service answers INVALID_ARGUMENT with it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

from keras_tuner.engine import hyperparameters as hp_module

from kt_cluster.chief.errors import Invalid

MAX_NAME = 64
MAX_HYPERPARAMETERS = 256
MAX_CHOICES = 1024
MAX_TEXT = 256  # characters of a Choice's or Fixed's string value
MAX_INT = 2**31 - 1
MAX_FLOAT = 3.4028234663852886e38  # float32's largest: what the wire's float metrics can carry
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")
KINDS = {"Int", "Float", "Choice", "Boolean", "Fixed"}
SAMPLINGS = {"linear", "log", "reverse_log"}


def signature(hp) -> tuple:
    """What defines a hyperparameter, whatever its proto round trip spelled out."""
    config = {k: v for k, v in hp.get_config().items() if k != "default"}
    return type(hp).__name__, repr(config), repr(hp.default)


def _finite(value: Any, what: str, limit: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) > limit:
        raise Invalid(f"{what} must be a finite number within +-{limit:g}, got {value!r:.40}")


def _value(value: Any, what: str) -> type:
    if isinstance(value, bool):
        return bool
    if isinstance(value, (int, float)):
        _finite(value, what, MAX_INT if isinstance(value, int) else MAX_FLOAT)
        return float if isinstance(value, float) else int
    if isinstance(value, str):
        if len(value) > MAX_TEXT or not value.isprintable():
            raise Invalid(f"{what} must be printable text of at most {MAX_TEXT} characters")
        return str
    raise Invalid(f"{what} must be a number, text or a boolean, got {type(value).__name__}")


def check_definition(hp, known: Iterable[str]) -> None:
    """One hyperparameter's definition; `known`: the names its conditions may refer to."""
    kind, name = type(hp).__name__, hp.name
    if kind not in KINDS:
        raise Invalid(f"hyperparameter {name!r:.80}: unknown kind {kind}")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not NAME.fullmatch(name) or ".." in name:
        raise Invalid(f"hyperparameter name {name!r:.80}: must be 1 to {MAX_NAME} of letters, digits, "
                      "'_', '.', '-', '/' (no '..'), starting with a letter or '_'")
    what = f"hyperparameter {name}"
    if kind in ("Int", "Float"):
        limit = MAX_INT if kind == "Int" else MAX_FLOAT
        _finite(hp.min_value, f"{what}: min_value", limit)
        _finite(hp.max_value, f"{what}: max_value", limit)
        if hp.min_value > hp.max_value:
            raise Invalid(f"{what}: min_value {hp.min_value} is above max_value {hp.max_value}")
        if hp.step is not None:
            _finite(hp.step, f"{what}: step", limit)
            if hp.step <= 0:
                raise Invalid(f"{what}: step must be > 0, got {hp.step}")
        if hp.sampling not in SAMPLINGS:
            raise Invalid(f"{what}: sampling must be one of {sorted(SAMPLINGS)}")
        if hp.sampling != "linear" and hp.min_value <= 0:
            raise Invalid(f"{what}: {hp.sampling} sampling needs min_value > 0")
    elif kind == "Choice":
        values = list(hp.values)
        if not 0 < len(values) <= MAX_CHOICES:
            raise Invalid(f"{what}: needs 1 to {MAX_CHOICES} values, got {len(values)}")
        types = {_value(v, f"{what}: a value") for v in values}
        if len(types) > 1 and types != {int, float}:
            raise Invalid(f"{what}: values of mixed types ({', '.join(sorted(t.__name__ for t in types))})")
        if len(set(values)) != len(values):
            raise Invalid(f"{what}: repeated values")
    elif kind == "Fixed":
        _value(hp.value, f"{what}: value")
    known = set(known)
    for condition in hp.conditions:
        if type(condition).__name__ != "Parent":
            raise Invalid(f"{what}: unknown kind of condition {type(condition).__name__}")
        if condition.name not in known:
            raise Invalid(f"{what}: condition on {condition.name!r:.80}, which the space does not hold")
        if not condition.values:
            raise Invalid(f"{what}: condition on {condition.name} without values")
        for value in condition.values:
            _value(value, f"{what}: a condition's value")


def _conditions_key(hp) -> str:
    return repr([c.get_config() for c in hp.conditions])


def new_entries(space, entries: list) -> list:
    """The hyperparameters among `entries` that `space` lacks, each checked; `Invalid` for a malformed
    one, a name declared again differently, or a space grown past `MAX_HYPERPARAMETERS`."""
    declared: dict[tuple[str, str], tuple] = {(hp.name, _conditions_key(hp)): signature(hp) for hp in space.space}
    kinds = {hp.name: type(hp).__name__ for hp in space.space}
    if len(entries) > MAX_HYPERPARAMETERS:
        raise Invalid(f"{len(entries)} hyperparameters: at most {MAX_HYPERPARAMETERS}")
    new = []
    for hp in entries:
        key = (hp.name, _conditions_key(hp))
        if key in declared:  # what the space holds is the chief's own: only its twin may come back
            if declared[key] != signature(hp):
                raise Invalid(f"hyperparameter {hp.name}: declared again differently")
            continue
        check_definition(hp, kinds)
        if kinds.get(hp.name, type(hp).__name__) != type(hp).__name__:
            raise Invalid(f"hyperparameter {hp.name}: declared again as a {type(hp).__name__}, "
                          f"it is a {kinds[hp.name]}")
        declared[key], kinds[hp.name] = signature(hp), type(hp).__name__
        new.append(hp)
    if len(space.space) + len(new) > MAX_HYPERPARAMETERS:
        raise Invalid(f"the space would hold {len(space.space) + len(new)} hyperparameters: at most "
                      f"{MAX_HYPERPARAMETERS}")
    return new


def trial_hyperparameters(handed, sent):
    """The hyperparameters an ended trial keeps: `handed` (what the chief gave it) when `sent`
    says the same, plus the well-formed entries `sent` adds at their defaults; `Invalid` when
    `sent` changes or drops anything handed out."""
    if sent is handed:
        return handed
    handed_signatures = {hp.name: signature(hp) for hp in handed.space}
    added = []
    for hp in sent.space:
        if hp.name in handed_signatures:
            if signature(hp) != handed_signatures[hp.name]:
                raise Invalid(f"hyperparameter {hp.name}: its definition is not the one the chief handed out")
        else:
            added.append(hp)
    missing = object()
    for name, value in handed.values.items():
        got = sent.values.get(name, missing)
        if got is missing:
            raise Invalid(f"hyperparameter {name}: missing, the chief handed out {value!r:.40}")
        if got != value or type(got) is not type(value) and not {type(got), type(value)} <= {int, float}:
            raise Invalid(f"hyperparameter {name}: {got!r:.40} is not the value the chief handed out ({value!r:.40})")
    added_names = {hp.name for hp in added}
    for name in sent.values:
        if name not in handed.values and name not in added_names:
            raise Invalid(f"hyperparameter {name!r:.80}: a value without a definition")
    if not added:
        return handed
    new = new_entries(handed, added)
    for hp in new:
        if hp.name in sent.values and sent.values[hp.name] != hp.default:
            raise Invalid(f"hyperparameter {hp.name}: an added hyperparameter keeps its default "
                          f"({hp.default!r:.40}), got {sent.values[hp.name]!r:.40}")
    kept = handed.copy()
    kept.merge(new)
    kept.values = dict(handed.values)
    for hp in new:
        if hp.name in sent.values:
            kept.values[hp.name] = sent.values[hp.name]
    return kept
