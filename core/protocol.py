"""The wire protocol between workers, tools and the chief.

Two gRPC services share one port:
- `keras_tuner.Oracle`: keras-tuner 1.4's own service and protos, unchanged, so stock workers work.
- `ktc.Coordinator`: our additions (lease heartbeat, hand-back, status). Messages are JSON objects
  (UTF-8), so there is no generated code to keep in step with the protobuf runtime.

What keras-tuner's Trial proto cannot carry travels as call metadata, which stock servers ignore.
"""

from __future__ import annotations

import json
from typing import Any

from kt_cluster.core.config import ConfigError

from kt_cluster.core.config import ConfigError

ORACLE_SERVICE = "keras_tuner.Oracle"
COORDINATOR_SERVICE = "ktc.Coordinator"
COORDINATOR_METHODS = ("Heartbeat", "HandBack", "Status")

# Call metadata (keys are lower case; "-bin" keys carry bytes).
AUTHORIZATION = "authorization"  # "Bearer <token>"
SESSION = "x-ktc-session"  # one random id per worker process: tells a restarted pod from a twin
TUNER_ID = "x-ktc-tuner-id"
TRIAL_MESSAGE = "x-ktc-trial-message-bin"  # EndTrial: the error of a failed trial (UTF-8)
STOPPED_EARLY = "x-ktc-stopped-early"  # EndTrial: "1" when the trial obeyed an early stop

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_TRIAL_MESSAGE_BYTES = 6 * 1024  # gRPC's default metadata limit is 8 KiB
MAX_ID_LENGTH = 253


class ProtocolError(ValueError):
    """A malformed Coordinator message."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not a JSON object: {exc}") from exc
    except RecursionError:
        raise ProtocolError("not a JSON object: nested too deep") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a JSON object, got {type(message).__name__}")
    return message


def method_path(service: str, method: str) -> str:
    return f"/{service}/{method}"


def trim_message(message: str) -> bytes:
    """Keep the tail of a traceback: the error itself is on its last lines."""
    data = message.encode("utf-8", "replace")
    if len(data) <= MAX_TRIAL_MESSAGE_BYTES:
        return data
    return b"...\n" + data[-(MAX_TRIAL_MESSAGE_BYTES - 4):]


def check_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise ProtocolError(f"{field}: must be a printable string of 1 to {MAX_ID_LENGTH} characters")
    return value


def check_tuner_id(tuner_id: str | None) -> str:
    """A worker's `KERASTUNER_TUNER_ID`, refused when unusable."""
    if not tuner_id:
        raise ConfigError("KERASTUNER_TUNER_ID: must be set to this worker's id, such as worker-0")
    if "chief" in tuner_id:
        # keras-tuner turns any process whose id contains "chief" into a second chief.
        raise ConfigError(f"KERASTUNER_TUNER_ID: {tuner_id!r} contains 'chief', which keras-tuner reserves "
                          "for the chief; use an id such as worker-0")
    return tuner_id


def status(address: str, token: str | None, timeout: float = 10.0) -> dict[str, Any]:
    """One `ktc.Coordinator/Status` call, for `ktc status` and `ktc local`'s progress view."""
    metadata = [(AUTHORIZATION, f"Bearer {token}")] if token else []
    import grpc  # here: a worker's argument errors need none of it

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method_path(COORDINATOR_SERVICE, "Status"),
                                   request_serializer=encode, response_deserializer=decode)
        return call({}, metadata=metadata, timeout=timeout)
