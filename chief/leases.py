"""Leases: which worker holds which trial, until when.

A worker renews its lease with each call about its trial (heartbeat, UpdateTrial, CreateTrial).
Workers that identify themselves with a session id (kt-cluster workers) get `lease_seconds`;
stock keras-tuner workers send nothing between CreateTrial and the end of a trial, so they get
`stock_lease_seconds`, which must outlast their longest trial.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Lease:
    trial_id: str
    tuner_id: str
    session: str | None  # None: a stock client, or not yet seen since a chief restart
    deadline: float
    epoch: int = -1  # last epoch the holder reported (-1: none yet)
    started: float = 0.0
    restored: bool = False  # granted by a restarted chief, before its holder called again


class LeaseTable:
    def __init__(self, lease_seconds: float, stock_lease_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self.lease_seconds = lease_seconds
        self.stock_lease_seconds = stock_lease_seconds
        self.clock = clock
        self._by_trial: dict[str, Lease] = {}

    def _term(self, session: str | None) -> float:
        return self.lease_seconds if session else self.stock_lease_seconds

    def grant(self, trial_id: str, tuner_id: str, session: str | None) -> Lease:
        now = self.clock()
        lease = Lease(trial_id, tuner_id, session, now + self._term(session), started=time.time())
        self._by_trial[trial_id] = lease
        return lease

    def get(self, trial_id: str) -> Lease | None:
        return self._by_trial.get(trial_id)

    def holds(self, trial_id: str, tuner_id: str, session: str | None) -> bool:
        """Whether this caller holds the trial. A caller without a session (stock) matches by id."""
        lease = self._by_trial.get(trial_id)
        if lease is None or lease.tuner_id != tuner_id:
            return False
        return lease.session is None or session is None or lease.session == session

    def renew(self, trial_id: str, session: str | None, epoch: int | None = None) -> None:
        lease = self._by_trial[trial_id]
        if lease.session is None and session:
            lease.session = session  # first call from the holder since a chief restart
        lease.deadline = self.clock() + self._term(lease.session)
        if epoch is not None:
            lease.epoch = max(lease.epoch, epoch)

    def held(self) -> dict[str, Lease]:
        """trial id -> its lease, a copy of the table (to put leases back after a rollback)."""
        return dict(self._by_trial)

    def put(self, lease: Lease) -> None:
        self._by_trial[lease.trial_id] = lease

    def release(self, trial_id: str) -> None:
        self._by_trial.pop(trial_id, None)

    def expired(self) -> list[Lease]:
        now = self.clock()
        return [lease for lease in self._by_trial.values() if lease.deadline < now]
