"""The chief's gRPC server: keras-tuner's Oracle service, our Coordinator service, auth.

`OracleService` answers keras-tuner 1.4's `keras_tuner.Oracle` RPCs exactly as stock does on the
wire, but maps bad requests to gRPC status codes instead of crashing, reads our extra metadata
(session, failure message, early stop) and paces IDLE replies to stock clients, which retry
without back-off. `CoordinatorService` serves `ktc.Coordinator` (JSON messages).

`ChiefServer` runs them on grpc.aio, one event loop in one thread: every RPC needs the oracle's
lock anyway, and a thread pool spent most of the chief's CPU handing calls between threads
(docs/benchmarks.md). Handlers call the oracle directly, so the journal records of a call are
flushed before its reply is sent, as before; only the stock clients' IDLE pause is awaited.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import inspect
import math
import socket
import threading
import time
from typing import Any, Callable

import grpc
import keras_tuner
from google.protobuf.message import DecodeError
from keras_tuner.engine import trial as trial_module

from kt_cluster.chief import health
from kt_cluster.chief.exporter import ChiefMetrics
from kt_cluster.chief.errors import NotHolder, StateLost, UnknownTrial
from kt_cluster.chief.state import JournalWriteError
from kt_cluster.core import compat, protocol

STOCK_IDLE_PAUSE_SECONDS = 0.5
ORACLE_METHODS = ("GetSpace", "UpdateSpace", "CreateTrial", "UpdateTrial", "EndTrial", "GetTrial", "GetBestTrials")
KNOWN_METHODS = {protocol.method_path(protocol.ORACLE_SERVICE, m): m for m in ORACLE_METHODS} | {
    protocol.method_path(protocol.COORDINATOR_SERVICE, m): m for m in protocol.COORDINATOR_METHODS}


MAX_STEP = 10**9  # of an UpdateTrial's step and a heartbeat's epoch
MAX_METRICS = 256  # per UpdateTrial
FLOAT32_MAX = 3.4028234663852886e38


class BadRequest(ValueError):
    pass


def _serialize(message) -> bytes:
    return message.SerializeToString()


def _served(method: str, request_class: str | None = None) -> Callable:
    """Time the call, count it by status code, and turn our exceptions into gRPC statuses.

    `request_class`: the handler gets the request's raw bytes, parsed here as that keras-tuner
    message, so that an undecodable body is INVALID_ARGUMENT (grpc's own deserializer, which runs
    before any handler, answers UNKNOWN)."""

    def decorator(handler: Callable) -> Callable:
        is_async = inspect.iscoroutinefunction(handler)

        @functools.wraps(handler)
        async def wrapper(self, request, context):
            start, code, detail = time.perf_counter(), grpc.StatusCode.OK, ""
            try:
                if request_class is not None:
                    request = _parse(getattr(self.messages, request_class), request)
                reply = handler(self, request, context)
                return await reply if is_async else reply
            except (JournalWriteError, StateLost) as exc:
                code, detail = grpc.StatusCode.UNAVAILABLE, f"{method}: {exc}; nothing was changed"
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
            await context.abort(code, detail)

        return wrapper

    return decorator


def _parse(message_class, raw: bytes):
    try:
        return message_class.FromString(raw)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BadRequest(f"not a {message_class.__name__} ({exc})") from None


def _caller(context) -> tuple[str | None, str | None, dict[str, Any]]:
    """(tuner id, session, metadata). A kt-cluster worker sends a session: it must name its tuner
    id too, so the holder check always applies to it."""
    pairs = context.invocation_metadata() or ()
    metadata = dict(pairs)
    for key in (protocol.SESSION, protocol.TUNER_ID):
        if sum(1 for k, _ in pairs if k == key) > 1:
            raise BadRequest(f"{key}: sent more than once")
    session = metadata.get(protocol.SESSION)
    tuner_id = metadata.get(protocol.TUNER_ID)
    if session is not None:
        protocol.check_id(session, protocol.SESSION)
        if tuner_id is None:
            raise BadRequest(f"{protocol.TUNER_ID}: required with {protocol.SESSION} (a kt-cluster worker)")
    if tuner_id is not None:
        protocol.check_id(tuner_id, protocol.TUNER_ID)
    return tuner_id, session, metadata


def check_step(step: Any, field: str) -> int:
    if not isinstance(step, int) or isinstance(step, bool) or not -1 <= step <= MAX_STEP:
        raise BadRequest(f"{field}: must be an integer from -1 to {MAX_STEP}, got {str(step)[:40]}")
    return step


def _check_metrics(metrics) -> dict[str, float]:
    """Metric values must be float32-finite (the Trial proto carries floats: 1e308 would arrive as
    inf). NaN is accepted: it says the run diverged; an objective that is NaN at the end makes
    the trial INVALID (retried), as keras-tuner does."""
    if len(metrics) > MAX_METRICS:
        raise BadRequest(f"metrics: at most {MAX_METRICS} per call, got {len(metrics)}")
    checked = {}
    for name, value in metrics.items():
        protocol.check_id(name, "metrics key")
        if abs(value) > FLOAT32_MAX:  # inf too; NaN compares False
            raise BadRequest(f"metric {name!r}: {value!r} is not a finite float32 value")
        checked[name] = float(value)
    return checked


class OracleService:
    """keras-tuner's `Oracle` service; each method gets its request's raw bytes (see `_served`).

    `allow_new_hyperparameters`: whether UpdateSpace may add to the search space (from kt-cluster
    workers only: a stock client cannot be told apart from any other caller)."""

    def __init__(self, oracle, metrics: ChiefMetrics, allow_new_hyperparameters: bool = True):
        self.oracle = oracle
        self.metrics = metrics
        self.messages = compat.oracle_messages()
        self.protos = compat.TrialProtos()  # cheaper Trial protos for replies and EndTrial
        self.allow_new_hyperparameters = allow_new_hyperparameters

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(self, name),
                                                              response_serializer=_serialize)
                    for name in ORACLE_METHODS}
        return grpc.method_handlers_generic_handler(protocol.ORACLE_SERVICE, handlers)

    @_served("GetSpace", "GetSpaceRequest")
    def GetSpace(self, request, context):
        return self.messages.GetSpaceResponse(hyperparameters=self.oracle.get_space().to_proto())

    @_served("UpdateSpace", "UpdateSpaceRequest")
    def UpdateSpace(self, request, context):
        _, session, _ = _caller(context)
        try:
            hyperparameters = keras_tuner.HyperParameters.from_proto(request.hyperparameters)
        except Exception as exc:  # noqa: BLE001 - whatever keras-tuner makes of a malformed proto
            raise BadRequest(f"hyperparameters: {type(exc).__name__}: {exc}") from None
        if not self.allow_new_hyperparameters:
            why_not = "the search's config does not allow new hyperparameters (allow_new_hyperparameters)"
        elif session is None:
            why_not = "only kt-cluster workers may add hyperparameters"
        else:
            why_not = ""
        self.oracle.update_space(hyperparameters, allow_new=not why_not, why_not=why_not)
        return self.messages.UpdateSpaceResponse()

    @_served("CreateTrial", "CreateTrialRequest")
    async def CreateTrial(self, request, context):
        tuner_id = protocol.check_id(request.tuner_id, "tuner_id")
        _, session, _ = _caller(context)
        trial = self.oracle.create_trial(tuner_id, session=session)
        if trial.status == trial_module.TrialStatus.IDLE and session is None:
            await asyncio.sleep(STOCK_IDLE_PAUSE_SECONDS)  # stock workers retry IDLE at once, in a busy loop
        if trial.status != trial_module.TrialStatus.RUNNING:
            return self.messages.CreateTrialResponse(trial=trial.to_proto())
        reply = self.messages.CreateTrialResponse()
        self.protos.to_proto(trial, into=reply.trial)
        return reply

    @_served("UpdateTrial", "UpdateTrialRequest")
    def UpdateTrial(self, request, context):
        tuner_id, session, _ = _caller(context)
        trial_id = protocol.check_id(request.trial_id, "trial_id")
        check_step(request.step, "step")
        metrics = _check_metrics(request.metrics)
        trial = self.oracle.update_trial(trial_id, metrics, step=request.step, tuner_id=tuner_id, session=session)
        reply = self.messages.UpdateTrialResponse()
        self.protos.to_proto(trial, metrics, request.step, into=reply.trial)
        if trial_id in self.oracle.stop_requested:
            reply.trial.status = compat.status_proto(trial_module.TrialStatus.STOPPED)
        return reply

    @_served("EndTrial", "EndTrialRequest")
    def EndTrial(self, request, context):
        tuner_id, session, metadata = _caller(context)
        protocol.check_id(request.trial.trial_id, "trial.trial_id")
        try:
            trial = self.protos.from_proto(request.trial)
        except Exception as exc:  # noqa: BLE001 - whatever keras-tuner makes of a malformed proto
            raise BadRequest(f"trial: {type(exc).__name__}: {exc}") from None
        if trial.status not in (trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.INVALID,
                                trial_module.TrialStatus.FAILED):
            raise BadRequest(f"trial.status must be COMPLETED, INVALID or FAILED, got {trial.status}")
        message = metadata.get(protocol.TRIAL_MESSAGE)
        if message:
            trial.message = message.decode("utf-8", "replace")
        self.oracle.end_trial(trial, tuner_id=tuner_id, session=session,
                              stopped_early=metadata.get(protocol.STOPPED_EARLY) == "1")
        self.protos.forget(trial.trial_id)
        return self.messages.EndTrialResponse()

    @_served("GetTrial", "GetTrialRequest")
    def GetTrial(self, request, context):
        trial = self.oracle.get_trial(protocol.check_id(request.trial_id, "trial_id"))
        return self.messages.GetTrialResponse(trial=trial.to_proto())

    @_served("GetBestTrials", "GetBestTrialsRequest")
    def GetBestTrials(self, request, context):
        if request.num_trials < 0 or request.num_trials > 10_000:
            raise BadRequest(f"num_trials must be 0 to 10000, got {request.num_trials}")
        trials = self.oracle.get_best_trials(request.num_trials)
        return self.messages.GetBestTrialsResponse(trials=[t.to_proto() for t in trials])


def status_reply(oracle, search_info: dict[str, Any]) -> dict[str, Any]:
    """What `ktc.Coordinator/Status` answers (and the chief keeps as `status.json` at the end)."""
    return dict(oracle.status(), search=search_info)


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
        epoch = check_step(request.get("epoch", -1), "epoch")
        return self.oracle.heartbeat(tuner_id, session, trial_id, epoch)

    @_served("HandBack")
    def HandBack(self, raw: bytes, context) -> dict[str, Any]:
        tuner_id, session, trial_id = self._ids(protocol.decode(raw))
        return {"accepted": self.oracle.hand_back(tuner_id, session, trial_id)}

    @_served("Status")
    def Status(self, raw: bytes, context) -> dict[str, Any]:
        protocol.decode(raw)
        return status_reply(self.oracle, self.search_info)

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


class TokenAuth(grpc.aio.ServerInterceptor):
    """Every call must carry exactly one `authorization: Bearer <token>`; others get
    UNAUTHENTICATED. Two authorization headers are refused even when one is right: a proxy or
    client library that merges or picks one of them must not decide who is authenticated."""

    def __init__(self, token: str, metrics: ChiefMetrics):
        self._expected = f"Bearer {token}".encode()
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method in health.UNAUTHENTICATED_METHODS:  # kubelet's probe
            return await continuation(handler_call_details)
        given = [value for key, value in handler_call_details.invocation_metadata or ()
                 if key == protocol.AUTHORIZATION]
        if len(given) == 1:
            value = given[0] if isinstance(given[0], bytes) else str(given[0]).encode("utf-8", "replace")
            if hmac.compare_digest(value, self._expected):
                return await continuation(handler_call_details)
        method = KNOWN_METHODS.get(handler_call_details.method, "unknown")
        self._metrics.rpc_requests.labels(method=method, code=grpc.StatusCode.UNAUTHENTICATED.name).inc()
        return _DENY


async def _deny(request, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (see --auth-token-file)")


_DENY = grpc.unary_unary_rpc_method_handler(_deny)


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


def _bind_refusal(address: str) -> str:
    """Why the system refuses `address` (gRPC says only "Failed to bind"), found by binding it."""
    host, _, port = address.rpartition(":")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as probe:
            probe.bind((host.strip("[]"), int(port)))
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    except ValueError:
        return "not a host:port address"
    return "gRPC refused it"


class ChiefServer:
    """The started gRPC server, serving from its own event-loop thread; `port` is the bound port."""

    def __init__(self, oracle, metrics: ChiefMetrics, address: str, token: str | None,
                 search_info: dict[str, Any], allow_new_hyperparameters: bool = True):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rpc", daemon=True)
        self._thread.start()
        try:
            self.port = self._run(self._start(oracle, metrics, address, token, search_info, allow_new_hyperparameters))
        except BaseException:
            self._close_loop()
            raise

    def _run(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self, oracle, metrics, address, token, search_info, allow_new_hyperparameters) -> int:
        # Created inside the loop: a grpc.aio server belongs to the loop it was made in.
        self._server = grpc.aio.server(interceptors=[TokenAuth(token, metrics)] if token else [],
                                       options=SERVER_OPTIONS)
        self._server.add_generic_rpc_handlers((OracleService(oracle, metrics, allow_new_hyperparameters).handler(),))
        self._server.add_generic_rpc_handlers((CoordinatorService(oracle, metrics, search_info).handler(),))
        self._health = health.ChiefHealth()
        await self._health.register(self._server)
        try:
            port = self._server.add_insecure_port(address)
        except RuntimeError:  # grpc raises where older versions returned 0
            port = 0
        if port == 0:
            raise OSError(f"cannot bind the chief's gRPC port at {address}: {_bind_refusal(address)}")
        await self._server.start()
        await self._health.serving()
        return port

    def stop(self, grace: float) -> None:
        """Refuse new calls, give running ones `grace` seconds, then close the loop."""
        try:
            self._run(self._health.stopping(), timeout=5)
            self._run(self._server.stop(grace), timeout=grace + 10)
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
