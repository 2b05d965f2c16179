"""The demo's phase figures come from complete samples: a failed reading never counts as 0.

A node's metrics endpoint (an aiohttp app on loopback serving the node's
metric names in the Prometheus text format) and the real counting origin
proxy's stats endpoint are read over HTTP.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from edgefill_devenv.origin_proxy import STATS_PATH, OriginProxy
from edgefill_devenv.workload import (
    Node,
    SampleIncompleteError,
    complete_sample,
    observe_while,
    summarise,
)

METRICS = """\
# TYPE edgefill_served_bytes_total counter
edgefill_served_bytes_total{{source="hit"}} {hit}
edgefill_served_bytes_total{{source="origin"}} 500.0
# TYPE edgefill_requests_total counter
edgefill_requests_total{{result="hit"}} 7.0
"""


class Metrics:
    """A node's /metrics that fails the first ``failures`` reads with 503."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.hit_bytes = 1000
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=503, text="busy")
        return web.Response(text=METRICS.format(hit=float(self.hit_bytes)))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_a_failed_first_reading_is_retried_not_counted_as_zero() -> None:
    metrics = Metrics(failures=2)
    await metrics.start()
    proxy = await OriginProxy(upstream="http://127.0.0.1:9", bucket="b").start()
    try:
        proxy.body_bytes["vod/a"] = 700_000  # what the fill phase fetched before
        node = Node(site="s", name="n-0", client_url="", metrics_url=metrics.url)
        stats = proxy.endpoint_url + STATS_PATH

        async def work() -> str:
            metrics.hit_bytes += 4000
            proxy.body_bytes["vod/b"] += 300  # the phase's own origin bytes
            await asyncio.sleep(0.05)
            return "done"

        result, samples = await observe_while(work(), [node], stats, interval=0.01)
        assert result == "done"
        assert samples[0].origin_bytes == 700_000  # read after two refusals, not 0
        assert samples[-1].origin_bytes - samples[0].origin_bytes == 300
        assert summarise(samples)["s"]["servedBytes"]["hit"] == 4000
    finally:
        await proxy.stop()
        await metrics.stop()


async def test_a_reading_that_keeps_failing_fails_the_phase() -> None:
    metrics = Metrics(failures=0)
    await metrics.start()
    try:
        node = Node(site="s", name="n-0", client_url="", metrics_url=metrics.url)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            # nothing listens on the discard port: the proxy's counters cannot be read
            with pytest.raises(SampleIncompleteError, match="origin proxy"):
                await complete_sample(
                    http, [node], "http://127.0.0.1:9" + STATS_PATH, attempts=2, pause=0
                )
            metrics.failures = 5
            with pytest.raises(SampleIncompleteError, match="metrics of n-0"):
                await complete_sample(http, [node], None, attempts=3, pause=0)
            assert metrics.failures == 2  # tried exactly three times
    finally:
        await metrics.stop()
