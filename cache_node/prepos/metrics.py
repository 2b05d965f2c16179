"""Prometheus metrics of pre-positioning (``edgefill_fill_...``), in the node's registry.

Progress gauges are computed at scrape time from the scheduler's state, so
they cannot drift from ``/status``; counters count events since start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cache_node.prepos.scheduler import Prepositioner


class _ProgressCollector(Collector):
    def __init__(self, prepos: Prepositioner) -> None:
        self._prepos = prepos

    def collect(self) -> Iterable[Metric]:
        p = self._prepos
        objects = GaugeMetricFamily(
            "edgefill_fill_plan_objects",
            "Objects this node owns of each ContentSet, by state (stored, pending).",
            labels=["content_set", "state"],
        )
        size = GaugeMetricFamily(
            "edgefill_fill_plan_bytes",
            "Bytes this node owns of each ContentSet, by state (stored, pending).",
            labels=["content_set", "state"],
        )
        for name, progress in sorted(p.progress.items()):
            objects.add_metric([name, "stored"], progress.objects_stored)
            objects.add_metric([name, "pending"], progress.objects_total - progress.objects_stored)
            size.add_metric([name, "stored"], progress.bytes_stored)
            size.add_metric([name, "pending"], max(0, progress.bytes_total - progress.bytes_stored))
        yield objects
        yield size
        yield GaugeMetricFamily(
            "edgefill_fill_window_open",
            "1 while the fill window is open (or filling outside it is allowed), else 0.",
            value=1 if p.window_open else 0,
        )
        yield GaugeMetricFamily(
            "edgefill_fill_rate_limit_bytes_per_second",
            "The rate cap shared by all fill streams of this node.",
            value=p.bucket.rate,
        )
        yield GaugeMetricFamily(
            "edgefill_fill_active",
            "Pre-positioning fills in progress.",
            value=p.active,
        )
        yield CounterMetricFamily(
            "edgefill_fill_throttled_seconds",
            "Time fill streams waited for the rate cap since start.",
            value=p.bucket.waited_seconds,
        )
        left = p.budget.remaining(p.window_id) if p.window_id else None
        if left is not None:
            yield GaugeMetricFamily(
                "edgefill_fill_budget_remaining_bytes",
                "Bytes this node may still fill in the current window.",
                value=left,
            )


class PreposMetrics:
    def __init__(self, registry: CollectorRegistry, prepos: Prepositioner) -> None:
        self.streamed = Counter(
            "edgefill_fill_streamed_bytes",
            "Bytes pre-positioning received from the network, by source (peer, origin).",
            ["source"],
            registry=registry,
        )
        self.filled = Counter(
            "edgefill_fill_objects",
            "Pre-positioned objects finished, by where they came from (origin, peer, "
            "parent, local) or failed.",
            ["result"],
            registry=registry,
        )
        self.invalidations = Counter(
            "edgefill_fill_invalidations",
            "Invalidations applied (once per ContentSet and id).",
            registry=registry,
        )
        self.unpinned = Counter(
            "edgefill_fill_unpinned_objects",
            "Objects unpinned because they left the fill plan or this node's ownership.",
            registry=registry,
        )
        self.catalogue_errors = Counter(
            "edgefill_fill_catalogue_errors",
            "Failed resolutions of a ContentSet source (listing or manifest).",
            registry=registry,
        )
        self._registry = registry
        self._collectors: list[Collector] = [
            self.streamed,
            self.filled,
            self.invalidations,
            self.unpinned,
            self.catalogue_errors,
            _ProgressCollector(prepos),
        ]
        registry.register(self._collectors[-1])

    def unregister(self) -> None:
        """Leave the node's registry (a new scheduler on the same node registers afresh)."""
        for collector in self._collectors:
            self._registry.unregister(collector)
