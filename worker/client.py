"""The worker's connection to the chief: keras-tuner's `OracleClient` with what it lacks.

It speaks the stock `keras_tuner.Oracle` RPCs, plus `ktc.Coordinator` for leases and hand-back,
and adds to every call the bearer token, this process's session id and its tuner id. Calls that
change the search wait for the chief (`wait_for_ready`) and are retried while it restarts; the
chief ignores a repeated EndTrial, so a retry never ends a trial twice.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
from keras_tuner.engine import hyperparameters as hp_module
from keras_tuner.engine import trial as trial_module

from kt_cluster.core import compat, protocol

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class LeaseLost(RuntimeError):
    """The chief gave this worker's trial to someone else."""


class ChiefClient:
    """Drop-in for the oracle of a keras-tuner Tuner on a worker."""

    def __init__(self, oracle, address: str, tuner_id: str, token: str | None,
                 wait_seconds: float = 3600.0):
        self._local_oracle = oracle  # the local oracle: only its objective and settings are used
        self.objective = oracle.objective
        self.max_trials = oracle.max_trials
        self.tuner_id = tuner_id
        self.session = uuid.uuid4().hex
        self.wait_seconds = wait_seconds
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", protocol.MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", protocol.MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 60_000),
            # Reconnect quickly after a chief restart (gRPC's default back-off grows to 2 minutes).
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ])
        self.stub = compat.oracle_stub_class()(self.channel)
        self.messages = compat.oracle_messages()
        self._metadata = [(protocol.SESSION, self.session), (protocol.TUNER_ID, tuner_id)]
        if token:
            self._metadata.append((protocol.AUTHORIZATION, f"Bearer {token}"))
        self._coordinator = {
            name: self.channel.unary_unary(protocol.method_path(protocol.COORDINATOR_SERVICE, name),
                                           request_serializer=protocol.encode,
                                           response_deserializer=protocol.decode)
            for name in protocol.COORDINATOR_METHODS
        }

    def __getattr__(self, name: str) -> Any:
        # The Tuner reads a few settings from its oracle (as keras-tuner's OracleClient allows).
        if name in ("allow_new_entries", "tune_new_entries"):
            return getattr(self._local_oracle, name)
        raise AttributeError(f"ChiefClient has no attribute {name!r}")

    def _call(self, method, request, extra: list[tuple[str, Any]] | None = None):
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                return method(request, metadata=self._metadata + (extra or []), wait_for_ready=True,
                              timeout=max(1.0, deadline - time.monotonic()))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    raise LeaseLost(exc.details()) from exc
                if exc.code() not in RETRYABLE or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    # --- keras-tuner's Oracle API ------------------------------------------------------------

    def get_space(self) -> hp_module.HyperParameters:
        response = self._call(self.stub.GetSpace, self.messages.GetSpaceRequest())
        return hp_module.HyperParameters.from_proto(response.hyperparameters)

    def update_space(self, hyperparameters: hp_module.HyperParameters) -> None:
        self._call(self.stub.UpdateSpace, self.messages.UpdateSpaceRequest(hyperparameters=hyperparameters.to_proto()))

    def create_trial(self, tuner_id: str) -> trial_module.Trial:
        response = self._call(self.stub.CreateTrial, self.messages.CreateTrialRequest(tuner_id=tuner_id))
        return trial_module.Trial.from_proto(response.trial)

    def update_trial(self, trial_id: str, metrics: dict[str, float], step: int = 0) -> trial_module.Trial:
        response = self._call(self.stub.UpdateTrial,
                              self.messages.UpdateTrialRequest(trial_id=trial_id, metrics=metrics, step=step))
        return trial_module.Trial.from_proto(response.trial)

    def end_trial(self, trial: trial_module.Trial, stopped_early: bool = False) -> None:
        extra = []
        if trial.message:
            extra.append((protocol.TRIAL_MESSAGE, protocol.trim_message(trial.message)))
        if stopped_early:
            extra.append((protocol.STOPPED_EARLY, "1"))
        self._call(self.stub.EndTrial, self.messages.EndTrialRequest(trial=trial.to_proto()), extra)

    def get_trial(self, trial_id: str) -> trial_module.Trial:
        response = self._call(self.stub.GetTrial, self.messages.GetTrialRequest(trial_id=trial_id))
        return trial_module.Trial.from_proto(response.trial)

    def get_best_trials(self, num_trials: int = 1) -> list[trial_module.Trial]:
        response = self._call(self.stub.GetBestTrials, self.messages.GetBestTrialsRequest(num_trials=num_trials))
        return [trial_module.Trial.from_proto(t) for t in response.trials]

    # --- ktc.Coordinator ---------------------------------------------------------------------

    def heartbeat(self, trial_id: str, epoch: int, timeout: float) -> dict[str, Any] | None:
        """None when the chief did not answer in time (it may be restarting): keep going."""
        request = {"tuner_id": self.tuner_id, "session": self.session, "trial_id": trial_id, "epoch": epoch}
        try:
            return self._coordinator["Heartbeat"](request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() in RETRYABLE:
                return None
            raise

    def hand_back(self, trial_id: str, timeout: float) -> bool:
        request = {"tuner_id": self.tuner_id, "session": self.session, "trial_id": trial_id}
        reply = self._coordinator["HandBack"](request, metadata=self._metadata, timeout=timeout, wait_for_ready=True)
        return bool(reply.get("accepted"))

    def close(self) -> None:
        self.channel.close()

