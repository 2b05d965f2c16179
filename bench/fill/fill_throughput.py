"""Fill throughput of one cache node against a plain aiobotocore download, in one run.

Both sides fetch the same objects from the same S3 origin (the S3 test server
on loopback, a moto_server child process) with the same concurrency:

* plain: one aiobotocore client, ``concurrency`` tasks, each streaming
  ``get_object`` bodies (256 KiB reads, the node's chunk) into a file per
  object in the same filesystem as the node's store, and **fsyncing each file
  before it counts as done** (in a worker thread, as the store does; a
  stream's slot is free for the next object while its file syncs, as the
  node frees a fill slot when a body is in, before the commit). A cache
  must have an object on disk before it reports it stored; a download left
  in the page cache would measure memory, not a fill, and on this machine
  the page cache (~300 MB/s) outruns the disk (~230 MB/s with fsync). The
  plain side checks the origin's CRC-32 as botocore does by default (on its
  event loop), and does no piece checksums, no rename and no metadata file:
  those are the node's own costs and count against it;
* node: a cache node (store, loader, the pre-positioning scheduler) fills the
  same catalogue as a ContentSet from a prefix listing, with
  ``fill.concurrency`` = ``concurrency`` and a rate cap far above what the
  machine can move: the fill writes through the store (a CRC-32 per piece,
  checked against the origin's, fsync, rename, meta file),
  records each object's pin in that one meta file and keeps a durable partial
  for resume. The pieces' SHA-256 for peer assist is not part of a fill: the
  node computes it when an object's manifest is first asked for.

After one warm-up of the origin the two alternate for ``--rounds`` rounds (other
load on the machine then hits both alike); each round's and the median ratio
node/plain are printed (issue 5's goal is at least 0.9x). The default set is
128 objects of 8 MiB (1 GiB per side and round, several seconds each); each
round's files are deleted before the next. Logs below WARNING are dropped.
Not run in CI.

    flock /tmp/edgefill-heavy.lock python bench/fill/fill_throughput.py \\
        [--objects 128] [--size-mib 8] [--concurrency 4] [--rounds 3] \\
        [--event-loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

import structlog
from aiobotocore.session import get_session
from aiohttp import web

from cache_node.app import create_apps
from cache_node.config import NodeConfig
from cache_node.prepos.scheduler import Prepositioner
from edgefill_devenv.catalogue import object_bytes
from edgefill_devenv.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server

MiB = 1024 * 1024
BUCKET = "fill-bench"
PREFIX = "bench/"
FILL_TIMEOUT_SECONDS = 300


def seed(server: S3Server, keys: dict[str, int]) -> None:
    import boto3  # bench-only: seeding, not measured

    s3 = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    s3.create_bucket(Bucket=BUCKET)
    for key, size in keys.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=object_bytes(key, size))


async def plain_download(server: S3Server, keys: list[str], concurrency: int, out: Path) -> int:
    session = get_session()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for key in keys:
        queue.put_nowait(key)
    total = 0
    syncs: list[asyncio.Task[None]] = []
    async with session.create_client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:

        async def worker() -> None:
            nonlocal total
            while not queue.empty():
                key = queue.get_nowait()
                resp = await client.get_object(Bucket=BUCKET, Key=key)
                path = out / key.replace("/", "_")
                fh = path.open("wb")
                try:
                    async with resp["Body"] as body:
                        while chunk := await body.read(256 * 1024):
                            fh.write(chunk)
                            total += len(chunk)
                    fh.flush()
                except BaseException:
                    fh.close()
                    raise
                # The stream is done: the next one starts while this file syncs (the
                # node likewise frees a fill slot when the body is in, before its commit).
                syncs.append(asyncio.create_task(asyncio.to_thread(sync_close, fh)))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await asyncio.gather(*syncs)
    return total


def sync_close(fh: BinaryIO) -> None:
    try:
        os.fsync(fh.fileno())
    finally:
        fh.close()


def node_config(server: S3Server, store: Path, concurrency: int) -> NodeConfig:
    doc: dict[str, Any] = {
        "site": {"namespace": "bench", "name": "fill"},
        "listen": {"host": "127.0.0.1"},
        "store": {"path": str(store), "maxBytes": 64 * 1024 * MiB},
        "origin": {"endpointUrl": server.endpoint_url, "bucket": BUCKET},
        "fill": {
            "allowOutsideWindow": True,
            "concurrency": concurrency,
            "rateLimitBytesPerSecond": 100 * 1024 * MiB,
        },
        "fillPlan": [
            {
                "name": "bench/set",
                "generation": 1,
                "source": {"bucket": BUCKET, "prefixes": [PREFIX]},
            }
        ],
        "tokens": {"enabled": False},
        "tracker": {"enabled": False},
    }
    return NodeConfig.model_validate(doc)


async def node_fill(
    server: S3Server, store: Path, concurrency: int, count: int
) -> tuple[float, float]:
    """Seconds from the scheduler's start, and from the catalogue resolved, until all stored."""
    apps = create_apps(node_config(server, store, concurrency), "bench-0")
    runner = web.AppRunner(apps.client, access_log=None)
    await runner.setup()
    try:
        while not apps.node.ready:  # noqa: ASYNC110 - a plain flag set by store recovery
            await asyncio.sleep(0.01)
        prepos = Prepositioner(apps.node)  # the production tick: a step per second
        began = time.perf_counter()
        resolved: float | None = None
        prepos.start()
        try:
            while True:
                progress = prepos.progress.get("bench/set")
                if progress is not None and resolved is None:
                    resolved = time.perf_counter()
                if progress is not None and progress.objects_stored == count:
                    break
                if time.perf_counter() - began > FILL_TIMEOUT_SECONDS:
                    raise RuntimeError(f"the node did not fill in time: {prepos.report()}")
                await asyncio.sleep(0.01)  # <= 0.3% of a round; a tighter poll costs the node
            done = time.perf_counter()
            assert resolved is not None
            return done - began, done - resolved
        finally:
            await prepos.close()
    finally:
        await runner.cleanup()


def quiet() -> None:
    """Warnings and errors only: per-object info logs would cost the node time and spam."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.WARNING)


async def run(args: argparse.Namespace) -> None:
    quiet()
    keys = {f"{PREFIX}obj-{i:04d}.bin": args.size_mib * MiB for i in range(args.objects)}
    total = sum(keys.values())
    mb = total / 1e6
    ratios: list[float] = []
    fill_ratios: list[float] = []
    print(
        f"objects={args.objects} size={args.size_mib} MiB concurrency={args.concurrency} "
        f"event loop={args.event_loop}"
    )
    with tempfile.TemporaryDirectory() as tmp, S3Server(log_path=Path(tmp) / "moto.log") as s3:
        root = Path(tmp)
        os.environ.update(s3.env())  # the node's default credential chain finds these
        seed(s3, keys)
        (root / "warm").mkdir()
        await plain_download(s3, list(keys), args.concurrency, root / "warm")  # warm-up
        shutil.rmtree(root / "warm")
        # Alternate the two, so load from other processes hits both alike.
        for n in range(args.rounds):
            (root / f"plain-{n}").mkdir()
            began = time.perf_counter()
            got = await plain_download(s3, list(keys), args.concurrency, root / f"plain-{n}")
            plain = time.perf_counter() - began
            assert got == total
            shutil.rmtree(root / f"plain-{n}")
            node, filling = await node_fill(s3, root / f"store-{n}", args.concurrency, len(keys))
            shutil.rmtree(root / f"store-{n}")
            ratios.append(plain / node)
            fill_ratios.append(plain / filling)
            print(
                f"round {n + 1}: plain aiobotocore {mb / plain:7.1f} MB/s | cache node "
                f"{mb / node:7.1f} MB/s incl. listing ({plain / node:.2f}x), "
                f"{mb / filling:7.1f} MB/s filling ({plain / filling:.2f}x)"
            )
    print(
        f"ratio node/plain, median of {args.rounds}: {statistics.median(ratios):.2f}x "
        f"including the catalogue listing, {statistics.median(fill_ratios):.2f}x filling only"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=128)
    parser.add_argument("--size-mib", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="alternating plain/node rounds")
    parser.add_argument(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the loop both sides run on (the node's --event-loop; its default is asyncio)",
    )
    args = parser.parse_args()
    if args.event_loop == "uvloop":
        import uvloop  # the node's optional extra (edgefill[fast])

        uvloop.run(run(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
