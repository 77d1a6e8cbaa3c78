"""The chief's gRPC server: keras-tuner's Oracle service, our Coordinator service, auth.

`OracleService` answers keras-tuner 1.4's `keras_tuner.Oracle` RPCs exactly as stock does on the
wire, but maps bad requests to gRPC status codes instead of crashing, reads our extra metadata
(session, failure message, early stop) and paces IDLE replies to stock clients, which retry
without back-off. `coordinator_handler` serves `ktc.Coordinator` (JSON messages).
"""

from __future__ import annotations

import functools
import hmac
import math
import time
from concurrent import futures
from typing import Any, Callable

import grpc
from keras_tuner.src import protos
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import trial as trial_module

from chief.metrics import ChiefMetrics
from chief.oracle import NotHolder, UnknownTrial
from worker import protocol

STOCK_IDLE_PAUSE_SECONDS = 0.5
ORACLE_METHODS = ("GetSpace", "UpdateSpace", "CreateTrial", "UpdateTrial", "EndTrial", "GetTrial", "GetBestTrials")
KNOWN_METHODS = {protocol.method_path(protocol.ORACLE_SERVICE, m): m for m in ORACLE_METHODS} | {
    protocol.method_path(protocol.COORDINATOR_SERVICE, m): m for m in protocol.COORDINATOR_METHODS}


class BadRequest(ValueError):
    pass


def _served(method: str) -> Callable:
    """Time the call, count it by status code, and turn our exceptions into gRPC statuses."""

    def decorator(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def wrapper(self, request, context):
            start, code, detail = time.perf_counter(), grpc.StatusCode.OK, ""
            try:
                return handler(self, request, context)
            except UnknownTrial as exc:
                code, detail = grpc.StatusCode.NOT_FOUND, f"unknown trial id {exc.args[0]!r}"
            except NotHolder as exc:
                code, detail = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
            except (BadRequest, protocol.ProtocolError) as exc:
                code, detail = grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {exc}"
            except ValueError as exc:  # keras-tuner's own checks, e.g. objective missing in metrics
                code, detail = grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {exc}"
            except Exception as exc:  # a bug must fail this call, not the chief
                code, detail = grpc.StatusCode.INTERNAL, f"{method}: {type(exc).__name__}: {exc}"
            finally:
                self.metrics.rpc_served(method, code.name, time.perf_counter() - start)
            context.abort(code, detail)

        return wrapper

    return decorator


def _caller(context) -> tuple[str | None, str | None, dict[str, Any]]:
    metadata = dict(context.invocation_metadata())
    session = metadata.get(protocol.SESSION)
    tuner_id = metadata.get(protocol.TUNER_ID)
    if session is not None:
        protocol.check_id(session, protocol.SESSION)
    if tuner_id is not None:
        protocol.check_id(tuner_id, protocol.TUNER_ID)
    return tuner_id, session, metadata


def _check_metrics(metrics) -> dict[str, float]:
    checked = {}
    for name, value in metrics.items():
        protocol.check_id(name, "metrics key")
        if math.isinf(value):
            raise BadRequest(f"metric {name!r} is infinite")
        checked[name] = float(value)
    return checked


class OracleService(protos.get_service_grpc().OracleServicer):
    def __init__(self, oracle, metrics: ChiefMetrics):
        self.oracle = oracle
        self.metrics = metrics
        self.messages = protos.get_service()
        self._hp_protos: dict[str, tuple[Any, Any]] = {}  # trial id -> (its HyperParameters, their proto)

    def _trial_proto(self, trial: trial_module.Trial):
        """`trial.to_proto()`, reusing the proto of the trial's hyperparameters.

        keras-tuner rebuilds it (every hyperparameter's range and value) for each reply, which made
        it the largest part of an UpdateTrial. A running trial keeps its HyperParameters object
        (EndTrial replaces it), so the proto is cached against that very object, held here so its
        identity cannot be reused; entries go when the trial ends."""
        hps = trial.hyperparameters
        cached = self._hp_protos.get(trial.trial_id)
        if cached is None or cached[0] is not hps:
            if len(self._hp_protos) > 100_000:  # trials that never ended: a bound, not a policy
                self._hp_protos.clear()
            cached = self._hp_protos[trial.trial_id] = (hps, hps.to_proto())
        score = (protos.get_proto().Trial.Score(value=trial.score, step=trial.best_step)
                 if trial.score is not None else None)
        return protos.get_proto().Trial(trial_id=trial.trial_id, hyperparameters=cached[1], score=score,
                                        status=trial_module.TrialStatus.to_proto(trial.status),
                                        metrics=trial.metrics.to_proto())

    @_served("GetSpace")
    def GetSpace(self, request, context):
        return self.messages.GetSpaceResponse(hyperparameters=self.oracle.get_space().to_proto())

    @_served("UpdateSpace")
    def UpdateSpace(self, request, context):
        self.oracle.update_space(hp_module.HyperParameters.from_proto(request.hyperparameters))
        return self.messages.UpdateSpaceResponse()

    @_served("CreateTrial")
    def CreateTrial(self, request, context):
        tuner_id = protocol.check_id(request.tuner_id, "tuner_id")
        _, session, _ = _caller(context)
        trial = self.oracle.create_trial(tuner_id, session=session)
        if trial.status == trial_module.TrialStatus.IDLE and session is None:
            time.sleep(STOCK_IDLE_PAUSE_SECONDS)  # stock workers retry IDLE at once, in a busy loop
        if trial.status != trial_module.TrialStatus.RUNNING:
            return self.messages.CreateTrialResponse(trial=trial.to_proto())
        return self.messages.CreateTrialResponse(trial=self._trial_proto(trial))

    @_served("UpdateTrial")
    def UpdateTrial(self, request, context):
        tuner_id, session, _ = _caller(context)
        trial_id = protocol.check_id(request.trial_id, "trial_id")
        trial = self.oracle.update_trial(trial_id, _check_metrics(request.metrics), step=request.step,
                                         tuner_id=tuner_id, session=session)
        proto = self._trial_proto(trial)
        if trial_id in self.oracle.stop_requested:
            proto.status = trial_module.TrialStatus.to_proto(trial_module.TrialStatus.STOPPED)
        return self.messages.UpdateTrialResponse(trial=proto)

    @_served("EndTrial")
    def EndTrial(self, request, context):
        tuner_id, session, metadata = _caller(context)
        protocol.check_id(request.trial.trial_id, "trial.trial_id")
        trial = trial_module.Trial.from_proto(request.trial)
        if trial.status not in (trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.INVALID,
                                trial_module.TrialStatus.FAILED):
            raise BadRequest(f"trial.status must be COMPLETED, INVALID or FAILED, got {trial.status}")
        message = metadata.get(protocol.TRIAL_MESSAGE)
        if message:
            trial.message = message.decode("utf-8", "replace")
        self.oracle.end_trial(trial, tuner_id=tuner_id, session=session,
                              stopped_early=metadata.get(protocol.STOPPED_EARLY) == "1")
        self._hp_protos.pop(trial.trial_id, None)
        return self.messages.EndTrialResponse()

    @_served("GetTrial")
    def GetTrial(self, request, context):
        trial = self.oracle.get_trial(protocol.check_id(request.trial_id, "trial_id"))
        return self.messages.GetTrialResponse(trial=trial.to_proto())

    @_served("GetBestTrials")
    def GetBestTrials(self, request, context):
        if request.num_trials < 0 or request.num_trials > 10_000:
            raise BadRequest(f"num_trials must be 0 to 10000, got {request.num_trials}")
        trials = self.oracle.get_best_trials(request.num_trials)
        return self.messages.GetBestTrialsResponse(trials=[t.to_proto() for t in trials])


class CoordinatorService:
    """`ktc.Coordinator`: leases, hand-back, status. Requests and replies are JSON objects,
    decoded inside the handler so that a malformed one gets INVALID_ARGUMENT."""

    def __init__(self, oracle, metrics: ChiefMetrics, search_info: dict[str, Any]):
        self.oracle = oracle
        self.metrics = metrics
        self.search_info = search_info

    @_served("Heartbeat")
    def Heartbeat(self, raw: bytes, context) -> dict[str, Any]:
        request = protocol.decode(raw)
        tuner_id, session, trial_id = self._ids(request)
        epoch = request.get("epoch", -1)
        if not isinstance(epoch, int):
            raise BadRequest("epoch: must be an integer")
        return self.oracle.heartbeat(tuner_id, session, trial_id, epoch)

    @_served("HandBack")
    def HandBack(self, raw: bytes, context) -> dict[str, Any]:
        tuner_id, session, trial_id = self._ids(protocol.decode(raw))
        return {"accepted": self.oracle.hand_back(tuner_id, session, trial_id)}

    @_served("Status")
    def Status(self, raw: bytes, context) -> dict[str, Any]:
        protocol.decode(raw)
        return dict(self.oracle.status(), search=self.search_info)

    @staticmethod
    def _ids(request: dict[str, Any]) -> tuple[str, str, str]:
        return (protocol.check_id(request.get("tuner_id"), "tuner_id"),
                protocol.check_id(request.get("session"), "session"),
                protocol.check_id(request.get("trial_id"), "trial_id"))

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                getattr(self, name), response_serializer=protocol.encode)
            for name in protocol.COORDINATOR_METHODS
        }
        return grpc.method_handlers_generic_handler(protocol.COORDINATOR_SERVICE, handlers)


class TokenAuth(grpc.ServerInterceptor):
    """Every call must carry `authorization: Bearer <token>`; others get UNAUTHENTICATED."""

    def __init__(self, token: str, metrics: ChiefMetrics):
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        for key, value in handler_call_details.invocation_metadata or ():
            if key == protocol.AUTHORIZATION and hmac.compare_digest(str(value).encode(), self._expected):
                return continuation(handler_call_details)
        method = KNOWN_METHODS.get(handler_call_details.method, "unknown")
        self._metrics.rpc_requests.labels(method=method, code=grpc.StatusCode.UNAUTHENTICATED.name).inc()
        return _DENY


def _deny(request, context):
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (see --auth-token-file)")


_DENY = grpc.unary_unary_rpc_method_handler(_deny)


RPC_THREADS = 64
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", protocol.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", protocol.MAX_MESSAGE_BYTES),
    # Hundreds of idle workers keep connections open through long epochs.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.so_reuseport", 0),
]


def build_server(oracle, metrics: ChiefMetrics, address: str, token: str | None,
                 search_info: dict[str, Any], max_workers: int = RPC_THREADS) -> tuple[grpc.Server, int]:
    """A started server; returns it and the port it bound (useful with port 0)."""
    options = SERVER_OPTIONS
    interceptors = [TokenAuth(token, metrics)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
                         interceptors=interceptors, options=options)
    protos.get_service_grpc().add_OracleServicer_to_server(OracleService(oracle, metrics), server)
    server.add_generic_rpc_handlers((CoordinatorService(oracle, metrics, search_info).handler(),))
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the chief's gRPC port at {address}")
    server.start()
    return server, port
