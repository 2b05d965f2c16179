"""Hit throughput of the cache node against nginx serving the same files, in one run.

Both servers run on this machine on loopback with the same number of worker
processes: nginx (Debian package, ``worker_processes`` = the node's, sendfile
on, access log off) serves the files from a directory; the cache node (one
process: it has no multi-process mode) serves the same objects as hits from its
store (filled once from the S3 test server beforehand). ``wrk`` (one thread,
32 connections) measures each in turn for 4 KiB, 1 MiB and 8 MiB objects;
with ``--rounds N`` nginx and the node alternate N times per size and the
median of each is reported, which evens out other load on a shared machine.

Prints both worker counts and the event loop, then req/s, GB/s and the ratio
node/nginx. Needs ``nginx`` and ``wrk`` (``apt-get install -y nginx wrk``). Not
run in CI: absolute numbers drift between machines, the ratio is the figure to
quote.

    python bench/cache_node/hit_throughput.py [--seconds 10] [--connections 32]
        [--rounds 1] [--event-loop auto|asyncio|uvloop] [--sizes 4KiB,1MiB,8MiB]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from edgefill_devenv.catalogue import object_bytes
from edgefill_devenv.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server, free_port

SIZES = {"4KiB": 4 * 1024, "1MiB": 1024 * 1024, "8MiB": 8 * 1024 * 1024}
BUCKET = "bench-hits"

NODE_WORKERS = 1  # the cache node serves from one process (see docs/operations.md)

NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
user root;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
    }}
}}
"""


def wrk(url: str, seconds: int, connections: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses")
    return float(match.group(1))


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                resp.read()
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="alternations per size (median)")
    parser.add_argument(
        "--event-loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="node's loop"
    )
    parser.add_argument(
        "--sizes", default=",".join(SIZES), help=f"which objects to measure, of {','.join(SIZES)}"
    )
    args = parser.parse_args()
    names = [name for name in args.sizes.split(",") if name]
    if not names or any(name not in SIZES for name in names):
        parser.error(f"--sizes takes names from {','.join(SIZES)}")
    sizes = {name: SIZES[name] for name in names}
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install -y nginx wrk", file=sys.stderr)
            return 2
    root = Path(tempfile.mkdtemp(prefix="edgefill-bench-"))
    os.chmod(root, 0o755)  # noqa: PTH101
    (root / "www").mkdir()
    (root / "tmp").mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
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
            for name, size in SIZES.items():
                data = object_bytes(name, size)
                (root / "www" / name).write_bytes(data)
                client.put_object(Bucket=BUCKET, Key=name, Body=data)

            nginx_port = free_port()
            conf = root / "nginx.conf"
            conf.write_text(NGINX_CONF.format(root=root, port=nginx_port, workers=NODE_WORKERS))
            procs.append(subprocess.Popen(["nginx", "-c", str(conf)], start_new_session=True))

            ports = {"clientPort": free_port(), "peerPort": free_port(), "metricsPort": free_port()}
            node_conf = {
                "site": {"namespace": "bench", "name": "site"},
                "listen": {"host": "127.0.0.1", **ports},
                "store": {"path": str(root / "store"), "maxBytes": 1 << 30},
                "origin": {"endpointUrl": s3.endpoint_url, "bucket": BUCKET},
                "tokens": {"enabled": False},
            }
            (root / "node.json").write_text(json.dumps(node_conf))
            env = {**os.environ, **s3.env()}
            env.pop("EDGEFILL_S3_ENDPOINT", None)
            with (root / "node.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "cache_node",
                            "--config",
                            str(root / "node.json"),
                            "--node-name",
                            "bench-0",
                            "--log-level",
                            "WARNING",
                            "--event-loop",
                            args.event_loop,
                        ],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            nginx = f"http://127.0.0.1:{nginx_port}"
            node = f"http://127.0.0.1:{ports['clientPort']}"
            wait_http(f"{nginx}/4KiB")
            wait_http(f"http://127.0.0.1:{ports['metricsPort']}/readyz")
            for name in SIZES:  # fill once, then everything is a hit
                wait_http(f"{node}/{name}")
            time.sleep(0.5)

            print(
                f"workers: nginx {NODE_WORKERS}, node {NODE_WORKERS}; node event loop "
                f"{args.event_loop}; wrk 1 thread, {args.connections} connections, "
                f"{args.seconds}s x {args.rounds} round(s), median"
            )
            print(
                f"{'object':>7} | {'nginx req/s':>12} {'GB/s':>6} | {'node req/s':>11} "
                f"{'GB/s':>6} | ratio"
            )
            for name, size in sizes.items():
                n_runs, c_runs = [], []
                for _ in range(args.rounds):
                    n_runs.append(wrk(f"{nginx}/{name}", args.seconds, args.connections))
                    c_runs.append(wrk(f"{node}/{name}", args.seconds, args.connections))
                n_rps, c_rps = statistics.median(n_runs), statistics.median(c_runs)
                print(
                    f"{name:>7} | {n_rps:12.0f} {n_rps * size / 1e9:6.2f} | {c_rps:11.0f} "
                    f"{c_rps * size / 1e9:6.2f} | {c_rps / n_rps:.2f}x",
                    flush=True,
                )
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
