"""Periodic steps: drift repair and status aggregation from the nodes' reports.

Every EdgeSite is re-applied and its nodes polled every 15 s, so a child
deleted or edited by hand is back within 30 s even if its watch event was
missed. ContentSet status is recomputed from the sites' aggregated status.
"""

from __future__ import annotations

from typing import Any

import kopf

from edgefill_operator import names, reconcile
from edgefill_operator.handlers.common import (
    TIMER_INTERVAL_SECONDS,
    kube,
    namespaced,
    now,
    run_step,
)
from edgefill_operator.nodes import HttpPoller

_poller = HttpPoller()


@kopf.timer(names.GROUP, names.VERSION, names.EDGESITES, interval=TIMER_INTERVAL_SECONDS)
def edgesite_timer(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> None:
    ns = namespaced(namespace)
    run_step(
        "EdgeSite",
        "timer",
        ns,
        name,
        lambda: reconcile.reconcile_site(kube(), ns, name, now(), poller=_poller),
        body,
    )


@kopf.timer(names.GROUP, names.VERSION, names.CONTENTSETS, interval=TIMER_INTERVAL_SECONDS)
def contentset_timer(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> None:
    ns = namespaced(namespace)
    run_step(
        "ContentSet",
        "timer",
        ns,
        name,
        lambda: reconcile.reconcile_contentset(kube(), ns, name, now()),
        body,
    )
