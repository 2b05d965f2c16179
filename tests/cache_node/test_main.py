"""The command line and the live configuration reload."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from cache_node.__main__ import _parse, effective_config, main
from cache_node.app import create_apps

from .conftest import node_config, until


def test_flags_override_listen_and_store_for_local_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = node_config(tmp_path / "s", "http://127.0.0.1:1", "bucket-a")
    monkeypatch.setenv("EDGEFILL_S3_ENDPOINT", "http://127.0.0.1:9999")
    args = _parse(
        ["--host", "127.0.10.1", "--client-port", "18080", "--store-path", str(tmp_path / "x")]
    )
    eff = effective_config(args, cfg)
    assert eff.listen.host == "127.0.10.1"
    assert eff.listen.client_port == 18080
    assert eff.listen.metrics_port == cfg.listen.metrics_port
    assert eff.store.path == str(tmp_path / "x")
    assert eff.origin.endpoint_url == "http://127.0.0.1:9999"


def test_invalid_or_missing_config_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path / "nope.json")]) == 2
    assert "no configuration file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"site": {"namespace": "a", "name": "b"}, "storeTypo": {}}))
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a valid node config" in err
    assert "storeTypo" in err


@pytest.mark.integration
async def test_membership_changes_are_picked_up_without_restart(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef0123")
    members = [{"name": "m0", "peerUrl": "http://127.0.0.1:1"}]
    cfg = node_config(
        tmp_path / "store",
        "http://127.0.0.1:1",
        "bucket-a",
        peering={"members": members, "secretFile": str(secret)},
    )
    path = tmp_path / "node.json"
    path.write_text(cfg.model_dump_json(by_alias=True))
    apps = create_apps(cfg, "m0", config_path=path, config_poll_seconds=0.02)
    runner = web.AppRunner(apps.client)
    await runner.setup()
    try:
        peering = apps.node.peering
        assert peering is not None
        assert peering.member_names() == {"m0"}
        doc = json.loads(path.read_text())
        doc["peering"]["members"].append({"name": "m1", "peerUrl": "http://127.0.0.1:2"})
        path.write_text(json.dumps(doc))
        await until(lambda: peering.member_names() == {"m0", "m1"}, "membership reloaded")
        path.write_text("{ not json")  # a broken render keeps the last good config
        await asyncio.sleep(0.1)
        assert peering.member_names() == {"m0", "m1"}
    finally:
        await runner.cleanup()


async def test_ready_only_once_every_port_listens(tmp_path: Path) -> None:
    """Recovery may finish before the client port is bound (metrics start first, so
    liveness answers during a long recovery); /readyz must wait for both."""
    from aiohttp.test_utils import TestClient, TestServer

    from cache_node.__main__ import _runner

    apps = create_apps(node_config(tmp_path / "s", "http://127.0.0.1:9", "bucket-a"), "n0")
    apps.node.ready = True
    apps.node.listening = False
    async with TestClient(TestServer(apps.metrics)) as client:
        resp = await client.get("/readyz")
        assert resp.status == 503
        assert "not listening" in (await resp.json())["reason"]
        assert (await (await client.get("/status")).json())["ready"] is False
        apps.node.listening = True
        assert (await client.get("/readyz")).status == 200
    assert _runner("asyncio") is asyncio.run
    assert _runner("auto") is asyncio.run  # uvloop only on request (see --help)
