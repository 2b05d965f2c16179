"""Announce throughput: EdgeFill's tracker vs webtorrent's bittorrent-tracker, one run.

    python bench/tracker/run.py [--seconds 10] [--connections 32]

Both servers run on loopback on the same machine, one process each (the npm
server is single-threaded too), and the same wrk load (1 thread, N keep-alive
connections, announces from 1,000 rotating peers of one swarm, compact replies
with 50 peers) hits each in turn, the first server alternating between rounds.
Before timing, one announce to each checks that both hand out 50 peers per
reply (the same work). The ratio of the medians is what to quote; absolute
numbers drift between machines. Needs wrk, node, and ``npm ci --ignore-scripts`` in
tests/tracker/js. Not run in CI.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from cache_node.tracker import bencode
from edgefill_devenv.procs import stop_process

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


def wrk(port: int, info_hash: str, extra: str, seconds: int, connections: int) -> float:
    env = {"INFO_HASH": info_hash, "EXTRA": extra, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(HERE / "announce.lua"),
            f"http://127.0.0.1:{port}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors during the run:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(out)
    return float(match.group(1))


def check_reply(port: int, info_hash: str, extra: str) -> int:
    """One announce by hand, as the load sends them; returns how many peers came back.

    Both servers must answer with a bencoded compact peer list; after the warm-up
    both must hand out the same number of peers (numwant=50), or they would not
    be doing the same work.
    """
    url = (
        f"http://127.0.0.1:{port}/announce?info_hash={info_hash}&peer_id=-CHK001-000000000000"
        f"&port=7000&uploaded=0&downloaded=0&left=1&compact=1&numwant=50{extra}"
    )
    with urllib.request.urlopen(url) as resp:
        body = resp.read()
    reply = bencode.decode(body)
    if not isinstance(reply, dict) or not isinstance(reply.get(b"peers"), bytes):
        raise RuntimeError(f"unexpected reply from port {port}: {body[:200]!r}")
    peers = reply[b"peers"]
    assert isinstance(peers, bytes)
    return len(peers) // 6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating runs per server; medians compared"
    )
    args = parser.parse_args()

    ours_port, theirs_port = free_port(), free_port()
    ours = subprocess.Popen(
        [sys.executable, str(HERE / "serve_ours.py"), str(ours_port)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    theirs = subprocess.Popen(
        ["node", str(HERE / "serve_bt.mjs"), str(theirs_port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert ours.stdout is not None
        ih_hex = ours.stdout.readline().strip()
        info_hash = urllib.parse.quote(bytes.fromhex(ih_hex), safe="")
        wait_port(ours_port)
        wait_port(theirs_port)
        extra_ours = "&object=" + urllib.parse.quote("bench/object.bin", safe="")
        check_reply(ours_port, info_hash, extra_ours)
        check_reply(theirs_port, info_hash, "")
        # Warm up both, then alternate so drifting machine load hits both alike.
        wrk(ours_port, info_hash, extra_ours, 2, args.connections)
        wrk(theirs_port, info_hash, "", 2, args.connections)
        given = (
            check_reply(ours_port, info_hash, extra_ours),
            check_reply(theirs_port, info_hash, ""),
        )
        if given != (50, 50):
            raise RuntimeError(f"peers per reply differ (edgefill, bittorrent-tracker): {given}")
        runs: dict[str, list[float]] = {"edgefill": [], "bittorrent-tracker": []}
        targets = {
            "edgefill": (ours_port, extra_ours),
            "bittorrent-tracker": (theirs_port, ""),
        }
        for round_no in range(args.rounds):
            # Alternate who goes first, so neither always runs on a machine that the
            # other has just warmed (or heated) up.
            order = list(targets) if round_no % 2 == 0 else list(reversed(targets))
            for name in order:
                port, extra = targets[name]
                runs[name].append(wrk(port, info_hash, extra, args.seconds, args.connections))
        results = {name: statistics.median(values) for name, values in runs.items()}
    finally:
        for proc in (ours, theirs):
            stop_process(proc, timeout=10)
    for name, rps in results.items():
        each = ", ".join(f"{v:.0f}" for v in runs[name])
        print(f"{name:>20}: {rps:10.0f} announces/s (median of {each})")
    ratio = results["edgefill"] / results["bittorrent-tracker"]
    print(f"{'ratio':>20}: {ratio:10.2f}x (edgefill / bittorrent-tracker, goal >= 1x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
