"""Child events: a StatefulSet's readiness changes, or any child is deleted.

Reacting here makes Ready follow the StatefulSet within seconds and brings a
deleted child back at once; the timer remains the safety net. Only objects
labelled as ours are considered, and the owner is read from the owner
reference (never guessed from the name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from edgefill_operator import names, reconcile
from edgefill_operator.handlers.common import kube, now, run_step

OURS = {"app.kubernetes.io/managed-by": names.MANAGED_BY}


def _owner_site(meta: Mapping[str, Any]) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "EdgeSite" and ref.get("apiVersion") == names.API_VERSION:
            return str(ref["name"])
    return None


def _resync_owner(namespace: str | None, meta: Mapping[str, Any]) -> None:
    site = _owner_site(meta)
    if site is None or not namespace:
        return
    run_step(
        "EdgeSite",
        "child",
        namespace,
        site,
        lambda: reconcile.reconcile_site(kube(), namespace, site, now()),
    )


@kopf.on.event("apps", "v1", "statefulsets", labels=OURS)
def statefulset_event(namespace: str | None, meta: kopf.Meta, type: str, **_: Any) -> None:
    if type in ("MODIFIED", "DELETED"):
        _resync_owner(namespace, meta)


@kopf.on.event("v1", "services", labels=OURS)
@kopf.on.event("v1", "configmaps", labels=OURS)
@kopf.on.event("v1", "serviceaccounts", labels=OURS)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=OURS)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=OURS)
def child_event(namespace: str | None, meta: kopf.Meta, type: str, **_: Any) -> None:
    if type == "DELETED":
        _resync_owner(namespace, meta)
