"""`ktc status`: ask a running chief how its search is going."""

from __future__ import annotations

import json
import sys

import grpc

from kt_cluster.progress import render
from kt_cluster.core.protocol import status


def show_status(address: str, token: str | None, as_json: bool = False) -> int:
    try:
        reply = status(address, token)
    except grpc.RpcError as exc:
        print(f"ktc status: chief at {address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2) if as_json else render(reply))
    return 0
