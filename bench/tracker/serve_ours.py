"""Serve the EdgeFill tracker alone on loopback for the announce benchmark.

    python bench/tracker/serve_ours.py PORT

Prints the info-hash (hex) of the one object it serves, then runs until killed.
The per-source rate limit is raised because the load generator is one source;
everything else (locality selection, swarm caps, metrics) runs as in production.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cache_node.config import NodeConfig
from cache_node.tracker import PieceInfo, register, swarm_id

KEY = "bench/object.bin"
INFO = PieceInfo(size=1 << 20, piece_size=1 << 18, sha256=(b"\0" * 32,) * 4, etag='"bench"')


class OneObject:
    async def piece_info(self, key: str) -> PieceInfo | None:
        return INFO if key == KEY else None


async def main(port: int) -> None:
    keyfile = Path(tempfile.mkdtemp()) / "manifest.key"
    keyfile.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    config = NodeConfig.model_validate(
        {
            "site": {"namespace": "bench", "name": "site"},
            "store": {"maxBytes": 1 << 30},
            "origin": {"bucket": "bench"},
            "tokens": {"enabled": False},
            "tracker": {
                "manifestKeyFile": str(keyfile),
                "announcesPerSecond": 10_000,
                "announceBurst": 100_000,
            },
        }
    )
    app = web.Application()
    register(app, config, hashes=OneObject(), node_name="bench", web_seed_url="http://x/")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(swarm_id(KEY, INFO.etag).hex(), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
