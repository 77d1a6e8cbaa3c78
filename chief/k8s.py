"""Keep the worker StatefulSet at zero replicas once the search is over, and scale it back up
when a start reopens the search.

Workers exit 0 once told the search is over, and a StatefulSet restarts them (restartPolicy
Always): without this they would start, hear "over" and exit in a loop, each holding a GPU. So
the chief scales them to zero when the search ends and, while it lingers, scales them back to
zero whenever something raised them again (a `helm upgrade` rendering `workers.replicas`, a
`kubectl scale`), for as long as the search stays over. The chief's RBAC allows exactly this:
get and patch on the `statefulsets/scale` subresource of its own worker StatefulSet.

A search reopened by a raised budget (`kt_cluster.chief.main`) needs its workers again: the chief
scales them to the chart's `workers.replicas` (`--worker-replicas`). The chart renders that count
too on an upgrade that changes the search config, but the old chief, still lingering while the
upgrade applies, may scale them back to zero before it is replaced: the new chief's scale-up comes
after it, so the two end in agreement.

In a pod the API is reached with the pod's service account; elsewhere (`ktc chief` started by
hand next to a cluster) with the kubeconfig (`KUBECONFIG`, else `~/.kube/config`).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("ktc.chief")

# The client would send a dict body as a JSON patch (a list of operations), which the API rejects.
MERGE_PATCH = "application/merge-patch+json"


def parse_target(value: str) -> tuple[str, str]:
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"--scale-workers-on-exit: expected NAMESPACE/STATEFULSET, got {value!r}")
    return namespace, name


class WorkerScaler:
    """The `scale` subresource of one StatefulSet. API errors are logged (each new one once) and
    never raised: the search's results are written whatever the API says."""

    def __init__(self, target: str):
        self.namespace, self.name = parse_target(target)
        self._apps = None
        self._last_error: str | None = None
        # Imported at the chief's start, not at the first scale: the client takes seconds to
        # import (tens of seconds on a busy node), and that scale is due the moment the search
        # ends or the chief refuses its config.
        import kubernetes.client  # noqa: F401
        import kubernetes.config  # noqa: F401

    def _api(self):
        if self._apps is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config(os.environ.get("KUBECONFIG"))  # read now, not at import
            self._apps = client.AppsV1Api()
        return self._apps

    def scale_to_zero(self, why: str = "the search is over") -> bool:
        try:
            self._patch_zero()
        except Exception as exc:  # noqa: BLE001 - API errors, no cluster config
            self._failed(exc)
            return False
        log.info("scaled statefulset %s/%s to zero: %s", self.namespace, self.name, why)
        return True

    def scale_to(self, replicas: int) -> bool:
        """Scale to `replicas`: the workers a reopened search needs again."""
        try:
            self._api().patch_namespaced_stateful_set_scale(self.name, self.namespace, {"spec": {"replicas": replicas}},
                                                            _content_type=MERGE_PATCH)
        except Exception as exc:  # noqa: BLE001 - API errors, no cluster config
            self._failed(exc, replicas)
            return False
        log.info("scaled statefulset %s/%s to %d: the search goes on", self.namespace, self.name, replicas)
        return True

    def keep_at_zero(self, why: str = "the search is over") -> int:
        """Scale back to zero if something raised the replicas; returns what they had been raised
        to (0 when they were at zero, or when the API could not be asked)."""
        try:
            scale = self._api().read_namespaced_stateful_set_scale(self.name, self.namespace)
            raised = scale.spec.replicas or 0
            if raised:
                self._patch_zero()
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return 0
        self._last_error = None
        if raised:
            log.warning("%s: scaled statefulset %s/%s from %d back to zero", why, self.namespace, self.name, raised)
        return raised

    def _patch_zero(self) -> None:
        self._api().patch_namespaced_stateful_set_scale(self.name, self.namespace, {"spec": {"replicas": 0}},
                                                        _content_type=MERGE_PATCH)

    def _failed(self, exc: Exception, replicas: int = 0) -> None:
        message = f"could not scale statefulset {self.namespace}/{self.name} to {replicas or 'zero'}: {exc}"
        if message != self._last_error:
            log.error("%s", message)
            self._last_error = message
