"""keras-tuner behind one seam: every use of its internals lives here, each with its reason.

kt-cluster builds on keras-tuner's distributed mode, whose wire protos and several behaviours are
reachable only through `keras_tuner.src` or underscore names. Keeping every such reach in this
module means a new keras-tuner release is checked here (and by the differential tests against
stock keras-tuner), not across the code base.
"""

from __future__ import annotations

from keras_tuner.src import protos as _protos  # the generated Oracle service: no public alias


def oracle_messages():
    """keras-tuner's generated request/response classes (module `service_pb2`)."""
    return _protos.get_service()


def oracle_stub_class():
    """The client stub of the `keras_tuner.Oracle` service."""
    return _protos.get_service_grpc().OracleStub


def oracle_servicer_class():
    """The server base class of the `keras_tuner.Oracle` service."""
    return _protos.get_service_grpc().OracleServicer


def add_oracle_servicer(servicer, server) -> None:
    _protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)


def trial_proto_class():
    """The `Trial` message of keras-tuner's protos."""
    return _protos.get_proto().Trial
