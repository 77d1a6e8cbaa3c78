"""The search config: one YAML file, then `KTC_*` environment variables, then flags -> one
validated object.

Chief and workers read the same file, so both build the same search space. The pydantic models
below are the one description of the config: their types, bounds and descriptions validate the
file, generate the command line's search flags (`kt_cluster.cli`) and the Helm chart's `search`
schema (`python -m tests.chart_support`). Every error is one line that names the field, the rule
and the value (`ConfigError("max_trials: must be >= 1, got 0")`), raised before any training.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, get_args

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt,
                      ValidationError, create_model, model_validator)
from pydantic.fields import FieldInfo

Tuner = Literal["hyperband", "bayesian", "random", "asha"]
Activation = Literal["mish", "elu", "lrelu", "relu"]
Loss = Literal["weighted_bce", "bce_dice"]
Sampler = Literal["model", "random"]
LrSchedule = Literal["cosine", "constant"]
TUNERS: tuple[str, ...] = get_args(Tuner)
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
LOSSES: tuple[str, ...] = get_args(Loss)
ENV_PREFIX = "KTC_"


class ConfigError(ValueError):
    """An invalid search config; the message starts with the offending field."""


@dataclass(frozen=True)
class Unit:
    """Field metadata: the unit of a numeric field, said in its errors (`>= 8 pixels`)."""

    name: str


@dataclass(frozen=True)
class Rule:
    """Field metadata: how to say what a field's pattern or length constraint asks for."""

    text: str


class FieldRule(ValueError):
    """A check across fields, raised by a model validator for one of the model's fields."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _number_as_text(value: Any) -> Any:
    """Names and paths written as YAML numbers (`search_id: 2024`) are names all the same."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _no_repeats(noun: str) -> Callable[[list], list]:
    """A validator refusing a list that names one value twice ("must not name a <noun> twice")."""

    def check(values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError(f"must not name a {noun} twice, got {values}")
        return values

    return check


def _number_text(value: Any) -> Any:
    """YAML 1.1 reads `1e-4` (no dot) as a string: a number all the same."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Text = Annotated[str, BeforeValidator(_number_as_text)]


class _Model(BaseModel):
    # strict: `batch_size: true` or `max_trials: "5"` is an error, not a guess.
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)


class IntRange(_Model):
    """An integer hyperparameter searched from `min` to `max` by `step`."""

    min: int = Field(ge=1, description="Smallest value searched.")
    max: int = Field(ge=1, description="Largest value searched (>= min).")
    step: int = Field(1, ge=1, description="Step between searched values.")

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.max < self.min:
            raise FieldRule("max", f"must be >= min ({self.min}), got {self.max}")
        return self


class DepthRange(IntRange):
    """U-Net depths: an `IntRange` of at most 10 levels."""

    max: int = Field(ge=1, le=10, description="Largest depth searched (>= min, <= 10).")


class FloatRange(_Model):
    """A positive number searched log-uniformly from `min` to `max`."""

    min: Annotated[float, BeforeValidator(_number_text)] = Field(gt=0, description="Smallest value searched.")
    max: Annotated[float, BeforeValidator(_number_text)] = Field(gt=0, description="Largest value searched "
                                                                                  "(>= min; = min: fixed).")

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if self.max < self.min:
            raise FieldRule("max", f"must be >= min ({self.min}), got {self.max}")
        return self


def _hyperparameter_value(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return _number_text(value)
    raise ValueError(f"must be a boolean, a number or a name, got {value!r}")


# A hyperparameter's value in a config (StrictBool first: true is not 1; YAML 1.1's `1e-3` is a number).
HyperparameterValue = Annotated[StrictBool | StrictInt | float | str, BeforeValidator(_hyperparameter_value)]


class SpaceConfig(_Model):
    """Ranges of the default U-Net search space (the reference article's model builder)."""

    start_neurons: IntRange = Field(default_factory=lambda: IntRange(min=16, max=128, step=16),
                                    description="U-Net filters of the first level: searched from min to max by step.")
    net_depth: DepthRange = Field(default_factory=lambda: DepthRange(min=2, max=6, step=1),
                                  description="U-Net depth (convolution cascades, the middle one included): searched "
                                              "from min to max by step; the max is clamped to what the image size allows.")
    dropout: bool = Field(True, description="Search dropout on and off (true) or keep it off (false).")
    bn_after_act: bool = Field(True, description="Search batch normalisation after the activation as well as "
                                                 "before it (true) or keep it before (false).")
    activation: list[Activation] = Field(default_factory=lambda: ["mish", "elu", "lrelu"], min_length=1,
                                         description="Activations searched, an unordered choice.")
    bn_momentum: Annotated[list[Annotated[float, BeforeValidator(_number_text), Field(gt=0, lt=1)]],
                           AfterValidator(_no_repeats("momentum"))] = Field(
        default_factory=lambda: [0.9], min_length=1, json_schema_extra={"uniqueItems": True},
        description="Batch normalisation momenta searched, an unordered choice (one: fixed). 0.9 averages "
                    "the batch statistics used at validation over about 10 steps; Keras' default, 0.99, "
                    "over about 100, which with a few dozen steps per epoch lag the weights for several "
                    "epochs (add it to search it).")
    loss: Annotated[list[Loss], AfterValidator(_no_repeats("loss"))] = Field(
        default_factory=lambda: ["weighted_bce"], min_length=1, json_schema_extra={"uniqueItems": True},
        description="Losses searched, an unordered choice (one: fixed): weighted_bce (the article's binary "
                    "cross-entropy, positive pixels up-weighted per class) and bce_dice (unweighted binary "
                    "cross-entropy plus soft Dice).")
    pos_weight_power: Annotated[list[Annotated[float, BeforeValidator(_number_text), Field(ge=0, le=1)]],
                                AfterValidator(_no_repeats("power"))] = Field(
        default_factory=lambda: [0.0, 0.5], min_length=1, json_schema_extra={"uniqueItems": True},
        description="Powers of weighted_bce's positive-pixel weights searched, an ordered choice (one: fixed): "
                    "each class's weight is ((1 - p) / p) ** power for its share p of the training pixels, capped "
                    "at 100; 0 is plain binary cross-entropy, 1 the article's inverse-frequency weighting (add it "
                    "to search it). Strong weights trade precision for recall, which costs F1.")
    learning_rate: FloatRange | None = Field(None, description="Adam's learning rate searched log-uniformly from "
                                                               "min to max; null: fixed at the search's "
                                                               "learning_rate.")


class AugmentConfig(_Model):
    """Light geometric augmentation of training pages: each page zoomed and shifted a little."""

    scale: Annotated[float, BeforeValidator(_number_text)] = Field(
        0.0, ge=0, lt=0.5, description="Each training example is seen through a square window whose side is drawn "
                                       "uniformly from 1 - scale to 1 + scale of the image's (a zoom in or out), its "
                                       "masks through the same window; 0: never zoomed. Validation is never "
                                       "augmented.")
    shift: Annotated[float, BeforeValidator(_number_text)] = Field(
        0.0, ge=0, lt=0.5, description="The window's centre moves by up to this fraction of the image's side along "
                                       "each axis, drawn uniformly; 0: never shifted. Pixels the window takes from "
                                       "beyond an edge repeat that edge.")

    @property
    def on(self) -> bool:
        return self.scale > 0 or self.shift > 0


class DataConfig(_Model):
    """Where the dataset is and how the workers read it."""

    path: Text = Field("data", description="Dataset directory (layout in docs/dataset.md).")
    synthetic: bool = Field(False, description="`ktc local` fills a missing or empty data.path with synthetic "
                                               "scans (to try kt-cluster without data); never done otherwise.")
    image_size: Annotated[int, Unit("pixels")] = Field(
        64, ge=8, description="Side of the square images the model trains on, in pixels.")
    channels: Literal[1, 3] = Field(3, description="Image channels: 1 (grayscale) or 3 (RGB).")
    classes: Annotated[list[str], AfterValidator(_no_repeats("class"))] = Field(
        default_factory=lambda: ["table_number", "stamp", "signature"], min_length=1,
        json_schema_extra={"uniqueItems": True},
        description="Mask classes, in the order of the dataset's classes.txt.")
    steps_per_epoch: int | None = Field(None, ge=1, description="Training batches per epoch; null: the whole "
                                                                "training set.")
    validation_steps: int | None = Field(None, ge=1, description="Validation batches per epoch; null: the whole "
                                                                 "validation set.")
    parallel_calls: int | None = Field(None, ge=1, description="tf.data parallel calls; null: AUTOTUNE.")
    cache_mb: Annotated[int, Unit("MiB (0: never cache)")] = Field(
        512, ge=0, description="Decoded examples (float32, after resizing) kept in each worker process's memory "
                               "from its first pass on, in MiB: the validation split if it fits, then the train split if "
                               "it fits too; 0 always streams from disk.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig,
                                   description="Augmentation of the training examples (off by default).")


class SearchConfig(_Model):
    """One search: the tuner and its budget, training, leases, the dataset and the space."""

    search_id: Annotated[Text, Rule("must be a non-empty name without '/'")] = Field(
        "ktc-search", pattern=r"^[^/]+$",
        description="Name of the search: its folder under `results`, its Neptune run id.")
    tuner: Tuner = Field("asha", description="asha (asynchronous successive halving), hyperband, bayesian "
                                             "(Gaussian process) or random.")
    objective: Annotated[Text, Rule("must name a metric such as val_f1")] = Field(
        "val_f1", min_length=1, description="Metric the search optimises (a Keras metric such as val_f1 or val_loss).")
    direction: Literal["min", "max"] = Field("max", description="Whether the objective is minimised or maximised.")
    max_trials: int = Field(30, ge=1, description="Trial budget (also caps Hyperband; 30 at the default "
                                                  "max_epochs and hyperband_factor: asha rungs of 3, 9 and 20 "
                                                  "epochs, or one whole Hyperband iteration).")
    max_worker_hours: Annotated[float, Unit("hours")] | None = Field(
        None, gt=0, description="Compute budget: hours of worker time spent training trials, summed over the "
                                "workers (GPU hours, with one GPU per worker). No trial starts once it is spent; "
                                "asha keeps the end of it for carrying its best configuration to max_epochs. null: "
                                "no limit but max_trials.")
    max_epochs: int = Field(20, ge=1, description="Hyperband, asha: epochs of the longest trial.")
    min_epochs: int | None = Field(None, ge=1, description="Asha: epochs of the first rung (rungs at min_epochs * "
                                                           "hyperband_factor**k, up to max_epochs); null: derived "
                                                           "from the budget, max_epochs / hyperband_factor**k for "
                                                           "the most promotions k, at most 2, that max_trials "
                                                           "pays for; with max_worker_hours, at least "
                                                           "max_epochs / 5.")
    epochs: int = Field(2, ge=1, description="Bayesian, random: epochs of every trial.")
    hyperband_factor: int = Field(3, ge=2, description="Hyperband's reduction factor (also asha's eta).")
    hyperband_iterations: int = Field(1, ge=1, description="Hyperband's repetitions.")
    sampler: Sampler = Field("model", description="Asha: how new configurations are drawn: model (a Parzen-"
                                                  "estimator model of the first rung's scores, per unit of "
                                                  "cost, BOHB-style; until 4 trials have a score, one of 32 "
                                                  "random draws costing at most 3 times the cheapest of them) "
                                                  "or random.")
    first_trials: list[dict[str, HyperparameterValue]] | None = Field(
        None, description="Configurations trained first, before the tuner draws any (as Ray Tune's "
                          "points_to_evaluate): each maps hyperparameter names to values inside the search space, "
                          "the space's defaults filling the names it leaves out; one tried before is not trained "
                          "again. null: with the built-in U-Net, the reference U-Net (start_neurons 16, net_depth "
                          "4, elu, batch normalisation before the activation, no dropout) when the space holds it; "
                          "none with a hypermodel of yours. []: none.")
    max_retries_per_trial: int = Field(1, ge=0, description="Re-runs of a trial that ended INVALID.")
    max_consecutive_failed_trials: int = Field(3, ge=1, description="This many FAILED trials in a row end the "
                                                                    "search.")
    seed: int | None = Field(None, description="Seeds the oracle and the data shuffle; null: random.")
    batch_size: int = Field(8, ge=1, description="Training batch size.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam's learning rate (unless space.learning_rate "
                                                         "searches it).")
    lr_schedule: LrSchedule = Field("cosine", description="cosine: the learning rate decays along half a cosine, "
                                                          "per epoch, to 5% of itself at the longest training a "
                                                          "trial can reach (max_epochs under asha and hyperband, "
                                                          "epochs otherwise), promoted and resumed trials "
                                                          "continuing their configuration's curve; constant: "
                                                          "Adam at learning_rate throughout. Leaves alone a "
                                                          "hypermodel of yours that compiles its own schedule.")
    score_window: int = Field(3, ge=1, description="A trial's score: the best mean of this many consecutive "
                                                   "epochs of the objective (a trial with fewer: the mean of all), "
                                                   "for ranking, promotions and the best checkpoint alike; 1: the "
                                                   "best epoch, keras-tuner's rule.")
    results: Text = Field("results", description="Results directory, shared by the chief and the workers.")
    hypermodel: Annotated[str, Field(pattern=r"^[^:\s]+:[^:\s]+$"), BeforeValidator(_number_as_text),
                          Rule("must look like package.module:function")] | None = Field(
        None, description="Model builder `package.module:function` taking `hp`; null: the built-in U-Net.")
    allow_new_hyperparameters: bool | None = Field(
        None, description="Whether workers may add hyperparameters to the search space (UpdateSpace); null: "
                          "yes with a hypermodel of yours (its build may declare what the config does not), "
                          "no with the built-in U-Net (its space comes from `space`).")
    lease_seconds: Annotated[float, Unit("seconds")] = Field(
        60.0, gt=0, description="A worker silent this long loses its trial to another worker.")
    stock_lease_seconds: Annotated[float, Unit("seconds")] = Field(
        6 * 3600.0, gt=0, description="The same for stock keras-tuner workers, which never heartbeat.")
    early_stopping: bool | None = Field(None, description="Median stopping rule; null: on except under "
                                                          "hyperband and asha.")
    mixed_precision: bool = Field(False, description="Keras mixed_float16 policy (GPU only; ignored with a "
                                                     "warning on CPU).")
    jit_compile: bool | None = Field(None, description="XLA, passed to model.compile; null: Keras decides.")
    metric_directions: dict[str, Literal["min", "max"]] = Field(
        default_factory=dict, description="Whether lower (min) or higher (max) is better for metrics of your "
                                          "own hypermodel that kt-cluster does not know (its own: f1, precision, "
                                          "recall, iou: max; losses: min; Keras' metrics: inferred).")
    data: DataConfig = Field(default_factory=DataConfig, description="The dataset.")
    space: SpaceConfig = Field(default_factory=SpaceConfig, description="The U-Net search space.")

    @model_validator(mode="after")
    def _rungs(self) -> "SearchConfig":
        if self.tuner == "asha" and self.min_epochs is not None and self.min_epochs > self.max_epochs:
            raise FieldRule("min_epochs", f"must be <= max_epochs ({self.max_epochs}), got {self.min_epochs}")
        return self

    @property
    def horizon(self) -> int:
        """The most epochs any trial's configuration can train for."""
        return self.max_epochs if self.tuner in ("hyperband", "asha") else self.epochs

    @property
    def early_stopping_on(self) -> bool:
        if self.early_stopping is not None:
            return self.early_stopping
        return self.tuner not in ("hyperband", "asha")  # both stop bad trials themselves

    @property
    def new_hyperparameters_allowed(self) -> bool:
        if self.allow_new_hyperparameters is not None:
            return self.allow_new_hyperparameters
        return self.hypermodel is not None

    @property
    def data_dir(self) -> Path:
        return Path(self.data.path)

    @property
    def search_dir(self) -> Path:
        """`<results>/<search_id>`: the trials, the chief's state and the search's results files."""
        return Path(self.results) / self.search_id


# Flat names usable in the environment (KTC_<NAME>) and as flags (--name), mapped to a dotted
# config path; each flag's type, choices and help come from its field.
OVERRIDES: dict[str, str] = {
    "tuner": "tuner",
    "max_trials": "max_trials",
    "epochs": "epochs",
    "max_epochs": "max_epochs",
    "max_worker_hours": "max_worker_hours",
    "min_epochs": "min_epochs",
    "batch_size": "batch_size",
    "data": "data.path",
    "synthetic_data": "data.synthetic",
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


def field_at(dotted: str) -> FieldInfo:
    """The pydantic field at a dotted config path, such as `data.image_size`."""
    model: type[BaseModel] = SearchConfig
    *parents, leaf = dotted.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    return model.model_fields[leaf]


@functools.cache
def environment_overrides() -> type:
    """The settings model of the `KTC_<NAME>` variables of `OVERRIDES`, read as text: each is then
    parsed as a YAML scalar (`KTC_SEED=null`, `KTC_EARLY_STOPPING=false`) and validated with the
    file's fields. Built on first use: pydantic-settings takes a third of a second to import,
    which `--help`, `ktc status` and `ktc results` never need."""
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class EnvironmentOverrides(BaseSettings):
        model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, case_sensitive=False, env_ignore_empty=True,
                                          extra="ignore")

    return create_model("EnvironmentOverrides", __base__=EnvironmentOverrides,
                        **{name: (str | None, None) for name in OVERRIDES})


def read_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Flat name -> text of every `KTC_<NAME>` variable set in `env` (default: the process's)."""
    names = {ENV_PREFIX + name.upper() for name in OVERRIDES}
    if not any(key.upper() in names and value for key, value in (os.environ if env is None else env).items()):
        return {}  # nothing to read: spare the import of pydantic-settings
    from pydantic_settings import EnvSettingsSource

    settings = environment_overrides()
    source = EnvSettingsSource(settings)  # reads the process environment
    if env is not None:
        source.env_vars = {k.lower(): v for k, v in env.items() if v != ""}
    return {name: value for name, value in settings.model_validate(source()).model_dump().items()
            if value is not None}


def load(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
         overrides: Mapping[str, Any] | None = None) -> SearchConfig:
    """Read YAML (optional), apply `KTC_*` environment variables, then flag overrides."""
    import yaml  # here: `--help`, `ktc status` and `ktc results` never read a config

    raw: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    sources: dict[str, str] = {}
    for name, text in read_environment(env).items():
        variable = ENV_PREFIX + name.upper()
        set_dotted(raw, OVERRIDES[name], yaml.safe_load(text), source=variable)
        sources[OVERRIDES[name]] = variable
    for name, value in (overrides or {}).items():
        if value is not None:
            dotted = OVERRIDES.get(name, name)
            set_dotted(raw, dotted, value, source=f"--{name.replace('_', '-')}")
            sources[dotted] = f"--{name.replace('_', '-')}"
    return from_dict(raw, sources)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of fields, got {type(data).__name__}")
    return data


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set `raw`'s field at a dotted path (`space.net_depth.min`), making the mappings above it;
    `source` names what asked for it in the error when a field on the way is not a mapping."""
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{part}: must be a mapping, got {child!r} (while applying {source})")
        node = child
    node[leaf] = value


def from_dict(raw: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> SearchConfig:
    """Validate a config mapping; `sources` names where overridden fields came from (for errors)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: must be a mapping of fields, got {raw!r}")
    try:
        return SearchConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe(exc.errors(include_url=False)[0], sources or {})) from None


# --- one line per validation error --------------------------------------------------------

_TYPES = {"int_type": "an integer", "int_parsing": "an integer", "float_type": "a number",
          "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
          "string_type": "a string", "list_type": "a list", "model_type": "a mapping of fields",
          "dict_type": "a mapping of fields", "model_attributes_type": "a mapping of fields",
          "none_required": "null"}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
           "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}


def describe(error: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """`<field path>: <rule>, got <value>[ (from <variable or flag>)]` for a pydantic error."""
    loc = [part for part in error["loc"] if not _is_union_branch(part)]
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    item = None
    if loc and isinstance(loc[-1], int):  # an item of a list: name the list, say which item
        item = loc.pop()
    if kind == "value_error" and isinstance(ctx.get("error"), FieldRule):
        loc.append(ctx["error"].field)
    where = ".".join(map(str, loc)) or "config"
    meta = _field_metadata(loc)
    unit = next((m.name for m in meta if isinstance(m, Unit)), None)
    rule = next((m.text for m in meta if isinstance(m, Rule)), None)
    if kind == "extra_forbidden":
        known = _known_fields(loc[:-1])
        text = f"unknown field (known: {', '.join(known)})" if known else "unknown field"
    elif kind == "missing":
        text = "must be set"
    elif kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        text = f"must be {op} {_number(ctx[key])}{' ' + unit if unit else ''}, got {value!r}"
    elif kind == "literal_error":
        choices = ", ".join(str(c).strip("'") for c in ctx["expected"].replace(" or ", ", ").split(", "))
        text = f"must be one of {choices}, got {value!r}"
    elif kind in ("string_pattern_mismatch", "string_too_short") and rule:
        text = f"{rule}, got {value!r}"
    elif kind == "string_pattern_mismatch":
        text = f"must match {ctx['pattern']}, got {value!r}"
    elif kind == "too_short":
        text = f"must not be empty, got {value!r}" if ctx["min_length"] == 1 else \
            f"must hold at least {ctx['min_length']} items, got {value!r}"
    elif kind in _TYPES:
        text = f"must be {_TYPES[kind]}, got {value!r}"
    elif kind == "value_error":
        text = str(ctx.get("error", error["msg"]))
    else:
        text = f"{error['msg'][0].lower()}{error['msg'][1:]}, got {value!r}"
    if item is not None:
        text = f"item {item} {text}"
    dotted = ".".join(map(str, loc))
    source = next((s for path, s in sources.items() if dotted == path or dotted.startswith(path + ".")), None)
    return f"{where}: {text}" + (f" (from {source})" if source else "")


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _is_union_branch(part: Any) -> bool:
    """pydantic names the branch of `int | None` that failed (`int`, `str`, ...) in the path."""
    return isinstance(part, str) and (part in ("int", "float", "str", "bool", "none") or "[" in part)


def _model_at(loc: list) -> type[BaseModel] | None:
    model: Any = SearchConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        # A model field, or an optional one (`FloatRange | None`).
        arms = (get_args(field.annotation) or (field.annotation,)) if field is not None else ()
        models = [arm for arm in arms if isinstance(arm, type) and issubclass(arm, BaseModel)]
        if not models:
            return None
        model = models[0]
    return model


def _known_fields(loc: list) -> list[str]:
    model = _model_at(loc)
    return sorted(model.model_fields) if model else []


def _field_metadata(loc: list) -> list[Any]:
    if not loc:
        return []
    model = _model_at(loc[:-1])
    field = model.model_fields.get(loc[-1]) if model else None
    if field is None:
        return []
    inner = [m for arg in get_args(field.annotation) for m in getattr(arg, "__metadata__", ())]
    return list(field.metadata) + inner
