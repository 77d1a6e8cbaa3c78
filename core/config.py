"""The search config: one YAML file, then environment, then flags -> one validated object.

Chief and workers read the same file, so both build the same search space. Every error names
the field it is about (`ConfigError("max_trials: must be >= 1, got 0")`) and is raised before
any training starts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

TUNERS = ("hyperband", "bayesian", "random", "asha")
ACTIVATIONS = ("mish", "elu", "lrelu", "relu")
ENV_PREFIX = "KTC_"


class ConfigError(ValueError):
    """An invalid search config; the message starts with the offending field."""


@dataclass
class IntRange:
    min: int
    max: int
    step: int = 1


@dataclass
class SpaceConfig:
    """Ranges of the default U-Net search space (the reference article's model builder)."""

    start_neurons: IntRange = field(default_factory=lambda: IntRange(16, 128, 16))
    net_depth: IntRange = field(default_factory=lambda: IntRange(2, 6, 1))
    dropout: bool = True  # searched as a Boolean when true, fixed False otherwise
    bn_after_act: bool = True
    activation: list[str] = field(default_factory=lambda: ["mish", "elu", "lrelu"])


@dataclass
class DataConfig:
    path: str = "data"
    image_size: int = 64
    channels: int = 3
    classes: list[str] = field(default_factory=lambda: ["table_number", "stamp", "signature"])
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    parallel_calls: int | None = None  # None: tf.data AUTOTUNE
    cache_mb: int = 512  # decoded val, then train examples that fit, kept in each worker's memory; 0: never


@dataclass
class SearchConfig:
    search_id: str = "ktc-search"
    tuner: str = "hyperband"
    objective: str = "val_f1"
    direction: str = "max"
    max_trials: int = 10
    max_epochs: int = 20  # hyperband, asha: epochs of the longest trial
    min_epochs: int = 1  # asha: epochs of the first rung (r); rungs at r * eta**k, eta = hyperband_factor
    epochs: int = 2  # bayesian and random: epochs of every trial
    hyperband_factor: int = 3  # also asha's reduction factor eta
    hyperband_iterations: int = 1
    max_retries_per_trial: int = 1
    max_consecutive_failed_trials: int = 3
    seed: int | None = None
    batch_size: int = 8
    learning_rate: float = 1e-3
    results: str = "results"
    hypermodel: str | None = None  # "package.module:function" taking `hp`
    lease_seconds: float = 60.0
    # Clients that never heartbeat (stock keras-tuner workers) keep a trial this long.
    stock_lease_seconds: float = 6 * 3600.0
    early_stopping: bool | None = None  # median stopping rule; None: on except under hyperband, asha
    mixed_precision: bool = False  # keras mixed_float16 policy; GPU only (ignored with a warning on CPU)
    jit_compile: bool | None = None  # XLA, passed to model.compile; None: Keras decides ("auto")
    data: DataConfig = field(default_factory=DataConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)

    @property
    def early_stopping_on(self) -> bool:
        if self.early_stopping is not None:
            return self.early_stopping
        return self.tuner not in ("hyperband", "asha")  # both stop bad trials themselves

    @property
    def results_dir(self) -> Path:
        return Path(self.results)

    @property
    def data_dir(self) -> Path:
        return Path(self.data.path)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Flat names usable in the environment (KTC_<NAME>) and as flags, mapped to a dotted config path.
OVERRIDES: dict[str, str] = {
    "tuner": "tuner",
    "max_trials": "max_trials",
    "epochs": "epochs",
    "max_epochs": "max_epochs",
    "min_epochs": "min_epochs",
    "batch_size": "batch_size",
    "data": "data.path",
    "results": "results",
    "hypermodel": "hypermodel",
    "image_size": "data.image_size",
    "seed": "seed",
    "search_id": "search_id",
    "lease_seconds": "lease_seconds",
    "early_stopping": "early_stopping",
    "mixed_precision": "mixed_precision",
    "jit_compile": "jit_compile",
}


def load(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> SearchConfig:
    """Read YAML (optional), apply `KTC_*` environment variables, then flag overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    env = os.environ if env is None else env
    for name, dotted in OVERRIDES.items():
        value = env.get(ENV_PREFIX + name.upper())
        if value not in (None, ""):
            _set_dotted(raw, dotted, yaml.safe_load(value), source=ENV_PREFIX + name.upper())
    for name, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, OVERRIDES.get(name, name), value, source=f"--{name.replace('_', '-')}")
    return from_dict(raw)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of fields, got {type(data).__name__}")
    return data


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{part}: must be a mapping (while applying {source})")
        node = child
    node[leaf] = value


def from_dict(raw: Mapping[str, Any]) -> SearchConfig:
    config = _build(SearchConfig, raw, prefix="")
    validate(config)
    return config


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown field (known: {', '.join(sorted(fields))})")
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(fields[name].type, value, f"{prefix}{name}")
    return cls(**values)


def _coerce(type_name: str, value: Any, where: str) -> Any:
    nested = {"DataConfig": DataConfig, "SpaceConfig": SpaceConfig, "IntRange": IntRange}
    if type_name in nested:
        return _build(nested[type_name], value, prefix=where + ".")
    optional = type_name.endswith("| None")
    base = type_name.replace(" | None", "")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must be set")
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be an integer, got {value!r}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        return float(value)
    if base == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: must be a string, got {value!r}")
        return str(value)
    if base == "list[str]":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: must be a non-empty list of strings, got {value!r}")
        return value
    raise AssertionError(f"unhandled config type {type_name} for {where}")


def validate(c: SearchConfig) -> None:
    def check(ok: bool, where: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{where}: {message}")

    check(c.tuner in TUNERS, "tuner", f"must be one of {', '.join(TUNERS)}, got {c.tuner!r}")
    check(c.direction in ("min", "max"), "direction", f"must be 'min' or 'max', got {c.direction!r}")
    check(bool(c.objective), "objective", "must name a metric such as val_f1")
    check(bool(c.search_id) and "/" not in c.search_id, "search_id", "must be a non-empty name without '/'")
    for name in ("max_trials", "max_epochs", "min_epochs", "epochs", "batch_size",
                 "max_consecutive_failed_trials", "hyperband_iterations"):
        check(getattr(c, name) >= 1, name, f"must be >= 1, got {getattr(c, name)}")
    check(c.hyperband_factor >= 2, "hyperband_factor", f"must be >= 2, got {c.hyperband_factor}")
    if c.tuner == "asha":
        check(c.min_epochs <= c.max_epochs, "min_epochs", f"must be <= max_epochs ({c.max_epochs}), got {c.min_epochs}")
    check(c.max_retries_per_trial >= 0, "max_retries_per_trial", "must be >= 0")
    check(c.learning_rate > 0, "learning_rate", f"must be > 0, got {c.learning_rate}")
    check(c.lease_seconds > 0, "lease_seconds", f"must be > 0, got {c.lease_seconds}")
    check(c.stock_lease_seconds > 0, "stock_lease_seconds", f"must be > 0, got {c.stock_lease_seconds}")
    if c.hypermodel is not None:
        check(":" in c.hypermodel, "hypermodel", f"must look like package.module:function, got {c.hypermodel!r}")
    d = c.data
    check(d.image_size >= 8, "data.image_size", f"must be >= 8 pixels, got {d.image_size}")
    check(d.channels in (1, 3), "data.channels", f"must be 1 or 3, got {d.channels}")
    check(len(set(d.classes)) == len(d.classes), "data.classes", "class names must be unique")
    for name in ("steps_per_epoch", "validation_steps", "parallel_calls"):
        value = getattr(d, name)
        check(value is None or value >= 1, f"data.{name}", f"must be >= 1 when set, got {value}")
    check(d.cache_mb >= 0, "data.cache_mb", f"must be >= 0 (0: never cache), got {d.cache_mb}")
    _validate_space(c.space, check)


def _validate_space(s: SpaceConfig, check) -> None:
    for name in ("start_neurons", "net_depth"):
        r: IntRange = getattr(s, name)
        where = f"space.{name}"
        check(r.min >= 1, where + ".min", f"must be >= 1, got {r.min}")
        check(r.max >= r.min, where + ".max", f"must be >= min ({r.min}), got {r.max}")
        check(r.step >= 1, where + ".step", f"must be >= 1, got {r.step}")
    check(s.net_depth.max <= 10, "space.net_depth.max", f"must be <= 10, got {s.net_depth.max}")
    bad = [a for a in s.activation if a not in ACTIVATIONS]
    check(not bad, "space.activation", f"unknown activation {bad[:1]}; choose from {', '.join(ACTIVATIONS)}")
