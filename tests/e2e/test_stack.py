"""The whole system on the local cluster (or kind): CRDs, operator, examples,
the S3 origin, and a live cache-node process per cache-node pod.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgefill_devenv.catalogue import generate, object_bytes, seed_demo
from edgefill_devenv.cluster import Cluster
from edgefill_devenv.s3 import S3Server
from edgefill_devenv.stack import Stack, eventually, load_examples, running_stack, token_for

pytestmark = pytest.mark.e2e

OBJECTS = 40
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
    with running_stack(k8s_cluster, s3_server.endpoint_url, workdir, namespace) as st:
        st.wait_sites(list(SITES), timeout=240)
        yield st
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
                async with http.get(url, params={"token": token}) as resp:
                    assert resp.status == 200, await resp.text()
                    assert await resp.read() == body
                headers = {"Range": "bytes=1000-1999"}
                async with http.get(url, params={"token": token}, headers=headers) as resp:
                    assert resp.status == 206
                    assert resp.headers["Content-Range"] == f"bytes 1000-1999/{entry.size}"
                    assert await resp.read() == body[1000:2000]
                async with http.get(url) as resp:
                    assert resp.status in (401, 403)


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
