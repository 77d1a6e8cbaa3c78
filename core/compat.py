"""keras-tuner behind one seam: every reach into its internals lives here, each with its reason.

kt-cluster builds on keras-tuner's distributed mode. Its wire protos, its oracle lock and part of
the state and hooks the chief needs are reachable only through `keras_tuner.src` or underscore
names, and the chief replaces some of keras-tuner's code with faster copies that must keep doing
exactly what keras-tuner does. All of that is in this module and nowhere else
(tests/test_compat_seam.py checks it), so a new keras-tuner release is checked here and by the
differential tests against stock keras-tuner (tests/test_compat.py), not across the code base.
Everything else uses keras-tuner's public names (`keras_tuner.Oracle`, `keras_tuner.engine.trial`,
`keras_tuner.engine.hyperparameters`, ...) and what this module offers:

- the supported keras-tuner releases, checked when this module is first imported;
- the wire: keras-tuner's generated `keras_tuner.Oracle` service and `Trial` message, and
  `TrialProtos`, which builds a chief's Trial replies and reads EndTrial's Trial more cheaply;
- the oracle: `OracleSeam`, the mixin the chief's oracle stands on (keras-tuner's private state and
  hooks under public names, and faster copies of its scoring, sampling, failure check, search-space
  copy and best-trial choice), `trial_from_state`, `repair_lock`, the `Display` base class;
- ASHA's duplicate check (`ValuesHashIgnoring`, `tried_before`) and sampling (`random_values`,
  and for its model-based sampler `next_seed` and `unseen_values`);
- the tuner: `TunerSeam`, where keras-tuner keeps a trial's best-epoch checkpoint (the worker
  builds, warm-starts and checkpoints its models itself, through Keras' public API).
"""

from __future__ import annotations

import copy
import heapq
import math
import os
import re
import threading
from importlib import metadata
from types import MappingProxyType
from typing import Any, Callable, Mapping

from kt_cluster.core.config import ConfigError
from kt_cluster.core.scoring import best_window

SUPPORTED = ((1, 4, 8), (1, 4, 9))  # [first, end) of the keras-tuner releases tests and benchmarks ran on
SUPPORTED_RANGE = ">={},<{}".format(*(".".join(map(str, release)) for release in SUPPORTED))  # as pyproject pins it


class UnsupportedKerasTuner(ConfigError):
    """The installed keras-tuner is not a release this module was written and tested against."""


def check_keras_tuner(version: str | None = None) -> str:
    """The installed keras-tuner's version, or `UnsupportedKerasTuner` naming the supported range.

    Read from the package metadata, so the check runs before any keras-tuner internals are imported
    (a release that moved them would otherwise fail with an ImportError traceback)."""
    if version is None:
        try:
            version = metadata.version("keras-tuner")
        except metadata.PackageNotFoundError:
            raise UnsupportedKerasTuner(f"keras-tuner is not installed; kt-cluster needs "
                                        f"keras-tuner{SUPPORTED_RANGE}") from None
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    release = tuple(int(part) for part in match.groups()) if match else None
    if release is None or not SUPPORTED[0] <= release < SUPPORTED[1]:
        raise UnsupportedKerasTuner(f"keras-tuner {version} is installed; kt-cluster supports "
                                    f"keras-tuner{SUPPORTED_RANGE} (pip install 'keras-tuner{SUPPORTED_RANGE}')")
    return version


check_keras_tuner()  # first, before the imports below reach into keras-tuner's internals

import keras_tuner  # noqa: E402
from keras_tuner.engine import hyperparameters as hp_module  # noqa: E402
from keras_tuner.engine import trial as trial_module  # noqa: E402
from keras_tuner.src import protos as _protos  # noqa: E402 - the generated wire code: no public alias
from keras_tuner.src.engine import metrics_tracking as _metrics  # noqa: E402 - MetricsTracker: no public alias
from keras_tuner.src.engine import oracle as _oracle  # noqa: E402 - lock tables, Display: no public alias
from keras_tuner.src.engine.objective import MultiObjective as _MultiObjective  # noqa: E402 - no public alias

from kt_cluster.core import segmentation_metrics  # noqa: E402 - after the version check, as keras-tuner

Trial = trial_module.Trial
TrialStatus = trial_module.TrialStatus
HyperParameters = hp_module.HyperParameters

# keras-tuner's progress printer, which every oracle calls on each trial's begin and end (the chief
# replaces it with a quiet one): a class of the private oracle module.
Display = _oracle.Display

# `Oracle.get_state()` keys whose values grow with the number of trials (the chief's journal keeps
# these per trial instead); `set_state` needs every one of them.
PER_TRIAL_STATE_KEYS = ("start_order", "end_order", "run_times", "tried_so_far", "id_to_hash", "display")


# --- the wire -----------------------------------------------------------------------------------

def oracle_messages():
    """keras-tuner's generated request/response classes (module `service_pb2`)."""
    return _protos.get_service()


def oracle_stub_class():
    """The client stub of the `keras_tuner.Oracle` service."""
    return _protos.get_service_grpc().OracleStub


def trial_proto_class():
    """The `Trial` message of keras-tuner's protos."""
    return _protos.get_proto().Trial


# `TrialStatus.to_proto` walks an if-chain through protobuf's enum wrapper on every call.
_STATUS_PROTO = {status: TrialStatus.to_proto(status) for status in (
    None, TrialStatus.RUNNING, TrialStatus.IDLE, TrialStatus.INVALID, TrialStatus.STOPPED,
    TrialStatus.COMPLETED, TrialStatus.FAILED)}


def status_proto(status: str | None) -> int:
    """`TrialStatus.to_proto(status)`, from a table."""
    return _STATUS_PROTO[status]


class TrialProtos:
    """`Trial.to_proto()` and `Trial.from_proto()` for a chief's replies and EndTrial requests,
    reusing what a running trial's previous replies built.

    keras-tuner rebuilds the proto of every hyperparameter (range and value) and of every metric
    observation so far for each reply, which made it the largest part of an UpdateTrial, growing
    with epochs x metrics. A running trial keeps its HyperParameters and MetricsTracker objects
    (EndTrial replaces them), so their protos are cached against these very objects, held here so
    their identity cannot be reused; the metrics proto is extended with the observations an
    UpdateTrial added when that gives what `to_proto()` would. Entries go with `forget`."""

    LIMIT = 100_000  # trials that never ended: a bound, not a policy

    def __init__(self):
        self._proto_class = trial_proto_class()
        self._hps: dict[str, tuple[Any, Any]] = {}  # trial id -> (its HyperParameters, their proto)
        self._metrics: dict[str, tuple[Any, Any]] = {}  # trial id -> (its MetricsTracker, its proto)

    def to_proto(self, trial: Trial, added: dict[str, float] | None = None, step: int = 0, into=None):
        """`trial.to_proto()`, written `into` a reply's Trial field (one copy); `added`: the metrics
        an UpdateTrial just reported at `step`, if that is what changed since the last reply."""
        if len(self._hps) > self.LIMIT:
            self._hps.clear()
            self._metrics.clear()
        hps = trial.hyperparameters
        cached = self._hps.get(trial.trial_id)
        if cached is None or cached[0] is not hps:
            cached = self._hps[trial.trial_id] = (hps, hps.to_proto())
        metrics = self._metrics.get(trial.trial_id)
        if metrics is None or metrics[0] is not trial.metrics or not _extend(metrics[1], trial.metrics, added, step):
            metrics = self._metrics[trial.trial_id] = (trial.metrics, trial.metrics.to_proto())
        proto = self._proto_class() if into is None else into
        proto.trial_id = trial.trial_id
        proto.hyperparameters.CopyFrom(cached[1])
        if trial.score is not None:
            proto.score.value, proto.score.step = trial.score, trial.best_step
        proto.status = _STATUS_PROTO[trial.status]
        proto.metrics.CopyFrom(metrics[1])
        return proto

    def from_proto(self, proto) -> Trial:
        """`Trial.from_proto(proto)`, reusing the running trial's HyperParameters when the worker
        sent back the very proto it was given (parsing them was a fifth of an EndTrial).

        keras-tuner's `end_trial` puts them on the oracle's trial: it keeps its own objects, which
        are all that proto says. (A parse would also spell out defaults left unset and order the
        space by kind of hyperparameter, as the proto groups them; trial.json keeps the space's
        own order and defaults.)"""
        cached = self._hps.get(proto.trial_id)
        if cached is None or cached[1] != proto.hyperparameters:
            return Trial.from_proto(proto)
        trial = Trial(cached[0], trial_id=proto.trial_id, status=TrialStatus.from_proto(proto.status))
        if proto.HasField("score"):
            trial.score, trial.best_step = proto.score.value, proto.score.step
        trial.metrics = _metrics.MetricsTracker.from_proto(proto.metrics)
        return trial

    def forget(self, trial_id: str) -> None:
        self._hps.pop(trial_id, None)
        self._metrics.pop(trial_id, None)


def _extend(proto, tracker, added: dict[str, float] | None, step: int) -> bool:
    """Append to a `tracker.to_proto()` of before an update the observations the update `added` at
    `step`; False (proto left unusable) when that would not give the tracker's proto now."""
    if added is None:
        return False
    for name in added:
        if name not in proto.metrics:  # a new metric: keras-tuner's map order
            return False
        observations = proto.metrics[name].observations
        # MetricHistory's observations by step: only `get_history()` is public, and it sorts them all.
        observation = tracker.metrics[name]._observations.get(step)
        if observations and observations[-1].step >= step or observation is None or len(observation.value) != 1:
            return False  # not a new last step with one value: keras-tuner sorts and merges
        observations.add(value=observation.value, step=step)
    return True


# --- the oracle ---------------------------------------------------------------------------------

def repair_lock(oracle) -> None:
    """Release keras-tuner's lock on `oracle` if this thread still holds it.

    `keras_tuner.synchronized` keeps its locks in module tables (`THREADS`, `LOCKS`) and has no
    try/finally: an exception inside an oracle method leaves the lock held, and the next call
    deadlocks. Call it only where no keras-tuner method of `oracle` is running on this thread."""
    if _oracle.THREADS[oracle] == threading.current_thread().name:
        _oracle.THREADS[oracle] = None
        _oracle.LOCKS[oracle].release()


def _append_entry(hps: HyperParameters, hp) -> None:
    # What `HyperParameters.from_config` does with each deserialized entry: the name index (`_hps`)
    # and the ordered space (`_space`) have no public setter that skips the deserialization.
    hps._hps[hp.name].append(hp)
    hps._space.append(hp)


class SearchSpace(HyperParameters):
    """The oracle's own HyperParameters, with a cheaper `copy()`.

    keras-tuner copies the search space for every new trial through a config round trip, in which
    Keras' generic deserializer inspects signatures for each hyperparameter (a fifth of a
    CreateTrial). A copy of each object and of the lists it holds (its conditions, a Choice's
    values) gives the same independent hyperparameters several times faster than that, or than a
    deep copy. Conditions themselves are shared: nothing changes one after it is made."""

    def copy(self) -> HyperParameters:
        hps = HyperParameters()
        for hp in self.space:
            _append_entry(hps, _copy_hyperparameter(hp))
        hps.values = dict(self.values)
        return hps


def _copy_hyperparameter(hp):
    clone = copy.copy(hp)
    for name, value in vars(hp).items():
        if isinstance(value, (list, dict)):
            vars(clone)[name] = copy.copy(value)
    return clone


def trial_from_state(state: dict[str, Any], definitions: dict[str, Any]) -> Trial:
    """`Trial.from_state(state)`, deserializing each distinct hyperparameter definition once.

    keras-tuner rebuilds every hyperparameter of every trial through Keras' generic deserializer
    (a signature inspection per object): two thirds of the time to restore a 10,000-trial search.
    Trials share a handful of definitions, kept in `definitions` across calls; each trial gets its
    own (shallow) copies of them."""
    config = state["hyperparameters"]
    hps = HyperParameters()
    for definition in config["space"]:
        key = repr(definition)
        if key not in definitions:
            definitions[key] = hp_module.deserialize(definition)
        _append_entry(hps, copy.copy(definitions[key]))
    hps.values = dict(config["values"].items())
    # The rest of `Trial.set_state`, without `Trial()` generating a random id first.
    trial = Trial(hps, trial_id=state["trial_id"], status=state["status"], message=state["message"])
    trial.metrics = _metrics.MetricsTracker.from_config(state["metrics"])
    trial.score, trial.best_step = state["score"], state["best_step"]
    return trial


class OracleSeam:
    """Mixin placed before a keras-tuner oracle class (`class X(OracleSeam, keras_tuner.Oracle)`).

    It names the state and hooks keras-tuner keeps private, and replaces some of keras-tuner's
    code with faster copies that give the same results (each tested against keras-tuner's own):
    `score_trial` (with a `score_window` of 1; a longer window is the project's own score),
    sampling (`_random_values`), the consecutive-failure check, the search-space copy
    (`SearchSpace`), `apply_metrics` (the heart of `update_trial`) and `best_trials`."""

    # Directions the config declares for a hypermodel's own metrics (`metric_directions`).
    metric_directions: Mapping[str, str] = MappingProxyType({})

    # --- keras-tuner's private state and methods, by name -----------------------------------
    # The chief's life cycle and journal need them; keras-tuner offers no public accessor.

    @property
    def retry_queue(self) -> list[str]:
        """Ids of the trials waiting to run again (the list itself)."""
        return self._retry_queue

    def run_count(self, trial_id: str) -> int:
        """How many times the trial has ended so far (keras-tuner counts them for retries)."""
        return self._run_times[trial_id]

    def run_counts(self) -> dict[str, int]:
        return dict(self._run_times)

    def check_objective_found(self, metrics: dict[str, float]) -> None:
        """keras-tuner's ValueError when `metrics` lack the objective (as its update_trial raises)."""
        self._check_objective_found(metrics)

    def trial_file(self, trial_id: str) -> str:
        """`trial_<id>/trial.json` under the project directory, keras-tuner's layout (its
        `_get_trial_dir` also creates the folder through TensorFlow's gfile; callers make it)."""
        return os.path.join(self._directory, self._project_name, f"trial_{trial_id}", "trial.json")

    def install_display(self, display) -> None:
        """Replace the progress printer that keras-tuner's oracle calls on each trial."""
        self._display = display

    def state_without_trials(self) -> dict[str, Any]:
        """`get_state()` without the keys that grow with the trial count (`PER_TRIAL_STATE_KEYS`)
        or the worker count (`ongoing_trials`). keras-tuner's get_state lists every tried hash
        on every call: the set is swapped for an empty one while it runs (under the oracle lock)."""
        tried, self._tried_so_far = self._tried_so_far, set()
        try:
            state = self.get_state()
        finally:
            self._tried_so_far = tried
        for key in PER_TRIAL_STATE_KEYS + ("ongoing_trials",):
            state.pop(key, None)
        return state

    def restore_state(self, state: dict[str, Any], ongoing: dict[str, str], start_order: list[str],
                      end_order: list[str], run_times: dict[str, int]) -> None:
        """`set_state` from `state_without_trials()` and the per-trial parts, once `self.trials`
        holds every trial: the tried hashes are rebuilt from the trials (`_record_values`, as
        keras-tuner records them), the display keeps its own state."""
        self.set_state(dict(state, ongoing_trials=ongoing, start_order=start_order, end_order=end_order,
                            run_times=run_times, tried_so_far=[], id_to_hash={},
                            display=self._display.get_state()))
        for trial in self.trials.values():
            self._record_values(trial)

    # --- hooks keras-tuner offers only as private methods -----------------------------------

    def _save_trial(self, trial: Trial) -> None:
        # keras-tuner calls `_save_trial` after every change to a trial (create, update, end): the
        # only place to hear of them all.
        self.trial_changed(trial)

    def trial_changed(self, trial: Trial) -> None:
        """A trial was created, updated or ended; keras-tuner writes its trial.json (override)."""
        super()._save_trial(trial)

    def check_all_consecutive_failures(self) -> None:
        """keras-tuner's own check: a scan of all of `end_order` (RuntimeError when the limit of
        consecutive failures is reached anywhere in it)."""
        super()._check_consecutive_failures()

    def _check_consecutive_failures(self) -> None:
        """keras-tuner's check rescans all of end_order on every EndTrial (O(trials)); a run of
        failures can only have formed at its tail, just appended, so look there only."""
        run = 0
        for trial_id in reversed(self.end_order):
            if self.trials[trial_id].status != TrialStatus.FAILED:
                return
            run += 1
            if run == self.max_consecutive_failed_trials:
                last = self.trials[self.end_order[-1]]
                raise RuntimeError("Number of consecutive failures exceeded the limit "
                                   f"of {self.max_consecutive_failed_trials}.\n" + (last.message or ""))

    # --- faster copies of keras-tuner's code ------------------------------------------------

    @property
    def hyperparameters(self) -> SearchSpace:
        return self._search_space

    @hyperparameters.setter
    def hyperparameters(self, hps: HyperParameters) -> None:
        # keras-tuner assigns it in __init__ and set_state; the objects inside stay the same.
        if not isinstance(hps, SearchSpace):
            space = SearchSpace()
            space.__dict__.update(hps.__dict__)
            hps = space
        self._search_space = hps

    def _random_values(self) -> dict[str, Any] | None:
        """keras-tuner's `_random_values` (random search, Hyperband's and Bayesian optimization's
        random starts, ASHA): the same values from the same seed state, without merging a config
        round-trip copy of every hyperparameter into a throw-away container on each attempt."""
        collisions = 0
        while True:
            values: dict[str, Any] = {}
            for hp in self.hyperparameters.space:
                if all(condition.is_active(values) for condition in hp.conditions):
                    values[hp.name] = hp.random_sample(self._seed_state)
                    self._seed_state += 1
            if not self._duplicate(values):
                return values
            collisions += 1
            if collisions > self._max_collisions:
                return None

    # Epochs a trial's score averages (`kt_cluster.core.scoring`); the chief sets the search's.
    score_window = 1

    def score_trial(self, trial: Trial) -> None:
        """The best mean of `score_window` consecutive epochs, at the step that ends that window
        (`kt_cluster.core.scoring.best_window`); with a window of 1, keras-tuner's score (best value
        of the objective, first step reaching it), in one pass.

        keras-tuner's `get_best_value` and `get_best_step` each take a numpy mean of every
        observation; with one finite value per step (what workers report) that mean is the value
        itself. Anything else (a multi-objective, repeated steps, NaN) is scored by keras-tuner's
        own code, whatever the window."""
        history = trial.metrics.metrics.get(self.objective.name)
        # In insertion order, as keras-tuner scans them (`get_history()` sorts by step).
        observations = list(history._observations.values()) if history is not None else []
        if (isinstance(self.objective, _MultiObjective) or not observations
                or any(len(o.value) != 1 or math.isnan(o.value[0]) for o in observations)):
            return super().score_trial(trial)
        if self.score_window > 1:
            observations.sort(key=lambda o: o.step)  # windows are of consecutive epochs
        score, index = best_window([o.value[0] for o in observations], self.score_window,
                                   history.direction)  # the first of equals, as keras-tuner's scan
        trial.score, trial.best_step = score, observations[index].step

    def apply_metrics(self, trial: Trial, metrics: dict[str, float], step: int) -> None:
        """What keras-tuner's `Oracle.update_trial` does to the trial, without its checks or save.

        It calls `MetricHistory.update` directly: the tracker's own `update` also computes the best
        value before and after (a numpy mean per observation, twice) for an "improved" flag that
        nobody reads, which was a fifth of UpdateTrial's cost."""
        for name, value in metrics.items():
            if not trial.metrics.exists(name):
                # The objective's direction for its metric, else the project's knowledge of its
                # metrics and the config's, else keras-tuner's inference from the name.
                direction = (_oracle._maybe_infer_direction_from_objective(self.objective, name)
                             or segmentation_metrics.direction_of(name, self.metric_directions))
                trial.metrics.register(name, direction=direction)
            trial.metrics.metrics[name].update(float(value), step=step)

    def best_trials(self, num_trials: int) -> list[Trial]:
        """keras-tuner's `get_best_trials`, which sorts every completed trial on each call (every
        metrics scrape, Status and GetBestTrials did, under the lock). A heap picks the n best in
        O(trials log n): `heapq.nlargest(n, xs, key)` is documented as `sorted(xs, key,
        reverse=True)[:n]`, ties in the same order."""
        # Only a real number ranks: a completed trial without one (which the chief refuses to make,
        # but an old state may hold) goes after the ranked ones, rather than failing the sort.
        completed = [t for t in self.trials.values() if t.status == TrialStatus.COMPLETED and _scored(t)]
        pick = heapq.nlargest if self.objective.direction == "max" else heapq.nsmallest
        best = pick(num_trials, completed, key=lambda trial: trial.score)
        if len(best) < num_trials:
            best += [t for t in self.trials.values() if t.status != TrialStatus.COMPLETED or not _scored(t)]
        return best[:num_trials]


def _scored(trial: Trial) -> bool:
    score = trial.score
    return isinstance(score, (int, float)) and not isinstance(score, bool) and not math.isnan(score)


def stock_update_trial(oracle_class: type) -> bool:
    """Whether `oracle_class` keeps keras-tuner's own `update_trial` (which `apply_metrics` copies)."""
    return oracle_class.update_trial is keras_tuner.Oracle.update_trial


def hyperband_exhausted(oracle, iterations: int) -> bool:
    """Whether a Hyperband oracle given `iterations` (its `hyperband_iterations`) would answer
    STOPPED: every bracket of its last iteration started and filled. keras-tuner keeps the brackets, the current
    bracket and iteration private; dropping completed brackets is what its populate_space does
    first on every call."""
    oracle._remove_completed_brackets()
    return (not oracle._brackets and oracle._current_bracket == 0
            and oracle._current_iteration + 1 >= iterations)


# --- ASHA ---------------------------------------------------------------------------------------

class ValuesHashIgnoring:
    """Mixin for a keras-tuner oracle whose duplicate check ignores the hyperparameters whose names
    start with `unhashed_prefix`: keras-tuner decides "tried before?" (sampling, `_record_values`)
    by `_compute_values_hash`, with no public hook."""

    unhashed_prefix = ""

    def _compute_values_hash(self, values: dict[str, Any]) -> str:
        return super()._compute_values_hash(
            {k: v for k, v in values.items() if not k.startswith(self.unhashed_prefix)})


def random_values(oracle) -> dict[str, Any] | None:
    """Values of every active hyperparameter, drawn from the oracle's seed state and not tried
    before; None when 20 draws in a row were all tried (keras-tuner's sampler has no public name)."""
    return oracle._random_values()


def next_seed(oracle) -> int:
    """The oracle's seed state, then advanced by one. keras-tuner's own draws use it and it is part
    of the oracle's saved state, so a restarted chief continues the same sequence."""
    seed = oracle._seed_state
    oracle._seed_state += 1
    return seed


def unseen_values(oracle, next_value_seed: Callable[[], int]) -> dict[str, Any] | None:
    """Values of every active hyperparameter, each drawn with a seed from `next_value_seed`, not
    tried before; None when keras-tuner's limit of draws in a row were all tried."""
    for _ in range(oracle._max_collisions + 1):
        values: dict[str, Any] = {}
        for hp in oracle.hyperparameters.space:
            if all(condition.is_active(values) for condition in hp.conditions):
                values[hp.name] = hp.random_sample(next_value_seed())
        if not oracle._duplicate(values):
            return values
    return None


def tried_before(oracle, values: dict[str, Any]) -> bool:
    """keras-tuner's duplicate check: were these values sampled before?"""
    return oracle._duplicate(values)


# --- the tuner ----------------------------------------------------------------------------------

class TunerSeam:
    """Mixin placed before a keras-tuner Tuner class: where it keeps checkpoints."""

    def checkpoint_path(self, trial_id: str) -> str:
        """Where keras-tuner keeps a trial's best-epoch weights (what `load_model` reads)."""
        return self._get_checkpoint_fname(trial_id)
