"""`ktc status`: ask a running chief how its search is going."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import grpc

from kt_cluster import endpoints
from kt_cluster.core.config import ConfigError
from kt_cluster.core.protocol import status
from kt_cluster.core.summary import STATUS_FILE
from kt_cluster.progress import render


def show_status(address: str, token: str | None, as_json: bool = False) -> int:
    try:
        reply = status(address, token)
    except grpc.RpcError as exc:
        print(f"ktc status: chief at {address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2) if as_json else render(reply))
    return 0


def show_local_status(results: Path, search_id: str | None, token_file: str | None, as_json: bool = False) -> int:
    """The status of a `ktc local` search found in `results`: live from its chief while it runs,
    the chief's final status once it is over."""
    path = endpoints.find(results, search_id)
    where = endpoints.read(path)
    final = Path(where["search_dir"]) / STATUS_FILE
    ended = final.exists() and final.stat().st_mtime >= path.stat().st_mtime  # by this run's chief
    token_file = token_file or where["token_file"]
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--auth-token-file: cannot read {token_file} ({exc.strerror})") from exc
    try:
        reply = status(where["chief"], token, timeout=3.0)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE or not ended:
            print(f"ktc status: chief at {where['chief']}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        reply = json.loads(final.read_text())
        if not as_json:
            print(f"(the chief has exited; its final status, from {final})")
    print(json.dumps(reply, indent=2) if as_json else render(reply))
    return 0
