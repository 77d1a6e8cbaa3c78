"""Optional Neptune tracking: one Neptune run per search, shared by the chief and every worker.

On when `NEPTUNE_PROJECT` is set or `NEPTUNE_MODE` is `offline` or `debug`; off otherwise (and
`neptune` need not be installed). Every process opens the same run (`custom_run_id` = the search
id; the API token comes from `NEPTUNE_API_TOKEN`, where neptune reads it):

chief    search/{id,tuner,objective,direction,space,config} at start; at the end best/{score,
         trial_id,hyperparameters} and trials/<id>/{status,score,error} for every trial
worker   trials/<id>/{hyperparameters,tuner_id} when it starts a trial, trials/<id>/metrics/<name>
         appended every epoch (step = epoch), hardware use under monitoring/<tuner_id>: Neptune's
         own samples every 10 s plus one at the end of every trial

keras-tuner 1.4 has no `logger=` hook any more, so the worker logs through a Keras callback.
Logging is best effort: an error from Neptune is a warning, never a failed trial.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any

import keras

log = logging.getLogger("ktc.neptune")
STOP_SECONDS = 20.0  # wait at most this long for queued data at exit (async mode keeps the rest on disk)


def enabled() -> bool:
    return bool(os.environ.get("NEPTUNE_PROJECT")) or os.environ.get("NEPTUNE_MODE") in ("offline", "debug")


def _best_effort(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a trial or the search
            log.warning("Neptune: %s failed: %s: %s", method.__name__, type(exc).__name__, exc)
            return None
    return wrapper


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class NeptuneTracker:
    def __init__(self, run, tuner_id: str | None = None):
        self.run, self.tuner_id = run, tuner_id

    @classmethod
    def _open(cls, config, tuner_id: str | None, **kwargs) -> "NeptuneTracker | None":
        if not enabled():
            return None
        try:
            import neptune

            run = neptune.init_run(project=os.environ.get("NEPTUNE_PROJECT"), custom_run_id=config.search_id,
                                   mode=os.environ.get("NEPTUNE_MODE", "async"), name=config.search_id,
                                   source_files=[], capture_stdout=False, capture_stderr=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - no Neptune (not installed, no token, ...) is no reason to stop
            log.warning("Neptune tracking is off: %s: %s", type(exc).__name__, exc)
            return None
        tracker = cls(run, tuner_id)
        tracker._set("search/id", config.search_id)  # groups offline runs, which lose custom_run_id on sync
        return tracker

    @classmethod
    def for_chief(cls, config, oracle=None) -> "NeptuneTracker | None":
        tracker = cls._open(config, None, capture_hardware_metrics=False, monitoring_namespace="monitoring/chief")
        if tracker is not None:
            tracker.search_started(config, oracle)
        return tracker

    @classmethod
    def for_worker(cls, config, tuner_id: str) -> "NeptuneTracker | None":
        # The chief records the Git commit and diff once; workers add their hardware use.
        return cls._open(config, tuner_id, capture_hardware_metrics=True, monitoring_namespace=f"monitoring/{tuner_id}",
                         git_ref=False)

    @_best_effort
    def _set(self, path: str, value: Any) -> None:
        self.run[path] = value

    @_best_effort
    def search_started(self, config, oracle=None) -> None:
        from neptune.utils import stringify_unsupported

        self.run["search"] = stringify_unsupported({
            "tuner": config.tuner, "objective": config.objective, "direction": config.direction,
            "config": config.model_dump()})
        if oracle is not None:
            self.run["search/space"] = stringify_unsupported(
                {hp.name: {"type": type(hp).__name__, **{k: v for k, v in hp.get_config().items() if k != "name"}}
                 for hp in oracle.hyperparameters.space})

    def trial_callbacks(self, trial) -> list[keras.callbacks.Callback]:
        """Log the trial's hyperparameters now; the callback logs every epoch's metrics."""
        self._trial_started(trial)
        return [NeptuneCallback(self, trial.trial_id)]

    @_best_effort
    def _trial_started(self, trial) -> None:
        from neptune.utils import stringify_unsupported

        self.run[f"trials/{trial.trial_id}/hyperparameters"] = stringify_unsupported(dict(trial.hyperparameters.values))
        self.run[f"trials/{trial.trial_id}/tuner_id"] = self.tuner_id or ""

    @_best_effort
    def epoch_ended(self, trial_id: str, epoch: int, logs: dict[str, Any]) -> None:
        for name, value in logs.items():
            value = _finite(value)
            if value is not None:
                self.run[f"trials/{trial_id}/metrics/{name}"].append(value, step=epoch)

    @_best_effort
    def sample_hardware(self) -> None:
        """Append one CPU and memory sample to the series Neptune's monitor keeps for this worker.

        Neptune samples every 10 s and drops zero readings (its first CPU reading is always 0), so
        a worker whose trials are shorter than that would show no hardware use at all."""
        import psutil

        ns, memory = f"monitoring/{self.tuner_id}", psutil.virtual_memory()
        self.run[f"{ns}/cpu"].append(psutil.cpu_percent())
        self.run[f"{ns}/memory"].append((memory.total - memory.available) / 2**30)  # GiB, as Neptune's gauge

    @_best_effort
    def finish(self, oracle) -> None:
        """The search is over: every trial's outcome and the best trial; then close the run."""
        try:
            for trial in list(oracle.trials.values()):
                ns = f"trials/{trial.trial_id}"
                self.run[f"{ns}/status"] = str(trial.status)
                if _finite(trial.score) is not None:
                    self.run[f"{ns}/score"] = float(trial.score)
                if trial.message:
                    self.run[f"{ns}/error"] = trial.message.strip().splitlines()[0]
            if getattr(oracle, "failure", None):
                self.run["search/failure"] = str(oracle.failure)
            best = [t for t in oracle.get_best_trials(1) if t.status == "COMPLETED"]
            if best:
                from neptune.utils import stringify_unsupported

                self.run["best/trial_id"] = best[0].trial_id
                if _finite(best[0].score) is not None:
                    self.run["best/score"] = float(best[0].score)
                self.run["best/hyperparameters"] = stringify_unsupported(dict(best[0].hyperparameters.values))
        finally:
            self.stop()

    @_best_effort
    def stop(self) -> None:
        self.run.stop(seconds=STOP_SECONDS)


class NeptuneCallback(keras.callbacks.Callback):
    def __init__(self, tracker: NeptuneTracker, trial_id: str):
        super().__init__()
        self.tracker, self.trial_id = tracker, trial_id

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.tracker.epoch_ended(self.trial_id, epoch, logs or {})

    def on_train_end(self, logs=None) -> None:
        self.tracker.sample_hardware()
