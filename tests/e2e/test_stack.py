"""The whole system on the local cluster (or kind): CRDs, operator, examples,
the S3 origin, and a live cache-node process per cache-node pod.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgefill_devenv.catalogue import generate, object_bytes, seed_demo
from edgefill_devenv.cluster import Cluster
from edgefill_devenv.demo import OBJECTS as DEMO_OBJECTS
from edgefill_devenv.demo import client_phase, nodes_of, open_windows, start_proxy, wait_filled
from edgefill_devenv.procs import stop_process
from edgefill_devenv.s3 import S3Server, free_port
from edgefill_devenv.stack import Stack, eventually, load_examples, running_stack, token_for

pytestmark = pytest.mark.e2e

OBJECTS = DEMO_OBJECTS  # the demo's scenario, at the demo's scale
REQUESTS_PER_SITE = 600
SITES = {"alpha-east": 2, "beta-west": 2}


@pytest.fixture(scope="module")
def stack(
    k8s_cluster: Cluster, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    if not k8s_cluster.local:
        pytest.skip("stand-in cache-node processes need the local cluster's loopback pod IPs")
    seed_demo(s3_server.endpoint_url, "catalogue", OBJECTS)
    namespace = f"e2e-{uuid.uuid4().hex[:6]}"
    workdir = Path(tmp_path_factory.mktemp("stack"))
    proxy_port = free_port()
    proxy = start_proxy(s3_server.endpoint_url, proxy_port, workdir)
    try:
        with running_stack(k8s_cluster, f"http://127.0.0.1:{proxy_port}", workdir, namespace) as st:
            st.processes["origin-proxy"] = proxy
            open_windows(st)
            st.wait_sites(list(SITES), timeout=240)
            st.proxy_port = proxy_port  # type: ignore[attr-defined]
            yield st
    finally:
        stop_process(proxy)
        k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _token_secret() -> tuple[str, bytes]:
    docs = load_examples()
    sites = [d for d in docs if d["kind"] == "EdgeSite"]
    key = sites[0]["spec"]["tokens"]["keys"][0]
    secret_name = sites[0]["spec"]["tokens"]["secretRef"]["name"]
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == secret_name)
    return key["id"], secret["stringData"][key["secretKey"]].encode()


def _nodes_by_site(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    by_site: dict[str, list[dict[str, Any]]] = {}
    for cfg in stack.node_configs().values():
        by_site.setdefault(cfg["site"]["name"], []).append(cfg)
    return by_site


def test_every_cache_node_pod_is_a_live_process(stack: Stack) -> None:
    def all_up() -> dict[str, list[dict[str, Any]]] | None:
        stack.check_alive()
        by_site = _nodes_by_site(stack)
        counts = {site: len(nodes) for site, nodes in by_site.items()}
        return by_site if counts == SITES else None

    by_site = eventually("a process per cache-node pod", all_up, 120)
    for nodes in by_site.values():
        for cfg in nodes:
            assert cfg["listen"]["host"].startswith("127.100.")
    # The node binary wires the peer-assist tracker: its metrics are served.
    cfg = by_site["alpha-east"][0]
    url = f"http://{cfg['listen']['host']}:{cfg['listen']['metricsPort']}/metrics"

    def metrics() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            return None

    text = eventually("node metrics", metrics, 60)
    assert "edgefill_tracker_announces_total" in text
    assert "edgefill_requests_total" in text


async def test_clients_get_verified_bytes_from_each_site(stack: Stack) -> None:
    by_site = eventually("nodes", lambda: _nodes_by_site(stack) or None, 120)
    kid, secret = _token_secret()
    token = token_for("/vod/", secret, kid)
    entry = generate(OBJECTS)[5]
    body = object_bytes(entry.key, entry.size)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        for nodes in by_site.values():
            for cfg in nodes:
                host, listen = cfg["listen"]["host"], cfg["listen"]
                await _wait_ready(http, f"http://{host}:{listen['metricsPort']}/readyz")
                url = f"http://{host}:{listen['clientPort']}/{entry.key}"
                # The pod host restarts a node once when its peers' addresses appear;
                # a client retries a refused connection, as players do.
                for attempt in range(30):
                    try:
                        async with http.get(url, params={"token": token}) as resp:
                            assert resp.status == 200, await resp.text()
                            assert await resp.read() == body
                        break
                    except aiohttp.ClientConnectorError:
                        if attempt == 29:
                            raise
                        await asyncio.sleep(1)
                headers = {"Range": "bytes=1000-1999"}
                async with http.get(url, params={"token": token}, headers=headers) as resp:
                    assert resp.status == 206
                    assert resp.headers["Content-Range"] == f"bytes 1000-1999/{entry.size}"
                    assert await resp.read() == body[1000:2000]
                async with http.get(url) as resp:
                    assert resp.status in (401, 403)
            # Peer assist: a node holding the object signs its piece-hash manifest
            # with the key the operator mounted; every piece hash matches the body.
            verified = 0
            for cfg in nodes:
                client = f"http://{cfg['listen']['host']}:{cfg['listen']['clientPort']}"
                async with http.get(
                    f"{client}/manifest/{entry.key}", params={"token": token}
                ) as resp:
                    if resp.status == 404:  # this member does not hold the object
                        continue
                    assert resp.status == 200, await resp.text()
                    signed = await resp.json()
                async with http.get(f"{client}/manifest-keys") as resp:
                    keys = await resp.json()
                _verify_manifest(signed, keys, body)
                verified += 1
            assert verified >= 1, "no node of the site served a signed manifest"


async def _wait_ready(http: aiohttp.ClientSession, url: str, attempts: int = 60) -> None:
    for _ in range(attempts):
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(1)
    raise AssertionError(f"{url} never answered 200")


def test_demo_scenario_fills_then_offloads_the_origin(stack: Stack, tmp_path: Path) -> None:
    """The demo's scenario with its figures asserted: fill completes on every site,
    every client byte verifies, and in the client phase the origin sends less than
    20% of the bytes served."""
    nodes = eventually(
        "a node per pod",
        lambda: n if len(n := nodes_of(stack)) == sum(SITES.values()) else None,
        120,
    )
    wait_filled(stack, nodes, timeout=420)
    report = client_phase(stack, nodes, OBJECTS, REQUESTS_PER_SITE, stack.proxy_port, tmp_path)  # type: ignore[attr-defined]
    assert set(report["sites"]) == set(SITES)
    for site, data in report["sites"].items():
        assert data["errors"] == {}, f"{site}: {data['errors']}"
        assert data["clientRequests"] == REQUESTS_PER_SITE
        assert data["hitRatio"]["hit"] > 0.5, f"{site}: {data['hitRatio']}"
    # Peer-assisted clients took verified pieces from each other, not only the seed.
    assert sum(d["peerAssistedRequests"] for d in report["sites"].values()) > 0
    assert sum(d["p2pBytes"] for d in report["sites"].values()) > 0
    assert report["originShare"] is not None
    assert report["originShare"] < 0.2, report
    assert Path(report["plot"]).stat().st_size > 10_000


def _verify_manifest(signed: dict[str, Any], keys: Any, body: bytes) -> None:
    """Check the Ed25519 signature and every piece hash against the object's bytes."""
    import base64
    import hashlib
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    assert signed["alg"] == "Ed25519"
    entries = keys["keys"] if isinstance(keys, dict) else keys
    entry = next(k for k in entries if k.get("keyId", k.get("kid")) == signed["keyId"])
    raw = entry.get("publicKey") or entry.get("x")
    pad = "=" * (-len(raw) % 4)
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(raw + pad))
    sig = signed["signature"]
    public.verify(
        base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), signed["manifest"].encode()
    )
    manifest = json.loads(signed["manifest"])
    size, piece = manifest["size"], manifest["pieceSize"]
    hashes = manifest["pieces"]
    assert size == len(body)
    assert len(hashes) == -(-size // piece)
    for i, digest in enumerate(hashes):
        assert digest == hashlib.sha256(body[i * piece : (i + 1) * piece]).hexdigest()
