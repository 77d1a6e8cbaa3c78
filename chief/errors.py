"""What the chief's oracle raises to turn a call down, and when it cannot go on."""

from __future__ import annotations


class Refused(Exception):
    """A call the oracle turned down before it changed anything."""


class UnknownTrial(Refused, KeyError):
    """A request names a trial id the chief never created."""


class NotHolder(Refused, RuntimeError):
    """The caller no longer holds this trial's lease (it was requeued or taken over)."""


class Invalid(Refused, ValueError):
    """A request the oracle cannot take as it is (the objective missing, a changed hyperparameter)."""


class StateLost(RuntimeError):
    """The oracle could not be put back to what its journal says: the chief must stop."""
