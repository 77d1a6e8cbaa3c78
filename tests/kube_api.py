"""A Kubernetes API server for the one thing the chief asks of it: StatefulSets' `scale` subresource.

There is no cluster on the test machines. This HTTP server answers the chief's real `kubernetes`
client, found through a kubeconfig written by `kubeconfig()`, as the API server does on
`/apis/apps/v1/namespaces/NS/statefulsets/NAME/scale`:

- GET returns an `autoscaling/v1` Scale; PATCH applies a merge or strategic-merge patch and
  returns the new Scale; a JSON patch (`application/json-patch+json`) must be a list of
  operations, or it is refused with 400 as the API server does;
- RBAC: every request needs the bearer token of the kubeconfig, and only (verb, name) pairs
  that `allow()` granted (such as those of a rendered Role) are served; others get 403;
- every request is recorded (`requests`), and a test changes replicas as `kubectl scale` or a
  `helm upgrade` would (`set_replicas`).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

TOKEN = "kube-api-test-token"
_SCALE = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/statefulsets/([^/]+)/scale$")


@dataclass
class Request:
    verb: str  # get, patch (RBAC verbs)
    namespace: str
    name: str
    content_type: str = ""
    body: object = None
    status: int = 0


@dataclass
class KubeApi:
    replicas: dict[tuple[str, str], int] = field(default_factory=dict)  # (namespace, name) -> replicas
    allowed: set[tuple[str, str, str]] = field(default_factory=set)  # (verb, namespace, name)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "KubeApi":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def allow(self, role: dict, namespace: str) -> None:
        """Grant what a rendered Role grants on statefulsets/scale."""
        for rule in role["rules"]:
            if "apps" in rule["apiGroups"] and "statefulsets/scale" in rule["resources"]:
                for name in rule.get("resourceNames", []):
                    self.allowed |= {(verb, namespace, name) for verb in rule["verbs"]}

    def set_replicas(self, namespace: str, name: str, replicas: int) -> None:
        with self._lock:
            self.replicas[(namespace, name)] = replicas

    def get_replicas(self, namespace: str, name: str) -> int:
        with self._lock:
            return self.replicas[(namespace, name)]

    def served(self, verb: str) -> list[Request]:
        return [r for r in self.requests if r.verb == verb and r.status == 200]

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "chief", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "chief"}}]}))
        return path

    def _scale(self, namespace: str, name: str) -> dict:
        replicas = self.replicas[(namespace, name)]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"replicas": replicas}, "status": {"replicas": replicas}}


def _handler(api: KubeApi):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _reply(self, request: Request | None, status: int, body: dict) -> None:
            if request is not None:
                request.status = status
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, request: Request | None, code: int, reason: str, message: str) -> None:
            self._reply(request, code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "reason": reason, "message": message, "code": code})

        def _serve(self, verb: str) -> None:
            match = _SCALE.match(self.path.split("?", 1)[0])
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not match:
                return self._status(None, 404, "NotFound", f"{self.path}: not served by this test API")
            namespace, name = match.groups()
            request = Request(verb, namespace, name, self.headers.get("Content-Type", ""))
            with api._lock:
                api.requests.append(request)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._status(request, 401, "Unauthorized", "Unauthorized")
                if (verb, namespace, name) not in api.allowed:
                    return self._status(request, 403, "Forbidden",
                                        f'statefulsets.apps "{name}" is forbidden: cannot {verb} resource '
                                        f'"statefulsets/scale" in namespace "{namespace}"')
                if (namespace, name) not in api.replicas:
                    return self._status(request, 404, "NotFound", f'statefulsets.apps "{name}" not found')
                if verb == "patch":
                    request.body = json.loads(raw)
                    kind = request.content_type.split(";")[0].strip()
                    if kind == "application/json-patch+json" and not isinstance(request.body, list):
                        return self._status(request, 400, "BadRequest", "json: cannot unmarshal object into Go "
                                                                        "value of type []handlers.jsonPatchOp")
                    if kind not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                        return self._status(request, 415, "UnsupportedMediaType", f"{kind}: not supported here")
                    replicas = request.body.get("spec", {}).get("replicas")
                    if not isinstance(replicas, int) or replicas < 0:
                        return self._status(request, 422, "Invalid", f"spec.replicas: invalid value {replicas!r}")
                    api.replicas[(namespace, name)] = replicas
                return self._reply(request, 200, api._scale(namespace, name))

        def do_GET(self):
            self._serve("get")

        def do_PATCH(self):
            self._serve("patch")

    return Handler
