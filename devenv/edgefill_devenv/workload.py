"""A client workload against live cache nodes, and what the nodes say about it.

Clients are steered to their own site (as Open Connect's control plane
steers a client to the appliances of its ISP) and pick a node of that site at
random. Keys follow a Zipf popularity over catalogue rank; a share of the
requests are byte ranges (players seeking, segment slicing). Every response
body is verified against the catalogue's reproducible bytes, so a summary
never counts a wrong byte as served.

While the workload runs, a sampler scrapes each node's Prometheus metrics
(``edgefill_served_bytes_total`` by source, ``edgefill_requests_total`` by
result) and the origin proxy's byte count once a second; the samples feed the
per-site summary and the plot.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import itertools
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from edgefill_devenv.catalogue import CatalogueObject, object_bytes, object_range
from edgefill_devenv.peerclient import PeerAssistError, PeerClient

SOURCES = ("hit", "peer", "parent", "origin")


@dataclass(frozen=True)
class Node:
    site: str
    name: str
    client_url: str
    metrics_url: str


@dataclass
class SiteResult:
    requests: int = 0
    range_requests: int = 0
    peer_assisted: int = 0
    bytes: int = 0
    p2p_bytes: int = 0  # pieces peer-assisted clients took from other clients
    seed_bytes: int = 0  # pieces they took from the cache node (web seed)
    tracker_refusals: int = 0  # announces the tracker refused; those fetches used the web seed
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def peer_efficiency(self) -> float:
        """P2P bytes / all bytes the site's clients received (Peer5's definition)."""
        return self.p2p_bytes / self.bytes if self.bytes else 0.0


class ZipfSampler:
    """Draw catalogue entries with probability proportional to 1 / rank**s."""

    def __init__(self, entries: list[CatalogueObject], s: float, rng: random.Random) -> None:
        self.entries = sorted(entries, key=lambda e: e.rank)
        weights = [1.0 / (e.rank**s) for e in self.entries]
        self.cumulative = list(itertools.accumulate(weights))
        self.rng = rng

    def draw(self) -> CatalogueObject:
        x = self.rng.random() * self.cumulative[-1]
        return self.entries[bisect.bisect_left(self.cumulative, x)]


class Verifier:
    """Checks bodies against the catalogue; whole objects by cached digest."""

    def __init__(self) -> None:
        self._digests: dict[str, bytes] = {}

    def whole(self, entry: CatalogueObject, body: bytes) -> bool:
        digest = self._digests.get(entry.key)
        if digest is None:
            digest = hashlib.sha256(object_bytes(entry.key, entry.size)).digest()
            self._digests[entry.key] = digest
        return len(body) == entry.size and hashlib.sha256(body).digest() == digest

    @staticmethod
    def part(entry: CatalogueObject, start: int, body: bytes) -> bool:
        return body == object_range(entry.key, start, start + len(body))


async def run_clients(
    nodes: list[Node],
    entries: list[CatalogueObject],
    token: str,
    *,
    requests_per_site: int,
    concurrency: int = 8,
    range_share: float = 0.3,
    peer_share: float = 0.0,
    peers_per_site: int = 6,
    zipf_s: float = 1.0,
    seed: int = 11,
) -> dict[str, SiteResult]:
    """Run the workload; returns per-site request, byte and error counts.

    ``peer_share`` of the whole-object requests come from peer-assisted
    clients (``peers_per_site`` of them per site, each on its own loopback
    address) that take pieces from each other and the rest from the web seed.
    """
    rng = random.Random(seed)  # noqa: S311 - workload shape, not security
    sampler = ZipfSampler(entries, zipf_s, rng)
    verifier = Verifier()
    by_site: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        by_site[n.site].append(n)
    plan: list[tuple[str, CatalogueObject, tuple[int, int] | str | None]] = []
    for site in sorted(by_site):
        for _ in range(requests_per_site):
            entry = sampler.draw()
            span: tuple[int, int] | str | None = None
            draw = rng.random()
            if draw < range_share and entry.size > 2:
                start = rng.randrange(0, entry.size - 1)
                length = rng.randint(1, min(1 << 20, entry.size - start))
                span = (start, start + length - 1)
            elif draw < range_share + peer_share:
                span = "peer"
            plan.append((site, entry, span))
    rng.shuffle(plan)
    results = {site: SiteResult() for site in by_site}
    queue: asyncio.Queue[tuple[str, CatalogueObject, tuple[int, int] | str | None]] = (
        asyncio.Queue()
    )
    for item in plan:
        queue.put_nowait(item)
    peers: dict[str, list[PeerClient]] = {}
    if peer_share > 0:
        for i, site in enumerate(sorted(by_site)):
            peers[site] = [
                await PeerClient(ip=f"127.201.{i}.{n + 1}", token=token).start()
                for n in range(peers_per_site)
            ]

    async def peer_request(site: str, entry: CatalogueObject) -> None:
        res = results[site]
        peer = rng.choice(peers[site])
        before = (peer.stats.p2p_bytes, peer.stats.seed_bytes, peer.stats.tracker_failures)
        try:
            body = await peer.fetch([n.client_url for n in by_site[site]], entry.key)
        except (PeerAssistError, aiohttp.ClientError, TimeoutError) as exc:
            res.errors[f"peer-assist {type(exc).__name__}: {str(exc)[:120]}"] += 1
            return
        if not verifier.whole(entry, body):
            res.errors["corrupt body"] += 1
            return
        res.requests += 1
        res.peer_assisted += 1
        res.bytes += len(body)
        res.p2p_bytes += peer.stats.p2p_bytes - before[0]
        res.seed_bytes += peer.stats.seed_bytes - before[1]
        res.tracker_refusals += peer.stats.tracker_failures - before[2]

    async def client(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            site, entry, span = queue.get_nowait()
            if span == "peer":
                await peer_request(site, entry)
                continue
            assert not isinstance(span, str)
            node = rng.choice(by_site[site])
            res = results[site]
            headers = {"Range": f"bytes={span[0]}-{span[1]}"} if span else {}
            try:
                async with http.get(
                    f"{node.client_url}/{entry.key}", params={"token": token}, headers=headers
                ) as resp:
                    body = await resp.read()
                    expected = 206 if span else 200
                    if resp.status != expected:
                        res.errors[f"status {resp.status}"] += 1
                        continue
                    ok = (
                        verifier.part(entry, span[0], body) if span else verifier.whole(entry, body)
                    )
                    if not ok:
                        res.errors["corrupt body"] += 1
                        continue
            except (TimeoutError, aiohttp.ClientError) as exc:
                res.errors[type(exc).__name__] += 1
                continue
            res.requests += 1
            res.range_requests += 1 if span else 0
            res.bytes += len(body)

    timeout = aiohttp.ClientTimeout(total=120, sock_connect=5)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await asyncio.gather(*(client(http) for _ in range(concurrency)))
    finally:
        for group in peers.values():
            for peer in group:
                await peer.stop()
    return results


# --- observation -------------------------------------------------------------------


def parse_node_metrics(text: str) -> dict[str, dict[str, float]]:
    """``served`` bytes by source and ``requests`` by result from a node's /metrics."""
    out: dict[str, dict[str, float]] = {"served": {}, "requests": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edgefill_served_bytes_total":
                out["served"][sample.labels["source"]] = sample.value
            elif sample.name == "edgefill_requests_total":
                out["requests"][sample.labels["result"]] = sample.value
    return out


@dataclass
class Sample:
    at: float
    served: dict[str, dict[str, float]]  # site -> source -> bytes (cumulative)
    requests: dict[str, dict[str, float]]  # site -> result -> count (cumulative)
    origin_bytes: int


class SampleIncompleteError(RuntimeError):
    """A node's metrics or the origin proxy's counters could not be read."""


async def sample(
    http: aiohttp.ClientSession, nodes: list[Node], proxy_stats_url: str | None
) -> Sample:
    """Every node's served bytes and requests, and the origin proxy's byte count.

    Raises :class:`SampleIncompleteError` when any reading fails: a missing
    reading must not count as zero (a phase's figures are differences between
    two samples, and a zero in the first would charge the whole history to it).
    """
    served: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    requests: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for node in nodes:
        try:
            async with http.get(node.metrics_url + "/metrics") as resp:
                resp.raise_for_status()
                parsed = parse_node_metrics(await resp.text())
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise SampleIncompleteError(f"metrics of {node.name}: {exc!r}") from exc
        for source, value in parsed["served"].items():
            served[node.site][source] += value
        for result, value in parsed["requests"].items():
            requests[node.site][result] += value
    origin = 0
    if proxy_stats_url:
        try:
            async with http.get(proxy_stats_url) as resp:
                resp.raise_for_status()
                origin = int((await resp.json())["bytes"])
        except (TimeoutError, aiohttp.ClientError, KeyError, ValueError) as exc:
            raise SampleIncompleteError(f"origin proxy counters: {exc!r}") from exc
    return Sample(
        time.time(),
        {s: dict(v) for s, v in served.items()},
        {s: dict(v) for s, v in requests.items()},
        origin,
    )


async def complete_sample(
    http: aiohttp.ClientSession,
    nodes: list[Node],
    proxy_stats_url: str | None,
    attempts: int = 10,
    pause: float = 1.0,
) -> Sample:
    """:func:`sample`, tried up to ``attempts`` times; the last error is raised."""
    for attempt in range(1, attempts + 1):
        try:
            return await sample(http, nodes, proxy_stats_url)
        except SampleIncompleteError:
            if attempt == attempts:
                raise
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")


async def observe_while(
    work: Any, nodes: list[Node], proxy_stats_url: str | None, interval: float = 1.0
) -> tuple[Any, list[Sample]]:
    """Run the awaitable ``work`` while sampling every ``interval`` seconds.

    The first and the last sample (the phase's figures are their differences)
    are complete or the phase fails; one in between that cannot be read whole
    is skipped (it only feeds the plot).
    """
    samples: list[Sample] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        samples.append(await complete_sample(http, nodes, proxy_stats_url))
        task = asyncio.ensure_future(work)
        while not task.done():
            await asyncio.wait([task], timeout=interval)
            if task.done():
                break
            with contextlib.suppress(SampleIncompleteError):
                samples.append(await sample(http, nodes, proxy_stats_url))
        result = task.result()  # the work's own error comes first
        samples.append(await complete_sample(http, nodes, proxy_stats_url))
        return result, samples


def summarise(samples: list[Sample]) -> dict[str, dict[str, Any]]:
    """Per-site deltas between the first and last sample of a phase."""
    first, last = samples[0], samples[-1]
    sites = sorted(set(first.served) | set(last.served) | set(last.requests))
    out: dict[str, dict[str, Any]] = {}
    for site in sites:
        served = {
            s: last.served.get(site, {}).get(s, 0) - first.served.get(site, {}).get(s, 0)
            for s in SOURCES
        }
        requests = {
            r: last.requests.get(site, {}).get(r, 0) - first.requests.get(site, {}).get(r, 0)
            for r in (*SOURCES, "error")
        }
        total_requests = sum(requests[s] for s in SOURCES)
        out[site] = {
            "servedBytes": served,
            "requests": requests,
            "hitRatio": {
                s: (requests[s] / total_requests if total_requests else 0.0) for s in SOURCES
            },
        }
    return out
