"""Typed application keys (aiohttp ``web.AppKey``), all in one place.

Every app of a node (client, peer, metrics) stores the shared :class:`Node`
under :data:`NODE`; views read it with full typing instead of string keys.
"""

from __future__ import annotations

from aiohttp import web

from cache_node.node import Node

NODE: web.AppKey[Node] = web.AppKey("edgefill_node", Node)
