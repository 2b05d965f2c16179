"""The metrics port: ``/metrics``, ``/healthz``, ``/readyz`` and ``/status``.

``/status`` is what the operator polls to aggregate EdgeSite and ContentSet
status; :func:`status_document` builds it as plain data (camelCase keys, like
the node config) so it is tested without a server.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from cache_node.appkeys import NODE
from cache_node.metrics import RESULTS
from cache_node.node import Node


def _counter_value(node: Node, result: str) -> int:
    value = node.metrics.registry.get_sample_value("edgefill_requests_total", {"result": result})
    return int(value or 0)


def status_document(node: Node) -> dict[str, Any]:
    store = node.store
    stats = store.stats if store is not None else None
    held = store.by_content_set() if store is not None else {}
    # Pre-positioning reports what this node owns of each entry once it resolved the
    # source (objectsTotal/bytesTotal, ...Pending, ...Stored of the owned keys only).
    report = node.fill_report() if node.fill_report is not None else {}
    progress = report.get("entries", {})
    fill_plan = []
    for entry in node.config.fill_plan:
        objects, size = held.get(entry.name, (0, 0))
        fill_plan.append(
            {
                "name": entry.name,
                "generation": entry.generation,
                "objectsStored": objects,
                "bytesStored": size,
                **progress.get(entry.name, {}),
            }
        )
    return {
        "node": node.name,
        "site": node.site,
        "ready": node.ready and node.listening,
        "recoveryError": node.recovery_error,
        "uptimeSeconds": int(time.time() - node.started_at),
        "store": {
            "bytes": stats.bytes if stats else 0,
            "objects": stats.objects if stats else 0,
            "pinnedBytes": stats.pinned_bytes if stats else 0,
            "pinnedObjects": stats.pinned_objects if stats else 0,
            "budgetBytes": node.config.store.max_bytes,
            "reservedBytes": stats.reserved_bytes if stats else 0,
            "evictions": dict(stats.evictions) if stats else {},
            "corruptObjects": stats.corrupt_objects if stats else 0,
        },
        "requests": {result: _counter_value(node, result) for result in RESULTS},
        "fillsInProgress": node.loader.in_progress() if node.loader is not None else 0,
        "fillPlan": fill_plan,
        "fill": report.get("fill"),
        "tokenKeys": sorted(node.keyring.keys),
    }


async def metrics_view(request: web.Request) -> web.Response:
    # The node's own registry (one per Node, so several nodes can share a test
    # process) plus the process-wide default one: the tracker's metrics and the
    # process/GC collectors live there.
    body = generate_latest(request.app[NODE].metrics.registry) + generate_latest(REGISTRY)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def healthz(request: web.Request) -> web.Response:
    """Alive unless store recovery failed: that node would stay unready for good, so
    liveness fails and the kubelet restarts it (a fresh recovery, visible as restarts)."""
    error = request.app[NODE].recovery_error
    if error:
        return web.json_response({"alive": False, "reason": error}, status=503)
    return web.json_response({"alive": True})


async def readyz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    if node.ready and node.listening:
        return web.json_response({"ready": True})
    if node.recovery_error:
        reason = node.recovery_error
    elif not node.ready:
        reason = "store recovery in progress"
    else:
        reason = "client and peer ports are not listening yet"
    return web.json_response({"ready": False, "reason": reason}, status=503)


async def status(request: web.Request) -> web.Response:
    return web.json_response(status_document(request.app[NODE]))
