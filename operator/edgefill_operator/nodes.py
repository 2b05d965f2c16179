"""Reads each cache node's ``/status`` report (the only I/O to the nodes themselves).

Polled from the operator's timer with a short deadline per node and a small
thread pool, so one silent node costs at most one deadline, never a stuck
timer. A node that does not answer, or answers with something that is not
the documented report, simply does not count (see :mod:`report`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import structlog

from edgefill_operator import metrics
from edgefill_operator.report import NodeReport, ReportError, parse_report

log = structlog.get_logger("edgefill.operator.nodes")

DEADLINE_SECONDS = 2.0
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class NodeAddress:
    name: str
    ip: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}/status"


class Poller(Protocol):
    def poll(self, nodes: Sequence[NodeAddress]) -> list[NodeReport]: ...


def fetch(node: NodeAddress, timeout: float = DEADLINE_SECONDS) -> NodeReport | None:
    try:
        with urllib.request.urlopen(node.url, timeout=timeout) as resp:  # noqa: S310 - http to a pod IP we chose
            body = resp.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise ReportError("report larger than 1 MiB")
        return parse_report(json.loads(body))
    except (OSError, urllib.error.URLError, TimeoutError) as exc:
        metrics.NODE_REPORT_FAILURES.labels(reason="unreachable").inc()
        log.debug("node_report_unreachable", node=node.name, url=node.url, error=str(exc))
    except (ValueError, ReportError) as exc:
        metrics.NODE_REPORT_FAILURES.labels(reason="invalid").inc()
        log.warning("node_report_invalid", node=node.name, url=node.url, error=str(exc))
    return None


class HttpPoller:
    """Polls nodes concurrently (bounded), each with its own deadline."""

    def __init__(self, workers: int = 8, timeout: float = DEADLINE_SECONDS) -> None:
        self._workers = workers
        self._timeout = timeout

    def poll(self, nodes: Sequence[NodeAddress]) -> list[NodeReport]:
        if not nodes:
            return []
        with ThreadPoolExecutor(max_workers=min(self._workers, len(nodes))) as pool:
            results = list(pool.map(lambda n: fetch(n, self._timeout), nodes))
        return [r for r in results if r is not None]
