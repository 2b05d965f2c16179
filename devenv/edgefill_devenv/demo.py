"""``make demo``: EdgeFill on the local cluster, end to end.

What runs today: the local cluster (real control plane + kwok nodes from
kind-config.yaml), the S3 test origin on 127.0.0.1:9000 seeded with a
synthetic catalogue, and - when the operator's CRDs and examples are present -
the CRDs and examples applied to the cluster. The full scenario (operator,
cache-node processes standing in for the sites' pods, fill, client workload,
per-site summary and plot) is tracked by the demo issue; the steps that exist
run for real, the rest is announced, never faked.
"""

from __future__ import annotations

import argparse
import sys

from edgefill_devenv import cluster, s3
from edgefill_devenv.catalogue import generate, seed_bucket
from edgefill_devenv.paths import REPO_ROOT

BUCKET = "catalogue"
OBJECTS = 200


def up() -> int:
    c = cluster.up()
    origin = s3.up()
    entries = generate(OBJECTS)
    total = seed_bucket(origin.endpoint_url, BUCKET, entries, manifest_key="manifests/vod.jsonl")
    print(
        f"S3 origin {origin.endpoint_url}: s3://{BUCKET} holds {len(entries)} objects "
        f"({total / 2**20:.0f} MiB) and manifests/vod.jsonl"
    )
    crds = sorted((REPO_ROOT / "crds").glob("*.yaml"))
    if crds:
        for crd in crds:
            c.kubectl("apply", "--server-side", "-f", str(crd))
        print(f"applied {len(crds)} CRDs from crds/")
    print(f"Local cluster: export KUBECONFIG={c.kubeconfig}")
    print(
        "The end-to-end scenario (operator, cache nodes, fill, clients, summary) is coming "
        "with the demo issue; `make demo-down` removes what this started."
    )
    return 0


def down() -> int:
    s3.down()
    cluster.down()
    print("demo stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="EdgeFill demo on the local cluster.")
    parser.add_argument("cmd", choices=["up", "down"])
    args = parser.parse_args(argv)
    return up() if args.cmd == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
