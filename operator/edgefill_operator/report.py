"""Aggregate the cache nodes' own /status reports into EdgeSite and ContentSet status.

Numbers here come only from what nodes report. A node that has not answered
contributes nothing, and fill progress is published only when every member
of the site has reported (a partial sum would be a made-up percentage); until
then those fields stay absent and the Filled condition is Unknown.

The report a node serves on its metrics port at ``/status`` (JSON; built by
``cache_node.ops.status_document``; unknown keys are ignored)::

    {"node": "alpha-east-cache-0",
     "store": {"bytes": 1234, "objects": 5, ...},
     "requests": {"hit": 10, "peer": 2, "parent": 0, "origin": 1, "error": 0},
     "fillPlan": [{"name": "ns/contentset", "generation": 3,
                   "objectsStored": 4, "bytesStored": 1000,
                   "objectsTotal": 9, "bytesTotal": 2000}]}

``objectsStored``/``bytesStored`` are what the node holds of a fill-plan entry;
``objectsTotal``/``bytesTotal`` (or ``objectsPending``/``bytesPending``, added
to what is stored) are what it owns of the entry once it resolved the
ContentSet's source. Summing over the members gives the site's planned
copies. An entry without totals has no known progress yet: it keeps the
site's fill fields absent, never a guessed percentage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

REQUEST_KINDS = ("hit", "peer", "parent", "origin", "error")


class ReportError(ValueError):
    """A node's /status body is not the documented shape."""


@dataclass(frozen=True)
class Progress:
    objects_done: int = 0
    objects_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0

    def __add__(self, other: Progress) -> Progress:
        return Progress(
            self.objects_done + other.objects_done,
            self.objects_total + other.objects_total,
            self.bytes_done + other.bytes_done,
            self.bytes_total + other.bytes_total,
        )

    @property
    def complete(self) -> bool:
        return self.bytes_done >= self.bytes_total and self.objects_done >= self.objects_total

    def percent(self) -> str:
        if self.bytes_total <= 0:
            return "100%" if self.objects_total <= 0 or self.complete else "0%"
        pct = 100.0 * min(self.bytes_done, self.bytes_total) / self.bytes_total
        # Never round up to 100% while bytes are missing.
        text = f"{pct:.1f}".rstrip("0").rstrip(".")
        if text == "100" and not self.complete:
            text = "99.9"
        return f"{text}%"

    def as_status(self) -> dict[str, Any]:
        return {
            "percent": self.percent(),
            "objectsDone": self.objects_done,
            "objectsTotal": self.objects_total,
            "bytesDone": self.bytes_done,
            "bytesTotal": self.bytes_total,
        }

    @staticmethod
    def from_status(doc: Mapping[str, Any]) -> Progress:
        return Progress(
            int(doc.get("objectsDone", 0)),
            int(doc.get("objectsTotal", 0)),
            int(doc.get("bytesDone", 0)),
            int(doc.get("bytesTotal", 0)),
        )


@dataclass(frozen=True)
class NodeReport:
    node: str
    bytes_cached: int
    objects_cached: int
    requests: Mapping[str, int]
    fill: Mapping[str, Progress]


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReportError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def parse_report(doc: Any) -> NodeReport:
    """Validate one node's /status document; raises :class:`ReportError`."""
    if not isinstance(doc, dict):
        raise ReportError("the report must be a JSON object")
    store = doc.get("store", {})
    requests = doc.get("requests", {})
    fill = doc.get("fillPlan", [])
    if not isinstance(store, dict) or not isinstance(requests, dict) or not isinstance(fill, list):
        raise ReportError("store and requests must be objects, fillPlan a list")
    progress: dict[str, Progress] = {}
    for entry in fill:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ReportError("every fill entry needs a name")
        objects, size = _int(entry, "objectsStored"), _int(entry, "bytesStored")
        if "objectsTotal" in entry and "bytesTotal" in entry:
            objects_total, bytes_total = _int(entry, "objectsTotal"), _int(entry, "bytesTotal")
        elif "objectsPending" in entry and "bytesPending" in entry:
            objects_total = objects + _int(entry, "objectsPending")
            bytes_total = size + _int(entry, "bytesPending")
        else:
            continue  # the node has not resolved this entry's source yet
        progress[entry["name"]] = Progress(
            min(objects, objects_total), objects_total, min(size, bytes_total), bytes_total
        )
    return NodeReport(
        node=str(doc.get("node", "")),
        bytes_cached=_int(store, "bytes"),
        objects_cached=_int(store, "objects"),
        requests={k: _int(requests, k) for k in REQUEST_KINDS},
        fill=progress,
    )


@dataclass(frozen=True)
class SiteFigures:
    """What the site's status says about its nodes' reports."""

    nodes_reporting: int
    complete: bool
    """Every member reported totals for every plan entry, so progress may be published."""
    bytes_cached: int = 0
    objects_cached: int = 0
    requests: Mapping[str, int] = field(default_factory=dict)
    per_entry: Mapping[str, Progress] = field(default_factory=dict)

    @property
    def total(self) -> Progress:
        out = Progress()
        for p in self.per_entry.values():
            out = out + p
        return out


def aggregate_site(
    reports: Sequence[NodeReport], members: int, plan_names: Sequence[str]
) -> SiteFigures:
    """Sum node reports; per-entry progress only for entries of the current plan."""
    requests = dict.fromkeys(REQUEST_KINDS, 0)
    per_entry = {name: Progress() for name in plan_names}
    every_entry_known = True
    for r in reports:
        for k in REQUEST_KINDS:
            requests[k] += r.requests.get(k, 0)
        for name in plan_names:
            if name in r.fill:
                per_entry[name] = per_entry[name] + r.fill[name]
            else:
                every_entry_known = False
    complete = members > 0 and len(reports) >= members and every_entry_known
    return SiteFigures(
        nodes_reporting=len(reports),
        complete=complete,
        bytes_cached=sum(r.bytes_cached for r in reports),
        objects_cached=sum(r.objects_cached for r in reports),
        requests=requests,
        per_entry=per_entry if complete else {},
    )


def offload_percent(requests: Mapping[str, int]) -> str | None:
    """Requests not sent to the origin over requests served; None before any request."""
    served = sum(requests.get(k, 0) for k in ("hit", "peer", "parent", "origin"))
    if served == 0:
        return None
    pct = 100.0 * (served - requests.get("origin", 0)) / served
    return f"{pct:.1f}".rstrip("0").rstrip(".") + "%"


def site_status_fields(figures: SiteFigures) -> dict[str, Any]:
    """The report-derived part of EdgeSite status; empty until a node reports."""
    if figures.nodes_reporting == 0:
        return {}
    out: dict[str, Any] = {
        "nodesReporting": figures.nodes_reporting,
        "bytesCached": figures.bytes_cached,
        "objectsCached": figures.objects_cached,
    }
    traffic: dict[str, Any] = {
        "hits": figures.requests.get("hit", 0),
        "peer": figures.requests.get("peer", 0),
        "parent": figures.requests.get("parent", 0),
        "origin": figures.requests.get("origin", 0),
        "errors": figures.requests.get("error", 0),
    }
    offload = offload_percent(figures.requests)
    if offload is not None:
        traffic["offloadPercent"] = offload
    out["traffic"] = traffic
    if figures.complete:
        out["fill"] = {
            **figures.total.as_status(),
            "contentSets": [
                {"name": name, **prog.as_status()}
                for name, prog in sorted(figures.per_entry.items())
            ],
        }
    return out


def contentset_progress(
    qualified_name: str, sites: Sequence[Mapping[str, Any]]
) -> dict[str, Progress]:
    """Per-site progress of one ContentSet, read from the sites' aggregated status.

    Sites that have not published fill progress for it are left out.
    """
    out: dict[str, Progress] = {}
    for site in sites:
        fill = (site.get("status") or {}).get("fill") or {}
        for entry in fill.get("contentSets") or []:
            if entry.get("name") == qualified_name:
                out[str(site["metadata"]["name"])] = Progress.from_status(entry)
    return out
