"""ContentSet changes: every site of the namespace re-renders its fill plan.

All sites of the namespace are reconciled, not only the currently selected
ones, because a selector change also removes the ContentSet from sites it no
longer selects. Deletion is watched as an event (no finalizer: nothing
external to clean up), and the sites drop the entry from their plans.
"""

from __future__ import annotations

from typing import Any

import kopf

from edgefill_operator import names, reconcile
from edgefill_operator.handlers.common import kube, namespaced, now, run_step


def _resync_site(namespace: str, site: str) -> None:
    run_step(
        "EdgeSite",
        "contentset",
        namespace,
        site,
        lambda: reconcile.reconcile_site(kube(), namespace, site, now()),
    )


def _resync_sites(namespace: str) -> None:
    for site in reconcile.sites_in(kube(), namespace):
        _resync_site(namespace, site)


@kopf.on.resume(names.GROUP, names.VERSION, names.CONTENTSETS)
@kopf.on.create(names.GROUP, names.VERSION, names.CONTENTSETS)
@kopf.on.update(names.GROUP, names.VERSION, names.CONTENTSETS)
def reconcile_contentset(
    namespace: str | None, name: str, body: kopf.Body, reason: str, **_: Any
) -> None:
    ns = namespaced(namespace)
    _resync_sites(ns)
    run_step(
        "ContentSet",
        str(reason),
        ns,
        name,
        lambda: reconcile.reconcile_contentset(kube(), ns, name, now()),
        body,
    )


@kopf.on.event(names.GROUP, names.VERSION, names.CONTENTSETS)
def contentset_deleted(namespace: str | None, type: str, **_: Any) -> None:
    if type == "DELETED" and namespace:
        _resync_sites(namespace)
