"""Time to first byte of a miss served through a peer, against a direct GET from S3.

Two cache-node processes form one site on loopback (127.0.0.1, distinct
ports) in front of the S3 test server. For each of N cold objects, the client
asks the node that does *not* own the key: that node asks the owner over the
peer endpoint, the owner fills from the origin, and bytes flow back
cut-through. The same objects are also fetched directly from the S3 server
with aiobotocore (the same client library the node uses). Prints the median
and p90 time to first byte of each and the ratio.

    python bench/cache_node/peer_ttfb.py [--objects 40] [--size 1048576]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from aiobotocore.session import get_session

from cache_node.ring import rank
from edgefill_devenv.catalogue import object_bytes
from edgefill_devenv.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server, free_port

BUCKET = "bench-ttfb"


def _wait(url: str) -> None:
    for _ in range(300):
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                resp.read()
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


async def _ttfb_node(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.get(url) as resp:
        await resp.content.readany()
        first = time.perf_counter() - started
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: {resp.status}")
    return first


async def _ttfb_s3(client: object, key: str) -> float:
    started = time.perf_counter()
    resp = await client.get_object(Bucket=BUCKET, Key=key)  # type: ignore[attr-defined]
    body = resp["Body"]
    await body.read(1)
    first = time.perf_counter() - started
    await body.read()
    body.close()
    return first


async def measure(args: argparse.Namespace, s3: S3Server, root: Path) -> None:
    keys = [f"ttfb/obj-{i:03d}.bin" for i in range(args.objects)]
    secret = root / "peer-secret"
    secret.write_bytes(b"bench-peer-secret-0123456789abcdef")
    ports = [(free_port(), free_port(), free_port()) for _ in range(2)]
    members = [
        {"name": f"n{i}", "peerUrl": f"http://127.0.0.1:{p[1]}"} for i, p in enumerate(ports)
    ]
    procs = []
    try:
        for i, (client_port, peer_port, metrics_port) in enumerate(ports):
            conf = {
                "site": {"namespace": "bench", "name": "site"},
                "listen": {
                    "host": "127.0.0.1",
                    "clientPort": client_port,
                    "peerPort": peer_port,
                    "metricsPort": metrics_port,
                },
                "store": {"path": str(root / f"store-{i}"), "maxBytes": 1 << 30},
                "origin": {"endpointUrl": s3.endpoint_url, "bucket": BUCKET},
                "peering": {"members": members, "secretFile": str(secret)},
                "tokens": {"enabled": False},
            }
            path = root / f"node-{i}.json"
            path.write_text(json.dumps(conf))
            env = {**os.environ, **s3.env()}
            env.pop("EDGEFILL_S3_ENDPOINT", None)
            procs.append(
                subprocess.Popen(  # noqa: ASYNC220 - setup, before any timing
                    [
                        sys.executable,
                        "-m",
                        "cache_node",
                        "--config",
                        str(path),
                        "--node-name",
                        f"n{i}",
                        "--log-level",
                        "WARNING",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        for _, _, metrics_port in ports:
            _wait(f"http://127.0.0.1:{metrics_port}/readyz")
        via_peer: list[float] = []
        async with aiohttp.ClientSession() as session:
            for key in keys:
                owner = rank(key, ["n0", "n1"])[0]
                other = 1 if owner == "n0" else 0
                url = f"http://127.0.0.1:{ports[other][0]}/{key}"
                via_peer.append(await _ttfb_node(session, url))
        direct: list[float] = []
        async with get_session().create_client(
            "s3",
            endpoint_url=s3.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        ) as client:
            for key in keys:
                direct.append(await _ttfb_s3(client, key))
        p = statistics.median(via_peer)
        d = statistics.median(direct)
        q = statistics.quantiles(via_peer, n=10)[-1]
        r = statistics.quantiles(direct, n=10)[-1]
        print(f"objects: {len(keys)} x {args.size} B (cold, asked at the non-owner)")
        print(f"direct S3 GET     TTFB median {d * 1000:7.2f} ms  p90 {r * 1000:7.2f} ms")
        print(f"miss through peer TTFB median {p * 1000:7.2f} ms  p90 {q * 1000:7.2f} ms")
        print(f"ratio (peer / direct, median): {p / d:.2f}x")
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024 * 1024)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgefill-ttfb-"))
    with S3Server(log_path=root / "moto.log") as s3:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=s3.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )
        client.create_bucket(Bucket=BUCKET)
        for i in range(args.objects):
            key = f"ttfb/obj-{i:03d}.bin"
            client.put_object(Bucket=BUCKET, Key=key, Body=object_bytes(key, args.size))
        asyncio.run(measure(args, s3, root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
