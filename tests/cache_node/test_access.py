"""Tokens and path traversal against a live node: refused before any cache lookup.

Raw request lines are sent over a socket for the traversal corpus, so no
client library normalises the path before the node sees it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from cache_node.config import NodeConfig
from cache_node.tokens import Claims, sign
from edgefill_devenv.origin_proxy import OriginProxy

from .conftest import Bucket, live_node, until
from .conftest import make_token as _token

pytestmark = pytest.mark.integration

KEY = "vod/title/seg-1.m4s"


async def test_tokens(
    bucket: Bucket,
    proxy: OriginProxy,
    config_for: Callable[..., NodeConfig],
    token_dir: Path,
) -> None:
    cfg = config_for(proxy.endpoint_url, bucket.name, tokens_dir=token_dir)
    now = int(time.time())
    async with live_node(cfg) as node, aiohttp.ClientSession() as s:
        url = f"{node.client_url}/{KEY}"

        async def status(**kw: object) -> int:
            async with s.get(url, **kw) as resp:  # type: ignore[arg-type]
                await resp.read()
                return resp.status

        # Refusals, all before the cache: the origin is never asked.
        assert await status() == 401  # absent
        assert await status(params={"token": ""}) == 401
        assert await status(params={"token": _token(secret=b"x" * 32)}) == 403  # forged
        good = _token()
        assert await status(params={"token": good[:-1] + ("0" if good[-1] != "0" else "1")}) == 403
        tampered = good.replace("acl=%2Fvod%2Ftitle%2F", "acl=%2F")
        assert await status(params={"token": tampered}) == 403  # widened scope, old MAC
        assert await status(params={"token": _token(exp=now - 3600)}) == 403  # expired
        assert await status(params={"token": _token(nbf=now + 3600)}) == 403  # not yet valid
        assert await status(params={"token": _token(scope="/other/")}) == 403  # wrong scope
        assert await status(params={"token": _token(scope="/vod/tit")}) == 403  # not a prefix dir
        assert await status(params={"token": _token("k3", secret=b"y" * 32)}) == 403  # unknown kid
        assert await status(params={"token": "kid=k1~exp=1~exp=2~acl=%2F~hmac=" + "0" * 64}) == 403
        assert proxy.total_gets() == 0

        # Accepted: either live key, query parameter or header.
        assert await status(params={"token": _token("k1")}) == 200
        assert await status(headers={"X-EdgeFill-Token": _token("k2")}) == 200
        assert await status(params={"token": _token(scope="/vod/title/seg-1.m4s")}) == 200
        assert await status(params={"token": _token(scope="/vod/*")}) == 200
        assert proxy.object_gets(KEY) == 1
        await until(lambda: KEY in node.store, "committed")
        # A hit still needs a token.
        assert await status() == 401
        assert await status(params={"token": _token(exp=now - 3600)}) == 403
        # The token never reached the origin nor the cache key.
        assert list(node.store.keys()) == [KEY]

        # Rotation: k1 retired, k3 added; the node re-reads the mounted Secret.
        (token_dir / "k1").unlink()
        (token_dir / "k3").write_bytes(b"third-secret-key-0123456789abcdef")
        node.apps.node.keyring.reload()
        assert await status(params={"token": _token("k1")}) == 403
        k3 = sign(Claims("k3", now + 600, None, "/vod/"), b"third-secret-key-0123456789abcdef")
        assert await status(params={"token": k3}) == 200
        # A third live key is refused as a configuration error; the old pair stays live.
        (token_dir / "k4").write_bytes(b"fourth-secret-key-0123456789abcdef")
        node.apps.node.keyring.reload()
        assert node.apps.node.keyring.last_error is not None
        assert await status(params={"token": k3}) == 200


TRAVERSAL = [
    "/../../../etc/passwd",
    "/vod/../../etc/passwd",
    "/vod/%2e%2e/%2e%2e/etc/passwd",
    "/vod/%2E%2E/secret",
    "/vod/.%2e/x",
    "/vod/%2e/x",
    "/vod/./x",
    "/vod%2f..%2f..%2fetc%2fpasswd",
    "/vod/%2F/x",
    "/vod\\..\\..\\etc\\passwd",
    "/vod/%5c..%5c..%5cetc%5cpasswd",
    "/vod/x%00.bin",
    "/vod/x%00",
    "/%00",
    "/vod/%zz",
    "/vod/%",
    "/vod/%c0%ae%c0%ae/x",  # overlong UTF-8 dot
    "/vod/%ff",
    "/vod/x%0d%0aSet-Cookie:a",
    "/vod/x%7f",
    "/" + "a/" * 3000,
    "/" + "b" * 5000,
]


async def _raw_get(host: str, port: int, target: str) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        await reader.read()
    finally:
        writer.close()
    parts = line.split()
    return int(parts[1]) if len(parts) >= 2 else 0


async def test_traversal_corpus_never_reads_outside_the_store(
    bucket: Bucket,
    proxy: OriginProxy,
    config_for: Callable[..., NodeConfig],
    tmp_path: Path,
) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "secret.txt").write_text("must never be served")
    cfg = config_for(proxy.endpoint_url, bucket.name)
    async with live_node(cfg) as node:
        host, port = "127.0.0.1", int(node.client_url.rsplit(":", 1)[1])
        results = {target[:60]: await _raw_get(host, port, target) for target in TRAVERSAL}
        for target in ("/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt"):
            results[target] = await _raw_get(host, port, target)
    bad = {t: st for t, st in results.items() if st not in (400, 404, 414, 431)}
    assert not bad, bad
    assert proxy.total_gets() == 0
