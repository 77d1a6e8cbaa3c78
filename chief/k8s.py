"""Scale the worker StatefulSet to zero when the search is over.

Workers exit 0 once told the search is over, and a StatefulSet restarts them (restartPolicy
Always): without this they would start, hear "over" and exit in a loop. The chief's RBAC allows
exactly this: get/patch on the `statefulsets/scale` subresource of its own worker StatefulSet.
"""

from __future__ import annotations

import logging

log = logging.getLogger("ktc.chief")


def parse_target(value: str) -> tuple[str, str]:
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise ValueError(f"--scale-workers-on-exit: expected NAMESPACE/STATEFULSET, got {value!r}")
    return namespace, name


def scale_to_zero(target: str) -> bool:
    """Patch the scale subresource; a failure is logged, never fatal (the results are written)."""
    from kubernetes import client, config

    namespace, name = parse_target(target)
    try:
        config.load_incluster_config()
        client.AppsV1Api().patch_namespaced_stateful_set_scale(name, namespace, {"spec": {"replicas": 0}})
    except Exception as exc:  # noqa: BLE001 - API errors, missing in-cluster config
        log.error("could not scale statefulset %s/%s to zero: %s", namespace, name, exc)
        return False
    log.info("scaled statefulset %s/%s to zero: the search is over", namespace, name)
    return True
