"""One reconcile step per object kind: read, render, apply, observe, report.

Level-based and idempotent: create, update, resume, the timer and child
events all call the same step, which reads the current objects, renders the
children in full, server-side applies them and recomputes status from what it
observes. Re-running a step that died half-way (kopf re-runs handlers that
were in flight) applies the same objects again, which is a no-op.

Steps for the same site are serialised by a lock, because the timer, a child
event and a ContentSet change can ask for the same site at once; different
sites reconcile in parallel.
"""

from __future__ import annotations

import secrets
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from edgefill_operator import metrics, names
from edgefill_operator.conditions import Condition, Transition, merge
from edgefill_operator.kube import ClusterApi, KubeError
from edgefill_operator.nodes import NodeAddress, Poller
from edgefill_operator.planning import (
    SiteRef,
    downstream_sites,
    effective_copies,
    fill_plan,
    qualified,
    selected_sites,
    site_replicas,
    upstream_refs,
)
from edgefill_operator.render import (
    SiteInputs,
    Upstream,
    generates_peer_secret,
    ports,
    render_children,
    render_generated_peer_secret,
)
from edgefill_operator.report import (
    Progress,
    aggregate_site,
    contentset_progress,
    site_status_fields,
)

log = structlog.get_logger("edgefill.operator")

REPORT_FIELDS = ("nodesReporting", "bytesCached", "objectsCached", "traffic", "fill")

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def _site_lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks[(namespace, name)]


# What this process manages, for the edgefill_operator_managed_objects gauge.
_managed_sites: dict[tuple[str, str], dict[str, int]] = {}
_managed_contentsets: set[tuple[str, str]] = set()


def _record_managed(
    key: tuple[str, str], children: dict[str, int] | None, *, contentset: bool = False
) -> None:
    with _locks_guard:
        if contentset:
            if children is None:
                _managed_contentsets.discard(key)
            else:
                _managed_contentsets.add(key)
        elif children is None:
            _managed_sites.pop(key, None)
        else:
            _managed_sites[key] = children
        totals: dict[str, int] = defaultdict(int)
        for per_site in _managed_sites.values():
            for kind, count in per_site.items():
                totals[kind] += count
        totals["EdgeSite"] = len(_managed_sites)
        totals["ContentSet"] = len(_managed_contentsets)
    for kind, count in totals.items():
        metrics.MANAGED.labels(kind=kind).set(count)


# Generated peer Secrets known to exist, by (namespace, site, site uid): one create each.
_peer_secrets: set[tuple[str, str, str]] = set()

PEER_SECRET_BYTES = 32


def ensure_peer_secret(api: ClusterApi, inputs: SiteInputs, *, recheck: bool = False) -> bool:
    """Create the site's generated peer Secret once (random, never logged, never replaced).

    Only ``create`` is used: an existing Secret of that name is kept as it is,
    so a value the pods already share never changes under them, and the
    operator needs no permission to read Secrets. Event-driven steps skip the
    request once the Secret is known to exist; ``recheck`` (the timer) asks
    again, so a Secret deleted by hand is back within one timer period.
    Returns whether this call created it.
    """
    key = (inputs.namespace, inputs.name, str(inputs.site["metadata"].get("uid", "")))
    with _locks_guard:
        if key in _peer_secrets and not recheck:
            return False
    value = secrets.token_urlsafe(PEER_SECRET_BYTES)  # 32 random bytes, base64url text
    created = api.create(render_generated_peer_secret(inputs, value))
    metrics.APPLIES.labels(kind="Secret", result="ok").inc()
    if created:
        log.info("peer_secret_generated", namespace=inputs.namespace, site=inputs.name)
    with _locks_guard:
        _peer_secrets.add(key)
    return created


def forget_peer_secret(namespace: str, name: str) -> None:
    with _locks_guard:
        for key in [k for k in _peer_secrets if k[:2] == (namespace, name)]:
            _peer_secrets.discard(key)


@dataclass
class Outcome:
    """What a step did: the handler turns transitions into Events."""

    found: bool
    transitions: list[Transition] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notices: list[tuple[str, str]] = field(default_factory=list)
    """(reason, message) of Normal Events about things the step did, beyond transitions."""
    obj: Mapping[str, Any] | None = None
    """The object as read, so Events can name it even when kopf gave no body."""


def _status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Merge patch turning ``old`` into ``new``: keys we no longer report are nulled."""
    patch: dict[str, Any] = dict(new)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def site_conditions(
    *,
    replicas: int,
    sts: Mapping[str, Any] | None,
    apply_errors: Sequence[str],
    missing_upstreams: Sequence[str],
    figures_complete: bool,
    unshared_peer_secret: bool = False,
    nodes_reporting: int,
    plan_size: int,
    total: Progress,
) -> list[Condition]:
    """Ready, Progressing, Degraded and Filled of an EdgeSite from what was observed."""
    st = (sts or {}).get("status") or {}
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    current = sts is not None and int(st.get("observedGeneration") or 0) >= int(
        (sts.get("metadata") or {}).get("generation") or 0
    )
    rolling = not current or updated < replicas or ready < replicas

    if apply_errors:
        ready_c = Condition(
            "Ready",
            "False",
            "ApplyFailed",
            "children could not be applied: " + "; ".join(apply_errors),
        )
    elif replicas == 0:
        ready_c = Condition("Ready", "True", "ScaledToZero", "the site is parked (replicas: 0)")
    elif ready >= replicas and current:
        ready_c = Condition(
            "Ready", "True", "AllNodesReady", f"{ready}/{replicas} cache nodes ready"
        )
    else:
        ready_c = Condition(
            "Ready", "False", "NodesNotReady", f"{ready}/{replicas} cache nodes ready"
        )

    filling = figures_complete and plan_size > 0 and not total.complete
    if rolling and replicas > 0:
        prog = Condition(
            "Progressing", "True", "RollingOut", f"{updated}/{replicas} updated, {ready} ready"
        )
    elif filling:
        prog = Condition("Progressing", "True", "Filling", f"fill at {total.percent()}")
    else:
        prog = Condition("Progressing", "False", "Stable", "nothing to roll out or fill")

    problems = []
    if apply_errors:
        problems.append(("ApplyFailed", "; ".join(apply_errors)))
    if missing_upstreams:
        problems.append(
            ("PeerSiteNotFound", "peering names missing EdgeSites: " + ", ".join(missing_upstreams))
        )
    if unshared_peer_secret:
        problems.append(
            (
                "PeerSecretNotShared",
                "this site peers with other sites but names no spec.peering.secretRef: its "
                "generated peer secret authenticates its own nodes only, so requests between "
                "the sites are refused; name one Secret shared by the sites that peer",
            )
        )
    if problems:
        degraded = Condition(
            "Degraded", "True", problems[0][0], "; ".join(msg for _, msg in problems)
        )
    else:
        degraded = Condition("Degraded", "False", "AsExpected", "no problems observed")

    if not figures_complete:
        filled = Condition(
            "Filled",
            "Unknown",
            "AwaitingNodeReports",
            f"{nodes_reporting}/{replicas} cache nodes reported fill progress",
        )
    elif plan_size == 0:
        filled = Condition("Filled", "True", "EmptyFillPlan", "no ContentSet selects this site")
    elif total.complete:
        filled = Condition("Filled", "True", "FillComplete", "every planned object is cached")
    else:
        filled = Condition(
            "Filled", "False", "Filling", f"{total.percent()} of {total.bytes_total} bytes cached"
        )
    return [ready_c, prog, degraded, filled]


def reconcile_site(
    api: ClusterApi,
    namespace: str,
    name: str,
    now: datetime,
    *,
    poller: Poller | None = None,
) -> Outcome:
    """Bring one EdgeSite's children and status in line with its spec."""
    with _site_lock(namespace, name):
        return _reconcile_site(api, namespace, name, now, poller)


def _reconcile_site(
    api: ClusterApi, namespace: str, name: str, now: datetime, poller: Poller | None
) -> Outcome:
    site = api.get(names.API_VERSION, "EdgeSite", namespace, name)
    if site is None or site["metadata"].get("deletionTimestamp"):
        _record_managed((namespace, name), None)
        forget_peer_secret(namespace, name)
        return Outcome(found=False)
    all_sites = api.list(names.API_VERSION, "EdgeSite", None)
    contentsets = api.list(names.API_VERSION, "ContentSet", namespace)
    by_ref = {SiteRef(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in all_sites}

    upstreams: list[Upstream] = []
    missing: list[str] = []
    for ref, role in upstream_refs(site):
        other = by_ref.get(ref)
        if other is None:
            missing.append(ref.qualified)
            continue
        upstreams.append(Upstream(ref, role, ports(other.get("spec") or {})["peer"]))
    plan = fill_plan(site, contentsets)
    inputs = SiteInputs(
        site=site,
        fill_plan=plan,
        upstreams=upstreams,
        downstreams=downstream_sites(site, all_sites),
    )

    errors: list[str] = []
    sts: dict[str, Any] | None = None
    children = render_children(inputs)
    kinds: dict[str, int] = defaultdict(int)
    for child in children:
        kinds[child["kind"]] += 1
    notices: list[tuple[str, str]] = []
    generated_secret = generates_peer_secret(inputs)
    if generated_secret:
        kinds["Secret"] += 1
        try:
            if ensure_peer_secret(api, inputs, recheck=poller is not None):
                notices.append(
                    (
                        "PeerSecretGenerated",
                        f"generated Secret {names.generated_peer_secret_name(name)} to "
                        "authenticate traffic between the site's cache nodes "
                        "(spec.peering.secretRef is unset)",
                    )
                )
        except KubeError as exc:
            metrics.APPLIES.labels(kind="Secret", result="error").inc()
            metrics.ERRORS.labels(kind="EdgeSite", reason=exc.reason or str(exc.status)).inc()
            errors.append(f"Secret {names.generated_peer_secret_name(name)}: {exc.reason}")
            log.warning(
                "peer_secret_failed",
                namespace=namespace,
                site=name,
                status=exc.status,
                reason=exc.reason,
            )
    _record_managed((namespace, name), dict(kinds))
    for child in children:
        kind = child["kind"]
        try:
            applied = api.apply(child)
        except KubeError as exc:
            metrics.APPLIES.labels(kind=kind, result="error").inc()
            metrics.ERRORS.labels(kind="EdgeSite", reason=exc.reason or str(exc.status)).inc()
            errors.append(f"{kind} {child['metadata']['name']}: {exc.message or exc.reason}")
            log.warning(
                "apply_failed",
                kind=kind,
                namespace=namespace,
                name=child["metadata"]["name"],
                site=name,
                status=exc.status,
                reason=exc.reason,
                error=exc.message,
            )
            continue
        metrics.APPLIES.labels(kind=kind, result="ok").inc()
        if kind == "StatefulSet":
            sts = applied
    if sts is None:
        sts = api.get("apps/v1", "StatefulSet", namespace, names.statefulset_name(name))

    replicas = site_replicas(site)
    old_status: Mapping[str, Any] = site.get("status") or {}
    plan_names = [str(e["name"]) for e in plan]
    if poller is not None:
        pods = api.list("v1", "Pod", namespace, names.selector_string(names.selector_labels(name)))
        metrics_port = ports(site.get("spec") or {})["metrics"]
        addresses = [
            NodeAddress(p["metadata"]["name"], p["status"]["podIP"], metrics_port)
            for p in pods
            if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")
        ]
        figures = aggregate_site(poller.poll(addresses), replicas, plan_names)
        report_fields = site_status_fields(figures)
        figures_complete, reporting, total = (
            figures.complete,
            figures.nodes_reporting,
            figures.total,
        )
    else:
        # Not a polling step: keep what the last poll found, unless the plan changed under it.
        report_fields = {k: old_status[k] for k in REPORT_FIELDS if k in old_status}
        fill = report_fields.get("fill") or {}
        reported = sorted(str(e.get("name")) for e in fill.get("contentSets") or [])
        if fill and reported != sorted(plan_names):
            report_fields.pop("fill")
            fill = {}
        figures_complete = bool(fill)
        reporting = int(report_fields.get("nodesReporting", 0))
        total = Progress.from_status(fill) if fill else Progress()

    generation = int(site["metadata"].get("generation", 1))
    desired = site_conditions(
        replicas=replicas,
        sts=sts,
        apply_errors=errors,
        missing_upstreams=missing,
        unshared_peer_secret=generated_secret and bool(upstreams or inputs.downstreams),
        figures_complete=figures_complete,
        nodes_reporting=reporting,
        plan_size=len(plan),
        total=total,
    )
    conditions, transitions = merge(old_status.get("conditions"), desired, generation, now)
    sts_status = (sts or {}).get("status") or {}
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "replicas": int(sts_status.get("replicas") or 0),
        "readyReplicas": int(sts_status.get("readyReplicas") or 0),
        "selector": names.selector_string(names.selector_labels(name)),
        "conditions": conditions,
        "fillPlan": plan_names,
        **report_fields,
    }
    api.patch_status(
        names.API_VERSION, "EdgeSite", namespace, name, _status_patch(old_status, status)
    )
    return Outcome(found=True, transitions=transitions, errors=errors, notices=notices, obj=site)


def reconcile_contentset(api: ClusterApi, namespace: str, name: str, now: datetime) -> Outcome:
    """Recompute a ContentSet's status from the sites it selects (their plans and progress)."""
    cs = api.get(names.API_VERSION, "ContentSet", namespace, name)
    if cs is None or cs["metadata"].get("deletionTimestamp"):
        _record_managed((namespace, name), None, contentset=True)
        return Outcome(found=False)
    _record_managed((namespace, name), {}, contentset=True)
    sites = selected_sites(cs, api.list(names.API_VERSION, "EdgeSite", namespace))
    me = qualified(cs)
    copies = int(cs["spec"].get("copies", 1))
    progress = contentset_progress(me, sites)
    site_rows: list[dict[str, Any]] = []
    short: list[str] = []
    waiting: list[str] = []
    for s in sites:
        site_name = str(s["metadata"]["name"])
        replicas = site_replicas(s)
        eff = effective_copies(copies, replicas)
        if copies > replicas:
            short.append(f"{site_name} ({replicas} replicas)")
        if me not in ((s.get("status") or {}).get("fillPlan") or []):
            waiting.append(site_name)
        row: dict[str, Any] = {"name": site_name, "copies": eff}
        if site_name in progress:
            row.update(progress[site_name].as_status())
        site_rows.append(row)

    all_reported = bool(sites) and len(progress) == len(sites)
    total = Progress()
    for p in progress.values():
        total = total + p

    if not sites:
        ready = Condition(
            "Ready", "False", "NoSitesSelected", "the site selector matches no EdgeSite"
        )
    elif waiting:
        ready = Condition(
            "Ready",
            "False",
            "WaitingForSites",
            "not yet in the fill plan of: " + ", ".join(waiting),
        )
    else:
        ready = Condition("Ready", "True", "Planned", f"in the fill plan of {len(sites)} site(s)")
    if short:
        degraded = Condition(
            "Degraded",
            "True",
            "CopiesAboveReplicas",
            f"copies ({copies}) capped at the replicas of: " + ", ".join(short),
        )
    else:
        degraded = Condition("Degraded", "False", "AsExpected", "no problems observed")
    if not all_reported:
        filled = Condition(
            "Filled",
            "Unknown",
            "AwaitingNodeReports",
            f"{len(progress)}/{len(sites)} sites reported fill progress",
        )
        prog = Condition(
            "Progressing", "Unknown", "AwaitingNodeReports", "no progress reported yet"
        )
    elif total.complete:
        filled = Condition("Filled", "True", "FillComplete", "every planned copy is cached")
        prog = Condition("Progressing", "False", "FillComplete", "nothing left to fill")
    else:
        filled = Condition("Filled", "False", "Filling", f"{total.percent()} cached")
        prog = Condition("Progressing", "True", "Filling", f"{total.percent()} cached")

    generation = int(cs["metadata"].get("generation", 1))
    old_status: Mapping[str, Any] = cs.get("status") or {}
    conditions, transitions = merge(
        old_status.get("conditions"), [ready, prog, degraded, filled], generation, now
    )
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "siteCount": len(sites),
        "sites": site_rows,
        "conditions": conditions,
    }
    if all_reported:
        status["fill"] = total.as_status()
    api.patch_status(
        names.API_VERSION, "ContentSet", namespace, name, _status_patch(old_status, status)
    )
    return Outcome(found=True, transitions=transitions, obj=cs)


def sites_in(api: ClusterApi, namespace: str) -> list[str]:
    return sorted(
        str(s["metadata"]["name"]) for s in api.list(names.API_VERSION, "EdgeSite", namespace)
    )


def contentsets_in(api: ClusterApi, namespace: str) -> list[str]:
    return sorted(
        str(c["metadata"]["name"]) for c in api.list(names.API_VERSION, "ContentSet", namespace)
    )
