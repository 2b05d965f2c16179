"""Announces are gated by the same tokens as content (cache_node.tokens), from a mounted
key directory or the node's live key ring."""

from __future__ import annotations

import os
import time
from pathlib import Path

from aiohttp import web

from cache_node.appkeys import NODE
from cache_node.config import NodeConfig, Tokens
from cache_node.node import KeyRing, Node
from cache_node.tokens import Claims, sign
from cache_node.tracker.gate import ContentTokenGate
from cache_node.tracker.wiring import KeyRingGate

SECRET = b"tracker-test-secret-0123456789ab"


def token(scope: str, *, expires_in: int = 600, kid: str = "k1", secret: bytes = SECRET) -> str:
    return sign(
        Claims(kid=kid, expires=int(time.time()) + expires_in, not_before=None, scope=scope), secret
    )


def keys_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    (d / "k1").write_bytes(SECRET)
    return d


def test_content_token_gate(tmp_path: Path) -> None:
    gate = ContentTokenGate(Tokens(enabled=True, keys_dir=str(keys_dir(tmp_path))))
    assert gate.check(token("/vod/title-1/"), "vod/title-1/seg-1.m4s") is None
    assert gate.check(None, "vod/title-1/seg-1.m4s") == (
        401,
        "a token is required (query parameter or header)",
    )
    status, reason = gate.check(token("/vod/title-2/"), "vod/title-1/seg-1.m4s") or (0, "")
    assert status == 403
    assert "scope" in reason
    status, reason = gate.check(token("/vod/", expires_in=-3600), "vod/a") or (0, "")
    assert (status, reason) == (403, "token expired")
    status, _ = gate.check(token("/vod/", secret=b"x" * 32), "vod/a") or (0, "")
    assert status == 403


def test_content_token_gate_picks_up_rotated_keys(tmp_path: Path) -> None:
    d = keys_dir(tmp_path)
    now = [1000.0]
    gate = ContentTokenGate(
        Tokens(enabled=True, keys_dir=str(d)), reload_seconds=10, clock=lambda: now[0]
    )
    new_secret = b"rotated-secret-0123456789abcdef!"
    (d / "k2").write_bytes(new_secret)
    later = (d / "k2").stat().st_mtime + 5
    os.utime(d / "k2", (later, later))
    fresh = sign(Claims(kid="k2", expires=10_000, not_before=None, scope="/vod/"), new_secret)
    assert gate.check(fresh, "vod/a") is not None  # not re-read yet
    now[0] += 11
    assert gate.check(fresh, "vod/a") is None


def test_key_ring_gate_uses_the_nodes_live_keys(tmp_path: Path) -> None:
    config = NodeConfig.model_validate(
        {
            "site": {"namespace": "a", "name": "b"},
            "store": {"maxBytes": 1 << 20},
            "origin": {"bucket": "media"},
            "tokens": {"enabled": True, "keysDir": str(keys_dir(tmp_path))},
        }
    )
    app = web.Application()
    node = Node(config=config, name="node-0")
    app[NODE] = node
    gate = KeyRingGate(app, skew=30)
    assert gate.check(token("/vod/"), "vod/a") is not None  # ring not loaded yet: refuse
    node.keyring = KeyRing(tmp_path / "keys")
    node.keyring.reload()
    assert gate.check(token("/vod/"), "vod/a") is None
    assert gate.check(token("/music/"), "vod/a") is not None
