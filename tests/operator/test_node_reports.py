"""The /status contract, end to end: a real cache-node process runs the config the
operator rendered, serves requests, and the operator's poller reads its report.

This is the one place the two halves of the contract meet without importing
each other: the operator renders ``node.json``, the node loads it, and the
operator parses what the node reports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edgefill_devenv.catalogue import CatalogueObject, generate, object_bytes, seed_bucket
from edgefill_devenv.procs import stop_process
from edgefill_devenv.s3 import free_port
from edgefill_devenv.stack import load_examples
from edgefill_operator.nodes import HttpPoller, NodeAddress
from edgefill_operator.planning import fill_plan
from edgefill_operator.render import SiteInputs, node_config
from edgefill_operator.report import aggregate_site, site_status_fields

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


def _wait_committed(status_url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the node reports no fill in progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the node exited"
        with urllib.request.urlopen(status_url, timeout=5) as resp:
            if json.loads(resp.read())["fillsInProgress"] == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"fills still in progress after {timeout}s")


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"cache node exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not up after {timeout}s")


def test_operator_reads_what_a_real_node_reports(
    s3_server: Any, edge_example: Any, tmp_path: Path
) -> None:
    key = "adhoc/seg-00000.m4s"
    seed_bucket(s3_server.endpoint_url, "catalogue", [CatalogueObject(key, 300 * 1024, 1)])
    # The popular-titles ContentSet's manifest: six small segments to pre-position.
    planned = generate(6)
    seed_bucket(
        s3_server.endpoint_url, "catalogue", planned, manifest_key="manifests/popular.jsonl"
    )

    site = edge_example("EdgeSite", "beta-west")
    site["spec"]["tokens"] = {"enabled": False}
    site["spec"]["origin"]["endpoint"] = s3_server.endpoint_url
    site["spec"]["replicas"] = 1
    site["spec"]["fill"]["allowOutsideWindow"] = True  # fill now, whatever the clock says
    sets = [edge_example("ContentSet", n) for n in ("popular-titles", "series-launch")]
    plan = fill_plan(site, sets)
    doc = node_config(SiteInputs(site=site, fill_plan=plan))
    # The pod would mount the credentials Secret here.
    creds = tmp_path / "origin"
    creds.mkdir()
    (creds / "accessKeyId").write_text("edgefill-test")
    (creds / "secretAccessKey").write_text("edgefill-test-secret")
    doc["origin"]["credentialsDir"] = str(creds)
    peer_secret = tmp_path / "peer-secret"
    peer_secret.write_text("6d2f9b1e0c4a47d3a8e5b7c1d9f0e2a3")
    doc["peering"]["secretFile"] = str(peer_secret)
    # ... and the tracker's manifest signing key (the examples' Secret value).
    secrets = [d for d in load_examples() if d["kind"] == "Secret"]
    signing = next(s for s in secrets if s["metadata"]["name"] == "tracker-signing-key")
    key_file = tmp_path / "manifest-signing.key"
    key_file.write_text(signing["stringData"]["ed25519"])
    doc["tracker"]["manifestKeyFile"] = str(key_file)
    config = tmp_path / "node.json"
    config.write_text(json.dumps(doc))

    client, peer, metrics = free_port(), free_port(), free_port()
    log = (tmp_path / "node.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cache_node",
            "--config",
            str(config),
            "--node-name",
            "beta-west-cache-0",
            "--host",
            HOST,
            "--client-port",
            str(client),
            "--peer-port",
            str(peer),
            "--metrics-port",
            str(metrics),
            "--store-path",
            str(tmp_path / "store"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**s3_server.env()},
    )
    log.close()
    try:
        # Ready, not just alive: a request before store recovery ends gets 503 "starting".
        _wait_http(f"http://{HOST}:{metrics}/readyz", proc)
        for _ in range(2):  # a miss from the origin, then a hit
            with urllib.request.urlopen(f"http://{HOST}:{client}/{key}", timeout=30) as resp:
                assert resp.read() == object_bytes(key, 300 * 1024)
            # The miss's body arrives before its commit (cut-through); a request in
            # between joins the fill and counts as a miss too. Wait for the commit.
            _wait_committed(f"http://{HOST}:{metrics}/status", proc)

        reports = HttpPoller().poll([NodeAddress("beta-west-cache-0", HOST, metrics)])
        (report,) = reports
        assert report.node == "beta-west-cache-0"
        assert report.requests["origin"] == 1
        assert report.requests["hit"] == 1
        assert report.bytes_cached >= 300 * 1024

        plan_names = [e["name"] for e in plan]
        fields = site_status_fields(aggregate_site(reports, 1, plan_names))
        assert fields["nodesReporting"] == 1
        assert fields["traffic"]["offloadPercent"] == "50%"

        # The node pre-positions the manifest's objects; the aggregate reaches 100%.
        deadline = time.monotonic() + 90
        while True:
            reports = HttpPoller().poll([NodeAddress("beta-west-cache-0", HOST, metrics)])
            fields = site_status_fields(aggregate_site(reports, 1, plan_names))
            fill = fields.get("fill") or {}
            if fill.get("percent") == "100%" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert fill.get("percent") == "100%", fields
        rows = {r["name"]: r for r in fill["contentSets"]}
        popular = rows["edge/popular-titles"]
        assert popular["objectsTotal"] == popular["objectsDone"] == len(planned)
        assert popular["bytesTotal"] == sum(e.size for e in planned)
    finally:
        stop_process(proc)


def test_unreachable_node_is_not_counted() -> None:
    port = free_port()
    assert HttpPoller(timeout=1).poll([NodeAddress("gone", HOST, port)]) == []
