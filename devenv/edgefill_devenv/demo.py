"""``make demo``: EdgeFill on the local cluster, end to end, in one command.

1. the local cluster (real control plane, kwok nodes from kind-config.yaml);
2. the S3 origin (moto server mode, 127.0.0.1:9000) seeded with a synthetic
   catalogue, behind a counting proxy (127.0.0.1:9001) that measures every
   byte the origin sends;
3. the CRDs, the operator, and ``examples/`` (two ISP sites, a parent tier,
   two ContentSets) in namespace ``edge``; the sites' fill windows are opened
   now (``allowOutsideWindow``) so the demo does not wait for 02:00;
4. a cache-node process for every cache-node pod, on the pod's loopback IP;
5. wait for the fill, then a client workload (Zipf popularity, byte ranges,
   every body verified) steered to each site's nodes;
6. a per-site summary (fill %, hit ratio by source, origin bytes, offload)
   and a PNG plot of bytes served by source over time.

Everything stays up for exploration (``edgefill status``, the metrics
endpoints); ``make demo-down`` stops what this started, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3

from edgefill_devenv import cluster, s3
from edgefill_devenv.catalogue import generate, seed_demo
from edgefill_devenv.paths import state_dir
from edgefill_devenv.stack import Stack, eventually, load_examples, token_for
from edgefill_devenv.workload import Node, Sample, observe_while, run_clients, summarise

BUCKET = "catalogue"
OBJECTS = 120
PROXY_PORT = 9001
NAMESPACE = "edge"
PEER_SHARE = 0.3  # share of requests from peer-assisted clients


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def demo_dir() -> Path:
    return state_dir() / "demo"


def _pids_file() -> Path:
    return demo_dir() / "pids.json"


def _seeded(endpoint: str) -> bool:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=s3.ACCESS_KEY,
        aws_secret_access_key=s3.SECRET_KEY,
        region_name=s3.REGION,
    )
    try:
        client.head_object(Bucket=BUCKET, Key="manifests/popular.jsonl")
    except Exception:  # any error: not seeded yet
        return False
    return True


def start_proxy(origin: str, port: int, folder: Path) -> subprocess.Popen[bytes]:
    """The counting origin proxy as a process (it outlives ``make demo``)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "origin-proxy.log").open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefill_devenv.origin_proxy",
                "--upstream",
                origin,
                "--bucket",
                BUCKET,
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    s3.wait_until_ready(f"http://127.0.0.1:{port}", 30, proc)
    return proc


def open_windows(stack: Stack) -> None:
    for doc in load_examples():
        if doc["kind"] != "EdgeSite":
            continue
        patch = {"spec": {"fill": {"allowOutsideWindow": True}}}
        stack.cluster.kubectl(
            "patch",
            "edgesite",
            doc["metadata"]["name"],
            "-n",
            stack.namespace,
            "--type=merge",
            "-p",
            json.dumps(patch),
        )


def _node_status(url: str) -> dict[str, Any] | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/status", timeout=5) as resp:  # noqa: S310 - loopback
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except OSError:
        return None


def nodes_of(stack: Stack) -> list[Node]:
    out = []
    for key, cfg in sorted(stack.node_configs().items()):
        listen = cfg["listen"]
        out.append(
            Node(
                site=cfg["site"]["name"],
                name=key.split("/")[1],
                client_url=f"http://{listen['host']}:{listen['clientPort']}",
                metrics_url=f"http://{listen['host']}:{listen['metricsPort']}",
            )
        )
    return out


def fill_progress(nodes: list[Node]) -> dict[str, tuple[int, int]] | None:
    """site -> (objects stored, objects owned) over the nodes' fill plans."""
    per_site: dict[str, list[int]] = {}
    for node in nodes:
        status = _node_status(node.metrics_url)
        if status is None:
            return None
        acc = per_site.setdefault(node.site, [0, 0])
        for entry in status.get("fillPlan") or []:
            total = entry.get("objectsTotal")
            if total is None:
                return None  # not resolved yet
            acc[0] += int(total) - int(entry.get("objectsPending", total))
            acc[1] += int(total)
    return {site: (v[0], v[1]) for site, v in per_site.items()}


def plot(samples: list[Sample], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted({s for smp in samples for s in smp.served})
    fig, axes = plt.subplots(len(sites), 1, figsize=(9, 3.2 * max(1, len(sites))), squeeze=False)
    t0 = samples[0].at
    for ax, site in zip(axes[:, 0], sites, strict=True):
        times = [s.at - t0 for s in samples[1:]]
        for source in ("hit", "peer", "parent", "origin"):
            rates = []
            for prev, cur in itertools.pairwise(samples):
                dt = max(cur.at - prev.at, 1e-6)
                delta = cur.served.get(site, {}).get(source, 0) - prev.served.get(site, {}).get(
                    source, 0
                )
                rates.append(delta / dt / 1e6)
            ax.plot(times, rates, label=source)
        ax.set_title(f"site {site}: bytes served by source")
        ax.set_ylabel("MB/s")
        ax.legend(loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the client phase started")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def contentsets_filled(stack: Stack) -> bool:
    """Whether the operator reports every ContentSet Filled=True for its current generation.

    The cluster's word, aggregated over every site the ContentSet selects: unlike the
    nodes' own progress it cannot be complete for a fill plan a node has not received
    yet (a node started before the operator rendered its ContentSets has an empty plan,
    which is trivially "complete").
    """
    items = stack.get("contentsets").get("items") or []
    for cs in items:
        status = cs.get("status") or {}
        if status.get("observedGeneration") != cs["metadata"].get("generation", 1):
            return False
        filled = [c for c in status.get("conditions") or [] if c.get("type") == "Filled"]
        if not filled or filled[0].get("status") != "True":
            return False
    return bool(items)


def wait_filled(stack: Stack, nodes: list[Node], timeout: float = 420) -> None:
    """Until every node has stored every object it owns of every fill-plan entry, and
    the operator reports every ContentSet filled (see :func:`contentsets_filled`)."""
    last = ""

    def filled() -> bool:
        nonlocal last
        stack.check_alive()
        progress = fill_progress(nodes)
        if progress:
            line = "  ".join(f"{s} {d}/{t}" for s, (d, t) in sorted(progress.items()))
            if line != last:
                say(f"fill: {line}")
                last = line
        if progress is None or not all(d >= t for d, t in progress.values()):
            return False
        return contentsets_filled(stack)

    eventually("pre-positioning complete", filled, timeout, 2.0)


def example_token() -> str:
    """A token signed with the examples' first live key, scoped to ``/vod/``."""
    docs = load_examples()
    site = next(d for d in docs if d["kind"] == "EdgeSite")
    key = site["spec"]["tokens"]["keys"][0]
    secret = next(
        d
        for d in docs
        if d["kind"] == "Secret"
        and d["metadata"]["name"] == site["spec"]["tokens"]["secretRef"]["name"]
    )
    return token_for("/vod/", secret["stringData"][key["secretKey"]].encode(), key["id"])


def client_phase(
    stack: Stack,
    nodes: list[Node],
    objects: int,
    requests_per_site: int,
    proxy_port: int,
    out_dir: Path,
) -> dict[str, Any]:
    """Run the client workload; returns the report (also written as summary.json + PNG)."""
    entries = generate(objects)
    results, samples = asyncio.run(
        observe_while(
            run_clients(
                nodes,
                entries,
                example_token(),
                requests_per_site=requests_per_site,
                peer_share=PEER_SHARE,
            ),
            nodes,
            f"http://127.0.0.1:{proxy_port}/_origin_proxy/stats",
        )
    )
    summary = summarise(samples)
    origin_bytes = samples[-1].origin_bytes - samples[0].origin_bytes
    served = sum(r.bytes for r in results.values())
    png = out_dir / "edgefill-demo.png"
    plot(samples, png)
    report = {
        "sites": {
            s: {
                **summary.get(s, {}),
                "clientRequests": r.requests,
                "clientBytes": r.bytes,
                "peerAssistedRequests": r.peer_assisted,
                "p2pBytes": r.p2p_bytes,
                "webSeedBytes": r.seed_bytes,
                "peerEfficiency": r.peer_efficiency,
                "trackerRefusals": r.tracker_refusals,
                "errors": dict(r.errors),
            }
            for s, r in results.items()
        },
        "originBytesClientPhase": origin_bytes,
        "bytesServed": served,
        "originShare": origin_bytes / served if served else None,
        "plot": str(png),
    }
    (out_dir / "summary.json").write_text(json.dumps(report, indent=2))
    return report


def up(objects: int = OBJECTS, requests_per_site: int = 600) -> int:
    started = time.monotonic()
    say("starting the local cluster")
    c = cluster.up()
    origin = s3.up()
    if not _seeded(origin.endpoint_url):
        say(f"seeding s3://{BUCKET} with {objects} objects")
        seed_demo(origin.endpoint_url, BUCKET, objects)
    down_processes()
    proxy = start_proxy(origin.endpoint_url, PROXY_PORT, demo_dir())
    stack = Stack(c, f"http://127.0.0.1:{PROXY_PORT}", demo_dir(), NAMESPACE)
    stack.processes["origin-proxy"] = proxy
    try:
        stack.install_crds()
        stack.start_operator()
        stack.start_podhost()
        stack.apply_examples()
        open_windows(stack)
        say("waiting for both EdgeSites to be Ready")
        stack.wait_sites(["alpha-east", "beta-west"], timeout=240)
        nodes = eventually(
            "a cache-node process per pod",
            lambda: n if len(n := nodes_of(stack)) >= 4 else None,
            120,
        )
        say(f"{len(nodes)} cache nodes: " + ", ".join(f"{n.name}@{n.client_url}" for n in nodes))

        wait_filled(stack, nodes)
        say("fill complete; starting the client phase")
        report = client_phase(stack, nodes, objects, requests_per_site, PROXY_PORT, demo_dir())
        print_summary(report, nodes, stack)
    except BaseException:
        stack.stop()
        raise
    _pids_file().write_text(json.dumps({n: p.pid for n, p in stack.processes.items()}))
    say(
        f"done in {time.monotonic() - started:.0f}s; everything stays up: `make demo-down` stops it"
    )
    return 0


def print_summary(report: dict[str, Any], nodes: list[Node], stack: Stack) -> None:
    print()
    print("EdgeFill demo summary (client phase)")
    print("=" * 72)
    for site, data in sorted(report["sites"].items()):
        ratio = data.get("hitRatio", {})
        served = data.get("servedBytes", {})
        print(
            f"site {site}: {data['clientRequests']} requests verified, "
            f"{data['clientBytes'] / 1e6:.1f} MB, errors {data['errors'] or 'none'}"
        )
        print(
            "  hit ratio by source: "
            + ", ".join(f"{s} {ratio.get(s, 0):.1%}" for s in ("hit", "peer", "parent", "origin"))
        )
        print(
            f"  peer assist: {data['peerAssistedRequests']} clients' objects, "
            f"{data['p2pBytes'] / 1e6:.1f} MB from other clients, "
            f"{data['webSeedBytes'] / 1e6:.1f} MB from the web seed, "
            f"peer efficiency {data['peerEfficiency']:.1%}, "
            f"announces refused by the tracker {data['trackerRefusals']}"
        )
        print(
            "  bytes by source:     "
            + ", ".join(
                f"{s} {served.get(s, 0) / 1e6:.1f} MB" for s in ("hit", "peer", "parent", "origin")
            )
        )
    share = report["originShare"]
    print(
        f"origin bytes in the client phase: {report['originBytesClientPhase'] / 1e6:.1f} MB "
        f"= {share:.1%} of {report['bytesServed'] / 1e6:.1f} MB served"
        if share is not None
        else "no bytes served"
    )
    print(f"plot: {report['plot']}")
    print(f"summary JSON: {demo_dir() / 'summary.json'}")
    print()
    print("Explore:")
    print(f"  export KUBECONFIG={stack.cluster.kubeconfig}")
    print(f"  edgefill status -n {stack.namespace}")
    print(f"  kubectl get edgesites,contentsets -n {stack.namespace}")
    for n in nodes:
        print(f"  curl {n.metrics_url}/metrics   # {n.name}")
    print("  make demo-down")


def down_processes() -> None:
    path = _pids_file()
    if not path.exists():
        return
    for pid in json.loads(path.read_text()).values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for pid in json.loads(path.read_text()).values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    path.unlink()


def down() -> int:
    down_processes()
    s3.down()
    cluster.down()
    say("stopped everything the demo started")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="EdgeFill end-to-end demo on the local cluster.")
    parser.add_argument("cmd", choices=["up", "down"])
    parser.add_argument("--objects", type=int, default=OBJECTS, help="catalogue size")
    parser.add_argument("--requests-per-site", type=int, default=600)
    args = parser.parse_args(argv)
    if args.cmd == "up":
        return up(args.objects, args.requests_per_site)
    return down()


if __name__ == "__main__":
    sys.exit(main())
