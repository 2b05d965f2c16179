"""EdgeSite lifecycle: create, update and resume reconcile the site's children.

Deletion needs no handler and no finalizer: every child carries an owner
reference, so the garbage collector removes them; there is no external
cleanup to do.
"""

from __future__ import annotations

from typing import Any

import kopf

from edgefill_operator import names, reconcile
from edgefill_operator.handlers.common import kube, namespaced, now, run_step


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
