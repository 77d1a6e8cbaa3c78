"""The model builder handed to keras-tuner: the article's U-Net space, or a user's `module:function`."""

from __future__ import annotations

import importlib
import logging
from typing import Callable, Sequence

import keras
import keras_tuner

from kt_cluster.core import unet as unet_lib
from kt_cluster.core.config import ConfigError, SearchConfig, SpaceConfig
from kt_cluster.core.losses import BceDice, WeightedBinaryCrossentropy, pos_weights_from_fractions
from kt_cluster.core.optimizers import FusedAdam
from kt_cluster.core.segmentation_metrics import F1Score, IoU, Precision, Recall

log = logging.getLogger(__name__)

ModelBuilder = Callable[[keras_tuner.HyperParameters], keras.Model]


class HypermodelError(ConfigError):
    """A `--hypermodel package.module:function` spec that cannot be used; the message names it."""


def default_space_builder(config: SearchConfig,
                          class_fractions: Sequence[float] | None = None) -> ModelBuilder:
    """The article's `model_builder(hp)`, with net_depth clamped once to what the image size allows,
    plus what the space adds to it: batch normalisation's momentum (`space.bn_momentum`), the
    loss (`space.loss`) and the power of weighted_bce's class weights (`space.pos_weight_power`),
    each when it names more than one, and Adam's learning rate (`space.learning_rate`) when set."""
    space, data = config.space, config.data
    depth_min, depth_max = _net_depth_range(config)
    pos_weights = _pos_weights(class_fractions, len(data.classes))

    def build(hp: keras_tuner.HyperParameters) -> keras.Model:
        model = unet_lib.unet(
            input_size=(data.image_size, data.image_size, data.channels),
            start_neurons=hp.Int("start_neurons", space.start_neurons.min, space.start_neurons.max,
                                 step=space.start_neurons.step),
            net_depth=hp.Int("net_depth", depth_min, depth_max, step=space.net_depth.step),
            output_classes=len(data.classes),
            dropout=hp.Boolean("dropout", default=False) if space.dropout else False,
            bn_after_act=hp.Boolean("bn_after_act", default=False) if space.bn_after_act else False,
            activation=hp.Choice("activation", space.activation, ordered=False),
            bn_momentum=(hp.Choice("bn_momentum", space.bn_momentum, ordered=False)
                         if len(space.bn_momentum) > 1 else space.bn_momentum[0]),
        )
        loss = hp.Choice("loss", space.loss, ordered=False) if len(space.loss) > 1 else space.loss[0]
        power = _pos_weight_power(hp, space)
        rates = space.learning_rate
        learning_rate = (hp.Float("learning_rate", rates.min, rates.max, sampling="log")
                         if rates and rates.max > rates.min else rates.min if rates else config.learning_rate)
        model.compile(optimizer=FusedAdam(learning_rate),
                      loss=(BceDice() if loss == "bce_dice"
                            else WeightedBinaryCrossentropy([weight ** power for weight in pos_weights])),
                      metrics=[F1Score(), Precision(), Recall(), IoU()], **compile_options(config))
        return model

    return build


def space_cost(config: SearchConfig) -> Callable[[dict], float] | None:
    """A configuration's relative cost per epoch for cost-aware samplers: the default U-Net's
    multiply-adds for its hyperparameter values; None for a user's hypermodel (unknown)."""
    if config.hypermodel:
        return None
    data = config.data

    def cost(values: dict) -> float:
        if "start_neurons" not in values or "net_depth" not in values:
            return 1.0  # a space of other names (an oracle given its own space): all alike
        return float(unet_lib.multiply_adds(data.image_size, data.channels, int(values["start_neurons"]),
                                            int(values["net_depth"]), len(data.classes)))

    return cost


def compile_options(config: SearchConfig) -> dict[str, object]:
    """Extra `model.compile` arguments: `jit_compile` (XLA) when set, else Keras' "auto"."""
    return {} if config.jit_compile is None else {"jit_compile": config.jit_compile}


def apply_precision_policy(config: SearchConfig) -> str:
    """Set Keras' global dtype policy: mixed_float16 when asked for and a GPU is visible.

    On CPU, float16 math is slower, not faster: the option is ignored with a warning.
    Returns the policy in force.
    """
    if config.mixed_precision:
        if gpu_visible():
            keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            log.warning("mixed_precision: no GPU visible to this process; ignored (training stays float32)")
    return keras.mixed_precision.global_policy().name


def gpu_visible() -> bool:
    """Whether Keras' backend (TensorFlow or JAX) sees a GPU in this process."""
    if keras.backend.backend() == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _net_depth_range(config: SearchConfig) -> tuple[int, int]:
    """Clamp the searched depth up front so no trial ever builds a net too deep for the images."""
    size, depth = config.data.image_size, config.space.net_depth
    fits = unet_lib.max_depth(size)
    if depth.min > fits:
        raise ConfigError(f"space.net_depth.min: {depth.min} is too deep for data.image_size {size}; "
                          f"the maximum depth that fits is {fits}")
    if depth.max > fits:
        log.warning("space.net_depth.max %d is too deep for data.image_size %d; searching up to %d",
                    depth.max, size, fits)
    return depth.min, min(depth.max, fits)


def _pos_weight_power(hp: keras_tuner.HyperParameters, space: SpaceConfig) -> float:
    """The class weights' power: searched only when weighted_bce is a loss of the space (bce_dice
    has no weights, so a power there would be a hyperparameter without effect)."""
    powers = space.pos_weight_power
    if "weighted_bce" not in space.loss or len(powers) == 1:
        return powers[0]
    return hp.Choice("pos_weight_power", sorted(powers), ordered=True, default=powers[0])


def _pos_weights(class_fractions: Sequence[float] | None, n_classes: int) -> list[float]:
    if class_fractions is None:
        return [1.0] * n_classes
    if len(class_fractions) != n_classes:
        raise ValueError(f"class_fractions: expected one per class ({n_classes}), got {len(class_fractions)}")
    return pos_weights_from_fractions(class_fractions)


def load_hypermodel(spec: str) -> ModelBuilder:
    """Import `package.module:function`, a builder taking `hp` and returning a compiled model."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise HypermodelError(f"hypermodel {spec!r}: must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise HypermodelError(f"hypermodel {spec!r}: module {module_name!r} not found") from exc
        raise HypermodelError(f"hypermodel {spec!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the user's module raised while importing; keep the spec in the message
        raise HypermodelError(f"hypermodel {spec!r}: importing {module_name!r} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    builder = getattr(module, attr, None)
    if builder is None:
        raise HypermodelError(f"hypermodel {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(builder):
        raise HypermodelError(f"hypermodel {spec!r}: {attr!r} is not callable (got {type(builder).__name__})")
    return builder


def build_hypermodel(config: SearchConfig, class_fractions: Sequence[float] | None = None) -> ModelBuilder:
    """The user's `config.hypermodel` when set (it compiles its own loss), else the default space."""
    policy = apply_precision_policy(config)
    if config.hypermodel:
        return _under_policy(_with_compile_options(load_hypermodel(config.hypermodel), config), policy)
    return _under_policy(default_space_builder(config, class_fractions), policy)


def _under_policy(builder: ModelBuilder, policy: str) -> ModelBuilder:
    """Each build sets the dtype policy again: keras.backend.clear_session(), which a tuner runs
    before every trial's build, resets it to float32."""

    def build(hp: keras_tuner.HyperParameters) -> keras.Model:
        keras.mixed_precision.set_global_policy(policy)
        return builder(hp)

    return build


def _with_compile_options(builder: ModelBuilder, config: SearchConfig) -> ModelBuilder:
    """A user's builder compiles its own model; `jit_compile`, when set, still applies to it."""
    if config.jit_compile is None:
        return builder

    def build(hp: keras_tuner.HyperParameters) -> keras.Model:
        model = builder(hp)
        model.jit_compile = config.jit_compile  # read when fit() makes its train function
        return model

    return build
