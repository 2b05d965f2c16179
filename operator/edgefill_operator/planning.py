"""Which ContentSets land in which EdgeSite's fill plan.

Pure functions over the API objects as kopf and the client deliver them
(plain dicts). A fill-plan entry says where a catalogue subset is and how to
place it; it never holds the catalogue itself (catalogues can be huge, and the
node configuration lives in a ConfigMap, limited to 1 MiB).

``copies`` is capped at the site's replicas here: admission already denies a
ContentSet whose copies exceed a selected site's replicas, but a site may
shrink later, and a node cannot hold a second copy of a key it already owns.
The cap is reported (never silent) as a Degraded condition on the ContentSet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Obj = Mapping[str, Any]


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector matches everything."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def qualified(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def _labels(obj: Obj) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _deleting(obj: Obj) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def site_replicas(site: Obj) -> int:
    return int(site.get("spec", {}).get("replicas", 2))


def selected_sites(contentset: Obj, sites: Iterable[Obj]) -> list[Obj]:
    """EdgeSites of the ContentSet's namespace that its selector picks, by name."""
    ns = contentset["metadata"]["namespace"]
    selector = contentset.get("spec", {}).get("sites")
    picked = [
        s
        for s in sites
        if s["metadata"]["namespace"] == ns
        and not _deleting(s)
        and selector_matches(selector, _labels(s))
    ]
    return sorted(picked, key=lambda s: str(s["metadata"]["name"]))


def fill_plan_entry(contentset: Obj, replicas: int) -> dict[str, Any]:
    """One ContentSet as a node-config fill-plan entry (camelCase, like node.json)."""
    spec = contentset["spec"]
    src = spec["source"]
    source: dict[str, Any] = {"bucket": src["bucket"]}
    if src.get("prefixes"):
        source["prefixes"] = list(src["prefixes"])
    if src.get("manifestKey"):
        source["manifestKey"] = src["manifestKey"]
    entry: dict[str, Any] = {
        "name": qualified(contentset),
        "generation": int(contentset["metadata"].get("generation", 1)),
        "source": source,
        "copies": effective_copies(int(spec.get("copies", 1)), replicas),
        "pieceSizeBytes": int(spec.get("pieceSizeBytes", 1 << 20)),
        "priority": int(spec.get("priority", 100)),
        "pinned": bool(spec.get("pinned", True)),
    }
    invalidations = [
        {k: inv[k] for k in ("id", "key", "prefix") if k in inv}
        for inv in spec.get("invalidations") or []
    ]
    if invalidations:
        entry["invalidations"] = invalidations
    return entry


def effective_copies(copies: int, replicas: int) -> int:
    """Copies a site can actually hold: at most one per node, and at least one."""
    return max(1, min(copies, replicas))


def fill_plan(site: Obj, contentsets: Iterable[Obj]) -> list[dict[str, Any]]:
    """The site's fill plan: every live ContentSet selecting it, highest priority first."""
    ns = site["metadata"]["namespace"]
    replicas = site_replicas(site)
    entries = [
        fill_plan_entry(cs, replicas)
        for cs in contentsets
        if cs["metadata"]["namespace"] == ns
        and not _deleting(cs)
        and selector_matches(cs.get("spec", {}).get("sites"), _labels(site))
    ]
    return sorted(entries, key=lambda e: (-int(e["priority"]), str(e["name"])))


@dataclass(frozen=True)
class SiteRef:
    namespace: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.namespace}/{self.name}"


def _refs(site: Obj, field: str) -> list[SiteRef]:
    ns = site["metadata"]["namespace"]
    peering = site.get("spec", {}).get("peering") or {}
    return [SiteRef(r.get("namespace") or ns, r["name"]) for r in peering.get(field) or []]


def upstream_refs(site: Obj) -> list[tuple[SiteRef, str]]:
    """Parents then siblings, in the order a miss tries them, with their role."""
    return [(r, "parent") for r in _refs(site, "parents")] + [
        (r, "sibling") for r in _refs(site, "siblings")
    ]


def downstream_sites(site: Obj, all_sites: Sequence[Obj]) -> list[SiteRef]:
    """Sites that name this one as parent or sibling: they may reach its peer port."""
    me = SiteRef(site["metadata"]["namespace"], site["metadata"]["name"])
    found = {
        SiteRef(o["metadata"]["namespace"], o["metadata"]["name"])
        for o in all_sites
        if not _deleting(o) and me in [r for r, _ in upstream_refs(o)]
    }
    found.discard(me)
    return sorted(found, key=lambda r: (r.namespace, r.name))
