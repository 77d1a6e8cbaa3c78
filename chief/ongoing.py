"""The oracle's map of running trials (tuner id -> Trial), indexed and change-tracked.

keras-tuner keeps `ongoing_trials` as a plain dict with one entry per busy worker and finds a
trial's holder by scanning it; the chief journaled the map by diffing all of it on every save.
With hundreds of workers both were O(workers) work twice per trial on the chief's one serving
thread. This dict subclass remembers which keys changed since the journal last took them, and
which tuner id holds each trial id.
"""

from __future__ import annotations

from typing import Any, Iterable


class OngoingTrials(dict):
    """A dict of tuner id -> Trial with `changed` keys and a trial id -> tuner id index.

    Every mutating dict method goes through `__setitem__`/`__delitem__`, so neither can drift. A
    trial runs under one tuner id at a time (the oracle moves it, never copies it)."""

    _MISSING = object()

    def __init__(self, items: Iterable[tuple[str, Any]] | dict = ()):
        super().__init__()
        self.changed: set[str] = set()
        self._holders: dict[str, str] = {}
        self.update(items)

    def __setitem__(self, tuner_id: str, trial: Any) -> None:
        old = super().get(tuner_id)
        if old is not None and self._holders.get(old.trial_id) == tuner_id:
            del self._holders[old.trial_id]
        super().__setitem__(tuner_id, trial)
        self._holders[trial.trial_id] = tuner_id
        self.changed.add(tuner_id)

    def __delitem__(self, tuner_id: str) -> None:
        trial = super().pop(tuner_id)
        if self._holders.get(trial.trial_id) == tuner_id:
            del self._holders[trial.trial_id]
        self.changed.add(tuner_id)

    def pop(self, tuner_id: str, default: Any = _MISSING) -> Any:
        if tuner_id not in self:
            if default is self._MISSING:
                raise KeyError(tuner_id)
            return default
        trial = self[tuner_id]
        del self[tuner_id]
        return trial

    def popitem(self) -> tuple[str, Any]:
        tuner_id = next(reversed(self))
        return tuner_id, self.pop(tuner_id)

    def setdefault(self, tuner_id: str, default: Any = None) -> Any:
        if tuner_id not in self:
            self[tuner_id] = default
        return self[tuner_id]

    def update(self, items: Iterable[tuple[str, Any]] | dict = (), **more: Any) -> None:
        for tuner_id, trial in (items.items() if isinstance(items, dict) else items):
            self[tuner_id] = trial
        for tuner_id, trial in more.items():
            self[tuner_id] = trial

    def __ior__(self, items: Any) -> "OngoingTrials":
        self.update(items)
        return self

    def clear(self) -> None:
        for tuner_id in list(self):
            del self[tuner_id]

    def holder(self, trial_id: str) -> str | None:
        """The tuner id running `trial_id`, if any: what keras-tuner finds by a scan."""
        return self._holders.get(trial_id)

    def take_changes(self) -> set[str]:
        """The tuner ids set or removed since the previous call."""
        changed, self.changed = self.changed, set()
        return changed
