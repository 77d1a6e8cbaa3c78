"""The chief's `grpc.health.v1.Health` service: what Kubernetes' native gRPC probe asks.

Every service the chief serves (the server as a whole, `""`, and `keras_tuner.Oracle` and
`ktc.Coordinator` by name) is NOT_SERVING until `serving()`, which `ChiefServer` calls once its
gRPC server has started: the chief restores the oracle before it builds the server, so SERVING
means that the oracle is restored and answers on this port. `stopping()` turns everything
NOT_SERVING for good, before the server refuses calls.

`Check` is the one call that needs no bearer token (`UNAUTHENTICATED_METHODS`): the kubelet
cannot send one, and the answer reveals nothing but SERVING or NOT_SERVING. `Watch` (a stream
held open) and every other call stay behind the token.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kt_cluster.core import protocol

SERVICES = (health.OVERALL_HEALTH, protocol.ORACLE_SERVICE, protocol.COORDINATOR_SERVICE)
UNAUTHENTICATED_METHODS = frozenset({f"/{health.SERVICE_NAME}/Check"})

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ChiefHealth:
    """The health servicer of one `grpc.aio` server; its methods run on that server's loop."""

    def __init__(self) -> None:
        self._servicer = health.aio.HealthServicer()  # its "" starts SERVING: not before serving()

    async def register(self, server: grpc.aio.Server) -> None:
        for service in SERVICES:
            await self._servicer.set(service, NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def serving(self) -> None:
        for service in SERVICES:
            await self._servicer.set(service, SERVING)

    async def stopping(self) -> None:
        await self._servicer.enter_graceful_shutdown()

