"""Issue 5's pre-positioning acceptance at full scale, run by hand (it moves GBs; not CI).

Real cache-node processes (``python -m cache_node``), each on its own loopback
address (127.0.30.x), pre-position one ContentSet from the S3 test server
(moto, :class:`edgefill_devenv.s3.S3Server`). Every node reaches the origin
through its own counting proxy (:class:`edgefill_devenv.origin_proxy.OriginProxy`
on its own port), so origin GETs and bytes are measured per node and per key.
The catalogue is :func:`edgefill_devenv.catalogue.generate`'s keys and ranks with
sizes log-uniform over 256 KiB..16 MiB (``--sizes catalogue`` keeps its video
segment sizes, which stop near 10 MiB), published as a JSON-lines manifest.

Phases (``--phases``, default all), with the figures each prints:

* ``window`` (c): the site starts with its fill window closed: no object GET
  reaches the origin and /status says the window is closed; the window is
  then opened by a config change (the ConfigMap re-render the operator does)
  and the fill starts.
* ``fill`` (a): that fill runs to the end on 3 nodes: every key is on exactly
  ``copies`` nodes (its rendezvous owners), pinned; the operator's own
  aggregation of the nodes' /status reports says 100% and Filled; origin GETs
  per object == copies (and whole bodies only); stored bytes match the
  origin's MD5 ETags.
* ``scale`` (e): a 4th member joins: the share of key copies that move (goal a
  quarter, +-5 points), all taken from peers (origin GETs for them 0), the old
  owners keep them unpinned.
* ``rate`` (b): a 50 MB/s cap per node, ``copies`` = nodes (every node fills
  the whole set), first on a fresh 3-node site, then on one node alone (the
  3 x 50 MB/s of the site plus the proxies can saturate a 2-core machine):
  bytes per node at its proxy over 20 s after a warm-up, and the range of
  1 s windows (socket buffers make those bursty; the 20 s figure is the goal).
* ``kill`` (d): a fresh 3-node site (``copies`` 1, the origin proxies paced
  so kills land mid-fill: a slow origin; ``--kill-rate-mb`` uses a node rate
  cap instead); one node is SIGKILLed 10 times and restarted. Re-fetched bytes
  are measured at the node's proxy as the overlap of each GET's byte range
  with ranges already sent before, and split per kill into what the node had
  written to disk but not yet verified (at most one piece per in-flight
  object: the bound of the issue) and what was in flight in socket buffers
  (sent by the proxy, never read by the killed process). A kill counts when
  objects were in flight; the goal is checked per kill with the socket
  buffers included.

    flock /tmp/edgefill-heavy.lock python bench/prepos/acceptance.py \\
        [--objects 500] [--copies 2] [--phases window,fill,scale,rate,kill] [--keep]

Exit status 0 when every checked figure is within its goal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import boto3
from aiohttp import web

from cache_node.prepos.partial import Partials
from cache_node.ring import owners
from cache_node.store import key_digest
from edgefill_devenv.catalogue import CatalogueObject, generate, manifest, object_bytes
from edgefill_devenv.origin_proxy import CHUNK, OriginProxy
from edgefill_devenv.procs import kill_process, stop_process
from edgefill_devenv.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server, free_port
from edgefill_operator.report import aggregate_site, parse_report

MiB = 1024 * 1024
BUCKET = "prepos-acceptance"
MANIFEST_KEY = "manifests/acceptance.jsonl"
SET = "media/acceptance"
SECRET = "prepos-acceptance-peer-secret-0123"
PIECE = 1 * MiB  # the store's piece size (the resume granularity)
FILL_TIMEOUT_SECONDS = 1800.0


# --- the counting proxies ------------------------------------------------------------------


@dataclass
class Get:
    """One object GET seen by a node's proxy: the byte range asked and bytes sent so far."""

    key: str
    start: int
    sent: int = 0
    open: bool = True


class _CountingResponse:
    """Counts the body bytes the proxy relays for one GET (handed to ``_relay``)."""

    def __init__(self, resp: web.StreamResponse, get: Get, proxy: NodeProxy) -> None:
        self._resp = resp
        self._get = get
        self._proxy = proxy

    async def write(self, data: bytes) -> None:
        await self._resp.write(data)
        self._get.sent += len(data)
        self._proxy.sent += len(data)

    async def write_eof(self, data: bytes = b"") -> None:
        await self._resp.write_eof(data)


@dataclass
class NodeProxy(OriginProxy):
    """The counting proxy of one node, recording every object GET's range and bytes."""

    log: list[Get] = field(default_factory=list)
    sent: int = 0

    async def _relay(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        key: str | None,
        cut: Any,
    ) -> bool:
        if key is None or key == MANIFEST_KEY or request.query or upstream.status >= 300:
            return await super()._relay(request, resp, upstream, key, cut)
        rng = request.headers.get("Range", "")
        start = int(rng[len("bytes=") :].split("-")[0]) if rng.startswith("bytes=") else 0
        get = Get(key=key, start=start)
        self.log.append(get)
        try:
            counting = cast(web.StreamResponse, _CountingResponse(resp, get, self))
            return await super()._relay(request, counting, upstream, key, cut)
        finally:
            get.open = False


def refetched_bytes(gets: list[Get]) -> dict[str, int]:
    """Per key, bytes sent again: each GET's range overlapping ranges sent before it."""
    seen: dict[str, list[tuple[int, int]]] = {}
    out: dict[str, int] = {}
    for g in gets:
        lo, hi = g.start, g.start + g.sent
        spans = seen.setdefault(g.key, [])
        overlap = sum(max(0, min(hi, b) - max(lo, a)) for a, b in _merged(spans))
        if overlap:
            out[g.key] = out.get(g.key, 0) + overlap
        spans.append((lo, hi))
    return out


def _merged(spans: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    cur: tuple[int, int] | None = None
    for a, b in sorted(spans):
        if cur is not None and a <= cur[1]:
            cur = (cur[0], max(cur[1], b))
            continue
        if cur is not None:
            yield cur
        cur = (a, b)
    if cur is not None:
        yield cur


# --- the site ------------------------------------------------------------------------------


@dataclass
class Member:
    name: str
    host: str
    ports: tuple[int, int, int]
    folder: Path
    proxy: NodeProxy
    proc: subprocess.Popen[bytes] | None = None

    @property
    def store(self) -> Path:
        return self.folder / "store"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports[2]}"

    @property
    def client_url(self) -> str:
        return f"http://{self.host}:{self.ports[0]}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "EDGEFILL_S3_ENDPOINT"}
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        env["AWS_DEFAULT_REGION"] = REGION
        with (self.folder / "node.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cache_node",
                    "--config",
                    str(self.folder / "node.json"),
                    "--node-name",
                    self.name,
                    "--log-level",
                    "WARNING",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def kill(self) -> None:
        kill_process(self.proc)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def meta(self, key: str) -> dict[str, Any] | None:
        digest = key_digest(key)
        try:
            doc: dict[str, Any] = json.loads(
                (self.store / "objects" / digest[:2] / f"{digest}.meta").read_bytes()
            )
        except FileNotFoundError:
            return None
        return doc

    def data_path(self, key: str) -> Path:
        digest = key_digest(key)
        return self.store / "objects" / digest[:2] / f"{digest}.data"


@dataclass
class Site:
    root: Path
    s3: S3Server
    subnet: int
    fill: dict[str, Any]
    copies: int
    members: list[Member] = field(default_factory=list)

    async def add(self) -> Member:
        index = len(self.members)
        host = f"127.0.{self.subnet}.{index + 1}"
        folder = self.root / f"cache-{index}"
        folder.mkdir(parents=True)
        proxy = NodeProxy(upstream=self.s3.endpoint_url, bucket=BUCKET)
        await proxy.start()
        member = Member(
            name=f"cache-{index}",
            host=host,
            ports=(free_port(host), free_port(host), free_port(host)),
            folder=folder,
            proxy=proxy,
        )
        self.members.append(member)
        return member

    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def write_configs(self) -> None:
        secret = self.root / "peer-secret"
        secret.write_text(SECRET)
        listed = [{"name": m.name, "peerUrl": m.peer_url} for m in self.members]
        for m in self.members:
            doc = {
                "site": {"namespace": "edge", "name": "acceptance"},
                "listen": {
                    "host": m.host,
                    "clientPort": m.ports[0],
                    "peerPort": m.ports[1],
                    "metricsPort": m.ports[2],
                },
                "store": {
                    "path": str(m.store),
                    "maxBytes": 64 * 1024 * MiB,
                    "pieceSizeBytes": PIECE,
                },
                "origin": {"endpointUrl": m.proxy.endpoint_url, "bucket": BUCKET, "maxAttempts": 6},
                "peering": {"members": listed, "secretFile": str(secret)},
                "fill": self.fill,
                "fillPlan": [
                    {
                        "name": SET,
                        "generation": 1,
                        "source": {"bucket": BUCKET, "manifestKey": MANIFEST_KEY},
                        "copies": self.copies,
                        "pieceSizeBytes": PIECE,
                    }
                ],
                "tokens": {"enabled": False},
                "tracker": {"enabled": False},
            }
            tmp = m.folder / "node.json.tmp"
            tmp.write_text(json.dumps(doc))
            tmp.replace(m.folder / "node.json")

    async def close(self) -> None:
        for m in self.members:
            m.stop()
        for m in self.members:
            await m.proxy.stop()


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url) as resp:
            if resp.status != 200:
                return None
            doc: dict[str, Any] = await resp.json()
            return doc
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def wait_ready(session: aiohttp.ClientSession, m: Member) -> None:
    for _ in range(1200):
        if m.proc is None or m.proc.poll() is not None:
            log = (m.folder / "node.log").read_text()[-3000:]
            raise RuntimeError(f"{m.name} exited:\n{log}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{m.metrics_url}/readyz") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{m.name} never became ready")


async def site_progress(session: aiohttp.ClientSession, site: Site) -> tuple[bool, str]:
    """(Filled, summary) as the operator computes them from the members' /status."""
    reports = []
    for m in site.members:
        doc = await get_json(session, f"{m.metrics_url}/status")
        if doc is not None:
            reports.append(parse_report(doc))
    figures = aggregate_site(reports, len(site.members), [SET])
    if not figures.complete:
        return False, f"{figures.nodes_reporting}/{len(site.members)} nodes reported"
    total = figures.total
    return total.complete, (
        f"{total.percent()} ({total.objects_done}/{total.objects_total} objects, "
        f"{total.bytes_done / 1e6:.0f}/{total.bytes_total / 1e6:.0f} MB)"
    )


async def until_filled(session: aiohttp.ClientSession, site: Site) -> tuple[float, str]:
    began = time.monotonic()
    last = 0.0
    while time.monotonic() - began < FILL_TIMEOUT_SECONDS:
        filled, summary = await site_progress(session, site)
        if filled:
            return time.monotonic() - began, summary
        if time.monotonic() - last > 10:
            print(f"    ... {summary}", flush=True)
            last = time.monotonic()
        await asyncio.sleep(0.2)
    raise RuntimeError("the site did not fill in time")


# --- results -------------------------------------------------------------------------------


@dataclass
class Results:
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}", flush=True)
        if not ok:
            self.failures.append(what)


def seed(s3: S3Server, entries: list[CatalogueObject]) -> dict[str, str]:
    """Upload the catalogue and its manifest; returns each key's ETag (MD5 of the body)."""
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    client.create_bucket(Bucket=BUCKET)
    etags: dict[str, str] = {}
    for e in entries:
        resp = client.put_object(Bucket=BUCKET, Key=e.key, Body=object_bytes(e.key, e.size))
        etags[e.key] = str(resp["ETag"]).strip('"')
    client.put_object(Bucket=BUCKET, Key=MANIFEST_KEY, Body=manifest(entries, "jsonl"))
    return etags


def catalogue(objects: int, sizes: str) -> list[CatalogueObject]:
    """The devenv catalogue's keys and ranks; sizes as it makes them (``catalogue``: video
    segments, up to ~10 MiB) or log-uniform over the issue's 256 KiB..16 MiB, both ends
    included (``log-uniform``, the default)."""
    entries = generate(objects, prefix="vod", seed=11)
    if sizes == "catalogue":
        return entries
    rng = random.Random(11)
    lo, hi = math.log(256 * 1024), math.log(16 * MiB)
    out = []
    for i, e in enumerate(entries):
        size = 256 * 1024 if i == 0 else 16 * MiB if i == 1 else int(math.exp(rng.uniform(lo, hi)))
        out.append(CatalogueObject(e.key, size, e.rank))
    return out


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def window_around(now: datetime, *, open_: bool) -> dict[str, Any]:
    """A daily UTC window that contains ``now`` (2 h), or one that opens 10 h from now."""
    start = now - timedelta(minutes=5) if open_ else now + timedelta(hours=10)
    return {"start": start.strftime("%H:%M"), "durationSeconds": 7200, "timeZone": "UTC"}


# --- phases --------------------------------------------------------------------------------


async def phase_window_fill_scale(
    args: argparse.Namespace,
    root: Path,
    s3: S3Server,
    entries: list[CatalogueObject],
    etags: dict[str, str],
    res: Results,
) -> None:
    sizes = {e.key: e.size for e in entries}
    copies = args.copies
    closed = window_around(datetime.now(UTC), open_=False)
    site = Site(root / "site-a", s3, 30, {"window": closed, "concurrency": 4}, copies)
    try:
        for _ in range(3):
            await site.add()
        site.write_configs()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for m in site.members:
                m.start()
            for m in site.members:
                await wait_ready(session, m)

            print("\n(c) closed window defers the fill; a config change opens it", flush=True)
            await asyncio.sleep(args.closed_seconds)
            docs = [await get_json(session, f"{m.metrics_url}/status") for m in site.members]
            gets = sum(len(m.proxy.log) for m in site.members)
            window_open = [d["fill"]["windowOpen"] if d and "fill" in d else None for d in docs]
            next_start = [
                d["fill"].get("nextWindowStart") if d and "fill" in d else None for d in docs
            ]
            print(f"  after {args.closed_seconds:.0f} s closed: windowOpen={window_open}")
            print(f"  nextWindowStart={next_start[0]}; origin object GETs {gets}")
            res.check(gets == 0 and window_open == [False] * 3, "closed window: 0 origin GETs")
            site.fill = {"window": window_around(datetime.now(UTC), open_=True), "concurrency": 4}
            opened = time.monotonic()
            site.write_configs()  # the nodes' config watchers pick this up
            started = None
            for _ in range(600):
                if any(m.proxy.log for m in site.members):
                    started = time.monotonic() - opened
                    break
                await asyncio.sleep(0.05)
            res.check(started is not None, f"window opened: first origin GET after {started} s")

            print(f"\n(a) {len(sizes)} objects, copies={copies}, 3 nodes: fill to 100%", flush=True)
            took, summary = await until_filled(session, site)
            total = sum(sizes.values())
            moved_bytes = sum(m.proxy.sent for m in site.members)
            print(f"  filled in {took:.1f} s after the window opened: {summary}")
            print(f"  origin bytes {moved_bytes / 1e6:.0f} MB, {moved_bytes / took / 1e6:.0f} MB/s")
            names = site.names()
            wrong_place = wrong_gets = wrong_meta = 0
            gets_by_key: dict[str, int] = {}
            for m in site.members:
                for g in m.proxy.log:
                    gets_by_key[g.key] = gets_by_key.get(g.key, 0) + 1
                    if g.start != 0:
                        wrong_gets += 1
            for key in sizes:
                expected = set(owners(key, names, copies))
                holding = {m.name for m in site.members if m.meta(key) is not None}
                wrong_place += holding != expected
                wrong_gets += gets_by_key.get(key, 0) != copies
                for m in site.members:
                    meta = m.meta(key)
                    if meta is not None and (not meta["pinned"] or meta["contentSet"] != SET):
                        wrong_meta += 1
            body_bytes = sum(m.proxy.sent for m in site.members)
            res.check(
                wrong_place == 0, f"every key on exactly its {copies} owners ({wrong_place} not)"
            )
            res.check(wrong_meta == 0, f"every copy pinned to {SET} ({wrong_meta} not)")
            res.check(
                wrong_gets == 0 and body_bytes == copies * total,
                f"origin GETs per object == {copies}, whole bodies only ({wrong_gets} keys off; "
                f"{body_bytes} body bytes for {copies} x {total})",
            )
            filled, summary = await site_progress(session, site)
            res.check(filled, f"operator aggregation: Filled=True, {summary}")
            bad = 0
            for key in sizes:
                for m in site.members:
                    if m.meta(key) is not None and md5_file(m.data_path(key)) != etags[key]:
                        bad += 1
            res.check(bad == 0, f"every stored copy matches the origin's MD5 ETag ({bad} differ)")

            print("\n(e) scale 3 -> 4 members: moves from peers", flush=True)
            before = list(names)
            for m in site.members:
                m.proxy.log.clear()
                m.proxy.sent = 0
            newcomer = await site.add()
            site.write_configs()
            newcomer.start()
            await wait_ready(session, newcomer)
            took, summary = await until_filled(session, site)
            after = site.names()
            moved_copies = 0
            keys_changed = 0
            for key in sizes:
                old, new = set(owners(key, before, copies)), set(owners(key, after, copies))
                moved_copies += len(new - old)
                keys_changed += old != new
            share = moved_copies / (copies * len(sizes))
            print(f"  filled in {took:.1f} s: {summary}")
            print(
                f"  {moved_copies} of {copies * len(sizes)} key copies moved ({share:.1%}); "
                f"{keys_changed} of {len(sizes)} keys changed owners"
            )
            res.check(
                abs(share - 0.25) <= 0.05, f"about a quarter of the copies moved ({share:.1%})"
            )
            held = [k for k in sizes if newcomer.meta(k) is not None]
            origin_gets = sum(len(m.proxy.log) for m in site.members)
            peer_bytes = await metric(
                session, newcomer, 'edgefill_fill_streamed_bytes_total{source="peer"}'
            )
            moved_size = sum(sizes[k] for k in held)
            print(
                f"  newcomer holds {len(held)} keys, {moved_size / 1e6:.0f} MB; "
                f"from peers {peer_bytes / 1e6:.0f} MB"
            )
            res.check(len(held) == moved_copies, "the newcomer holds exactly the keys it now owns")
            res.check(origin_gets == 0, f"origin GETs for moved keys: {origin_gets}")
            res.check(peer_bytes == moved_size, "every moved byte came from a peer")
            unpinned = 0
            for _ in range(100):
                unpinned = 0
                for key in sizes:
                    for name in set(owners(key, before, copies)) - set(owners(key, after, copies)):
                        meta = next(m for m in site.members if m.name == name).meta(key)
                        unpinned += meta is not None and not meta["pinned"]
                if unpinned == moved_copies:
                    break
                await asyncio.sleep(0.2)
            res.check(
                unpinned == moved_copies, f"old owners keep {unpinned} moved copies, unpinned"
            )
    finally:
        await site.close()


async def metric(session: aiohttp.ClientSession, m: Member, sample: str) -> float:
    async with session.get(f"{m.metrics_url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def phase_rate(
    args: argparse.Namespace, root: Path, s3: S3Server, res: Results, nodes: int
) -> None:
    cap = args.rate_mb * 1_000_000
    print(f"\n(b) rate cap {args.rate_mb} MB/s per node, {nodes} node(s) filling", flush=True)
    fill = {"allowOutsideWindow": True, "concurrency": 4, "rateLimitBytesPerSecond": cap}
    site = Site(root / f"site-b{nodes}", s3, 31, fill, copies=nodes)
    try:
        for _ in range(nodes):
            await site.add()
        site.write_configs()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for m in site.members:
                m.start()
            for m in site.members:
                await wait_ready(session, m)
            for _ in range(2400):  # until every node streams, then past the warm-up
                if all(m.proxy.sent > 0 for m in site.members):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(args.rate_warmup)
            samples: list[tuple[float, list[int]]] = []
            began = time.monotonic()
            while True:
                now = time.monotonic()
                samples.append((now, [m.proxy.sent for m in site.members]))
                if now - began >= args.rate_seconds:
                    break
                await asyncio.sleep(0.25)
            for i, m in enumerate(site.members):
                (t0, b0), (t1, b1) = (
                    (samples[0][0], samples[0][1][i]),
                    (samples[-1][0], samples[-1][1][i]),
                )
                rate = (b1 - b0) / (t1 - t0)
                per_second = []  # every window of at least 1 s between two samples
                j = 0
                for k in range(len(samples)):
                    while j + 1 < k and samples[k][0] - samples[j + 1][0] >= 1.0:
                        j += 1
                    span = samples[k][0] - samples[j][0]
                    if span >= 1.0:
                        per_second.append((samples[k][1][i] - samples[j][1][i]) / span)
                lo, hi = min(per_second, default=0) / 1e6, max(per_second, default=0) / 1e6
                res.check(
                    abs(rate - cap) <= 0.1 * cap,
                    f"{m.name}: {rate / 1e6:.1f} MB/s over {t1 - t0:.1f} s at its proxy "
                    f"(cap {cap / 1e6:.0f}; 1 s windows {lo:.1f}..{hi:.1f})",
                )
    finally:
        await site.close()


async def phase_kill(
    args: argparse.Namespace,
    root: Path,
    s3: S3Server,
    entries: list[CatalogueObject],
    res: Results,
) -> None:
    sizes = {e.key: e.size for e in entries}
    how = (
        f"node rate cap {args.kill_rate_mb} MB/s"
        if args.kill_rate_mb
        else f"origin paced at {CHUNK // 1024} KiB per {args.kill_pace * 1000:.0f} ms per stream"
    )
    print(f"\n(d) SIGKILL a filling node {args.kills} times ({how})", flush=True)
    fill: dict[str, Any] = {"allowOutsideWindow": True, "concurrency": 4}
    if args.kill_rate_mb:
        fill["rateLimitBytesPerSecond"] = args.kill_rate_mb * 1_000_000
    site = Site(root / "site-d", s3, 32, fill, copies=1)
    rng = random.Random(5)  # kill timing, reproducible
    try:
        for _ in range(3):
            await site.add()
        site.write_configs()
        for m in site.members:
            m.proxy.pace_seconds = 0.0 if args.kill_rate_mb else args.kill_pace
        victim = site.members[0]
        partials = Partials(victim.store / "prepos" / "partial")
        owned = [k for k in sizes if owners(k, site.names(), 1) == [victim.name]]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for m in site.members:
                m.start()
            for m in site.members:
                await wait_ready(session, m)
            kills: list[dict[str, Any]] = []
            mark = 0  # the proxy log index where the current run of the victim began
            attempts = 0
            while len(kills) < args.kills and attempts < 3 * args.kills:
                attempts += 1
                if all(victim.meta(k) is not None for k in owned):
                    break  # the victim filled everything: no kill can land mid-fill any more
                for _ in range(600):  # until this run of the victim streams from the origin
                    if len(victim.proxy.log) > mark:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(rng.uniform(0.5, 2.0))
                victim.kill()
                await asyncio.sleep(0.3)  # the proxy sees the connections reset
                run = victim.proxy.log[mark:]
                in_flight = sorted({g.key for g in run if victim.meta(g.key) is None})
                record = kill_snapshot(victim, partials, in_flight, sizes)
                if in_flight:
                    kills.append(record)
                print(
                    f"  kill {attempts}: {len(in_flight)} in flight; on the node (written, "
                    f"not a verified piece yet) {record['node'] / MiB:.2f} MiB, whole again "
                    f"(objects <= 1 piece) {record['small'] / MiB:.2f} MiB, in socket buffers "
                    f"{record['transit'] / MiB:.2f} MiB",
                    flush=True,
                )
                mark = len(victim.proxy.log)
                victim.start()
                await wait_ready(session, victim)
            for m in site.members:
                m.proxy.pace_seconds = 0.0  # the kills are done: finish at full speed
            took, summary = await until_filled(session, site)
            print(f"  filled {took:.1f} s after the last restart: {summary}")
            refetch = refetched_bytes(victim.proxy.log)
            total_refetch = sum(refetch.values())
            node_lost = sum(k["node"] + k["small"] for k in kills)
            transit = sum(k["transit"] for k in kills)
            objects = sum(k["objects"] for k in kills)
            print(
                f"  re-fetched at the proxy: {total_refetch / MiB:.2f} MiB over {len(kills)} kills "
                f"({total_refetch / len(kills) / MiB:.2f} MiB per kill, {objects} in-flight "
                f"objects); snapshots: node-side {node_lost / MiB:.2f} MiB + socket buffers "
                f"{transit / MiB:.2f} MiB"
            )
            worst = max(k["worst_node"] for k in kills)
            over = [
                i + 1
                for i, k in enumerate(kills)
                if k["node"] + k["small"] + k["transit"] > k["objects"] * PIECE
            ]
            res.check(
                not over,
                "origin bytes re-fetched per kill <= one piece per in-flight object, socket "
                f"buffers included (kills over: {over})",
            )
            res.check(
                worst <= PIECE, f"node-side loss per in-flight object <= one piece ({worst} B)"
            )
            res.check(
                total_refetch <= node_lost + transit,
                "re-fetched bytes are accounted for by the kills' snapshots",
            )
            wrong = [k for k in owned if victim.meta(k) is None or not victim.meta(k)["pinned"]]  # type: ignore[index]
            res.check(not wrong, f"the killed node holds all {len(owned)} of its keys, pinned")
            res.check(len(kills) == args.kills, f"{len(kills)} kills landed mid-fill")
    finally:
        await site.close()


def kill_snapshot(
    victim: Member, partials: Partials, in_flight: list[str], sizes: dict[str, int]
) -> dict[str, Any]:
    """What one kill costs, per in-flight object, read from the proxy and the dead node's disk.

    ``sent_end`` is how far the proxy sent the object's body; the ``.part`` file's
    length is what the node had written (page cache survives SIGKILL); the verified
    prefix is what the restarted node resumes from (the same :class:`Partials` code).
    So ``sent_end - written`` was in socket buffers and ``written - verified`` is the
    node's own loss, bounded by one piece. Objects of one piece or less keep no
    partial and are fetched whole again.
    """
    record: dict[str, Any] = {
        "objects": len(in_flight),
        "transit": 0,
        "node": 0,
        "small": 0,
        "worst_node": 0,
    }
    for key in in_flight:
        sent_end = max((g.start + g.sent for g in victim.proxy.log if g.key == key), default=0)
        part = partials.root / f"{key_digest(key)}.part"
        written = part.stat().st_size if part.exists() else 0
        resume = partials.load(key)
        if resume is None:
            if sizes[key] <= PIECE:
                record["small"] += sent_end
                record["worst_node"] = max(record["worst_node"], sent_end)
            else:
                record["transit"] += sent_end  # killed before its first byte was written
            continue
        node_side = max(0, min(written, sent_end) - resume.verified_bytes)
        record["node"] += node_side
        record["transit"] += max(0, sent_end - written)
        record["worst_node"] = max(record["worst_node"], node_side)
    return record


async def run(args: argparse.Namespace) -> int:
    phases = set(args.phases.split(","))
    usage = shutil.disk_usage(args.tmp or tempfile.gettempdir())
    entries = catalogue(args.objects, args.sizes)
    total = sum(e.size for e in entries)
    need = total * (args.copies + 4)  # moto keeps objects in memory; stores and partials on disk
    print(
        f"catalogue: {len(entries)} objects, {total / 1e9:.2f} GB "
        f"({min(e.size for e in entries) / MiB:.2f}.."
        f"{max(e.size for e in entries) / MiB:.2f} MiB); "
        f"free disk {usage.free / 1e9:.0f} GB"
    )
    if usage.free < need:
        print(f"not enough disk: need about {need / 1e9:.1f} GB")
        return 2
    root = Path(tempfile.mkdtemp(prefix="edgefill-prepos-acceptance-", dir=args.tmp))
    res = Results()
    try:
        with S3Server(log_path=root / "moto.log") as s3:
            began = time.monotonic()
            etags = seed(s3, entries)
            print(f"seeded in {time.monotonic() - began:.0f} s", flush=True)
            if phases & {"window", "fill", "scale"}:
                await phase_window_fill_scale(args, root, s3, entries, etags, res)
                shutil.rmtree(root / "site-a", ignore_errors=True)
            if "rate" in phases:
                for nodes in (int(n) for n in args.rate_nodes.split(",")):
                    await phase_rate(args, root, s3, res, nodes)
                    shutil.rmtree(root / f"site-b{nodes}", ignore_errors=True)
            if "kill" in phases:
                await phase_kill(args, root, s3, entries, res)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    if res.failures:
        print(f"{len(res.failures)} check(s) failed:")
        for f in res.failures:
            print(f"  - {f}")
        return 1
    print("every check passed")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--sizes", choices=["log-uniform", "catalogue"], default="log-uniform")
    parser.add_argument("--phases", default="window,fill,scale,rate,kill")
    parser.add_argument("--closed-seconds", type=float, default=5.0)
    parser.add_argument("--rate-mb", type=int, default=50)
    parser.add_argument(
        "--rate-nodes",
        default="3,1",
        help="sites to run the cap on, by size: 3 (the site) and 1 (a node alone, so the "
        "machine is not the limit)",
    )
    parser.add_argument("--rate-seconds", type=float, default=20.0)
    parser.add_argument("--rate-warmup", type=float, default=3.0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument(
        "--kill-pace",
        type=float,
        default=0.004,
        help="seconds the origin proxy waits per 16 KiB chunk (a slow origin; the default)",
    )
    parser.add_argument(
        "--kill-rate-mb",
        type=int,
        default=0,
        help="instead of a slow origin, a node rate cap (socket buffers then fill up)",
    )
    parser.add_argument("--tmp", default=None, help="parent folder of the run's files")
    parser.add_argument("--keep", action="store_true", help="keep the run's files")
    args = parser.parse_args()
    # The proxies' server logs a traceback for every connection a killed node drops.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
