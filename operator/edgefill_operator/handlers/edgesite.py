"""EdgeSite lifecycle: create, update and resume reconcile the site's children.

A site's peering also shapes other sites' children: a parent's or sibling's
peer NetworkPolicy admits the sites that name it. So after a site changes,
the sites it names are reconciled too, and when a site is deleted every site
of its namespace is (the timer would get there within 15 s anyway).

Deletion needs no handler and no finalizer: every child carries an owner
reference, so the garbage collector removes them; there is no external
cleanup to do.
"""

from __future__ import annotations

from typing import Any

import kopf

from edgefill_operator import names, reconcile
from edgefill_operator.handlers.common import kube, namespaced, now, run_step
from edgefill_operator.planning import upstream_refs


def _resync(namespace: str, name: str, trigger: str) -> None:
    run_step(
        "EdgeSite",
        trigger,
        namespace,
        name,
        lambda: reconcile.reconcile_site(kube(), namespace, name, now()),
    )


@kopf.on.resume(names.GROUP, names.VERSION, names.EDGESITES)
@kopf.on.create(names.GROUP, names.VERSION, names.EDGESITES)
@kopf.on.update(names.GROUP, names.VERSION, names.EDGESITES)
def reconcile_edgesite(
    namespace: str | None, name: str, body: kopf.Body, reason: str, **_: Any
) -> None:
    ns = namespaced(namespace)
    run_step(
        "EdgeSite",
        str(reason),
        ns,
        name,
        lambda: reconcile.reconcile_site(kube(), ns, name, now()),
        body,
    )
    for ref, _role in upstream_refs(body):
        _resync(ref.namespace, ref.name, "peer-site")


@kopf.on.event(names.GROUP, names.VERSION, names.EDGESITES)
def edgesite_deleted(namespace: str | None, type: str, **_: Any) -> None:
    if type == "DELETED" and namespace:
        for site in reconcile.sites_in(kube(), namespace):
            _resync(namespace, site, "peer-site")
