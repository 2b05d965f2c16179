"""Prometheus metrics of one cache node, in their own registry.

A registry per app (not the process-global default) so several nodes can run
in one test process and nothing registers twice. Names follow Prometheus
conventions: ``edgefill_`` prefix, ``_total`` for counters, base units
(bytes, seconds). Store gauges are computed at scrape time from the store, so
they can never drift from it.

The serving path's counters (requests by result, bytes by source) are plain
integers in :class:`Traffic`, exposed by a collector at scrape time: the hit
path bumps them for every request, and a ``prometheus_client`` child costs a
lock and two calls per increment there. They are only touched from the event
loop's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cache_node.store import Store

RESULTS = ("hit", "peer", "parent", "origin", "error")
SOURCES = ("hit", "peer", "parent", "origin")


class Traffic(Collector):
    """``edgefill_requests_total{result}``, ``edgefill_served_bytes_total{source}`` and
    ``edgefill_fast_lane_responses_total``."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = dict.fromkeys(RESULTS, 0)
        self.bytes: dict[str, int] = dict.fromkeys(SOURCES, 0)
        self.fast_lane = 0

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "edgefill_requests",
            "Client requests by result: hit, peer, parent, origin (miss class) or error.",
            labels=["result"],
        )
        for result, count in self.requests.items():
            requests.add_metric([result], count)
        yield requests
        served = CounterMetricFamily(
            "edgefill_served_bytes",
            "Body bytes sent to clients, by where the object came from.",
            labels=["source"],
        )
        for source, count in self.bytes.items():
            served.add_metric([source], count)
        yield served
        yield CounterMetricFamily(
            "edgefill_fast_lane_responses",
            "Hits answered by the client port's fast lane (plain GET/HEAD of an object held "
            "in memory), without aiohttp's request handling; also counted in "
            'edgefill_requests_total{result="hit"}.',
            value=self.fast_lane,
        )


class _StoreCollector(Collector):
    def __init__(self, store: Store, fills_in_progress: Callable[[], int]) -> None:
        self._store = store
        self._fills = fills_in_progress

    def collect(self) -> Iterable[Metric]:
        s = self._store.stats
        stored = GaugeMetricFamily(
            "edgefill_store_bytes", "Bytes of committed objects in the store.", labels=["class"]
        )
        stored.add_metric(["pinned"], s.pinned_bytes)
        stored.add_metric(["dynamic"], s.bytes - s.pinned_bytes)
        yield stored
        objects = GaugeMetricFamily(
            "edgefill_store_objects", "Committed objects in the store.", labels=["class"]
        )
        objects.add_metric(["pinned"], s.pinned_objects)
        objects.add_metric(["dynamic"], s.objects - s.pinned_objects)
        yield objects
        yield GaugeMetricFamily(
            "edgefill_store_budget_bytes", "Byte budget of the store.", value=self._store.max_bytes
        )
        yield GaugeMetricFamily(
            "edgefill_store_reserved_bytes",
            "Bytes reserved by fills in progress.",
            value=s.reserved_bytes,
        )
        evictions = CounterMetricFamily(
            "edgefill_store_evictions",
            "Objects evicted since start, by class (dynamic before pinned).",
            labels=["class"],
        )
        for cls, count in s.evictions.items():
            evictions.add_metric([cls], count)
        yield evictions
        yield CounterMetricFamily(
            "edgefill_store_evicted_bytes",
            "Bytes evicted since start.",
            value=s.evicted_bytes,
        )
        yield CounterMetricFamily(
            "edgefill_store_corrupt_objects",
            "Objects whose pieces failed verification since start (deleted and refetched).",
            value=s.corrupt_objects,
        )
        yield GaugeMetricFamily(
            "edgefill_fills_in_progress", "Fills in progress.", value=self._fills()
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.traffic = Traffic()
        r.register(self.traffic)
        self.rejected = Counter(
            "edgefill_requests_rejected",
            "Client requests refused before any cache lookup, by reason.",
            ["reason"],
            registry=r,
        )
        self.origin_requests = Counter(
            "edgefill_origin_requests",
            "GET requests sent to the S3 origin (including resumes and retries).",
            registry=r,
        )
        self.origin_latency = Histogram(
            "edgefill_origin_request_duration_seconds",
            "Time from sending a GET to the origin until its headers arrived (or it failed).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.fills = Counter(
            "edgefill_fills",
            "Fills finished, by outcome (committed, failed, not_found).",
            ["outcome"],
            registry=r,
        )
        self.fill_bytes = Counter(
            "edgefill_fill_bytes", "Bytes committed to the store by fills.", registry=r
        )
        self.upstream_failures = Counter(
            "edgefill_upstream_failures",
            "Fill sources that could not serve a key, by source (peer, parent, origin) and "
            "cause (content_miss: it does not hold the key; health_miss: it could not answer; "
            "checksum_mismatch: its body did not match the CRC-32 the origin sent).",
            ["source", "cause"],
            registry=r,
        )
        self.peer_requests = Counter(
            "edgefill_peer_requests",
            "Requests received on the peer endpoint, by sender (member, site) and result.",
            ["sender", "result"],
            registry=r,
        )
        self.not_found_cached = Counter(
            "edgefill_not_found_cached_responses",
            "Requests answered 404 from the negative cache (the origin said no such key "
            "within serving.notFoundTtlSeconds), without asking the origin again.",
            registry=r,
        )

    def watch_store(self, store: Store, fills_in_progress: Callable[[], int]) -> None:
        self.registry.register(_StoreCollector(store, fills_in_progress))

    def negative_hit(self) -> None:
        self.not_found_cached.inc()

    def upstream_failure(self, source: str, cause: str) -> None:
        self.upstream_failures.labels(source, cause).inc()

    def fill_done(self, outcome: str, size: int) -> None:
        self.fills.labels(outcome).inc()
        self.fill_bytes.inc(size)

    def origin_request(self, key: str, seconds: float) -> None:
        self.origin_requests.inc()
        self.origin_latency.observe(seconds)
