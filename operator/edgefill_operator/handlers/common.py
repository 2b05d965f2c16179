"""Shared plumbing of the handler modules: the API door, timing, metrics and Events."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import cast

import kopf
import structlog

from edgefill_operator import metrics
from edgefill_operator.kube import Kube, KubeError
from edgefill_operator.reconcile import Outcome

log = structlog.get_logger("edgefill.operator")

TIMER_INTERVAL_SECONDS = 15.0
"""Drift repair and status polling period; a deleted or edited child returns within 30 s."""


@cache
def kube() -> Kube:
    return Kube.from_environment()


def now() -> datetime:
    return datetime.now(UTC)


def namespaced(namespace: str | None) -> str:
    """Our kinds are namespaced; kopf types the argument as optional for cluster kinds."""
    if not namespace:
        raise kopf.PermanentError("EdgeSite and ContentSet objects are namespaced")
    return namespace


def run_step(
    kind: str,
    trigger: str,
    namespace: str,
    name: str,
    step: Callable[[], Outcome],
    body: kopf.Body | None = None,
) -> None:
    """Run one reconcile step with metrics and logs; API errors become kopf retries."""
    started = time.monotonic()
    try:
        outcome = step()
    except KubeError as exc:
        metrics.RECONCILES.labels(kind=kind, trigger=trigger, result="error").inc()
        metrics.ERRORS.labels(kind=kind, reason=exc.reason or str(exc.status)).inc()
        log.warning(
            "reconcile_failed",
            kind=kind,
            namespace=namespace,
            name=name,
            trigger=trigger,
            status=exc.status,
            error=str(exc),
        )
        raise kopf.TemporaryError(str(exc), delay=5) from exc
    finally:
        metrics.DURATION.labels(kind=kind).observe(time.monotonic() - started)
    result = "error" if outcome.errors else ("gone" if not outcome.found else "ok")
    metrics.RECONCILES.labels(kind=kind, trigger=trigger, result=result).inc()
    target = body if body is not None else _event_target(outcome)
    for reason, message in outcome.notices:
        if target is not None:
            kopf.event(target, type="Normal", reason=reason, message=message)
    for t in outcome.transitions:
        log.info(
            "condition_changed",
            kind=kind,
            namespace=namespace,
            name=name,
            condition=t.type,
            old=t.old,
            new=t.new,
            reason=t.reason,
        )
        # An Event per flip, and for a condition's first appearance only when it is good
        # news (a freshly created site being not ready yet is no warning).
        if target is not None and (t.old is not None or t.new == "True"):
            event_type = "Warning" if _is_bad(t.type, t.new) else "Normal"
            kopf.event(
                target,
                type=event_type,
                reason=t.reason,
                message=f"{t.type} is {t.new}: {t.message}",
            )


def _event_target(outcome: Outcome) -> kopf.Body | None:
    """The reconciled object as an Event target when the trigger was another object."""
    if outcome.obj is None:
        return None
    meta = outcome.obj["metadata"]
    ref = {
        "apiVersion": outcome.obj.get("apiVersion"),
        "kind": outcome.obj.get("kind"),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta},
    }
    return cast(kopf.Body, ref)  # kopf.event only reads apiVersion, kind and metadata


def _is_bad(condition: str, status: str) -> bool:
    return (condition == "Degraded" and status == "True") or (
        condition in ("Ready", "Filled") and status == "False"
    )
