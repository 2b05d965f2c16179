"""Prometheus metrics of the tracker (default registry, scraped on the metrics port).

Client-reported byte counters come from announces (``uploaded``/``downloaded``
are cumulative per client; the registry counts their growth). Peer efficiency
in the Peer5 sense is P2P bytes over all bytes: what clients uploaded to each
other over what they downloaded in total (peers plus web seed / HTTP). Compute
it per site in PromQL as
``sum(rate(edgefill_tracker_client_uploaded_bytes_total[5m])) /
sum(rate(edgefill_tracker_client_downloaded_bytes_total[5m]))``; the node also
exports its own running ratio as a gauge for quick looks.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SWARMS = Gauge("edgefill_tracker_swarms", "Swarms with at least one peer on this node.")
PEERS = Gauge("edgefill_tracker_peers", "Peers held in swarms on this node.", ["transport"])
ANNOUNCES = Counter(
    "edgefill_tracker_announces_total",
    "Announces accepted, by transport (http, ws) and event.",
    ["transport", "event"],
)
SCRAPES = Counter("edgefill_tracker_scrapes_total", "Scrapes answered.", ["transport"])
REJECTS = Counter(
    "edgefill_tracker_rejects_total",
    "Tracker requests refused, by reason (malformed, unknown_swarm, rate_limited, token, ...).",
    ["reason"],
)
RELAYED = Counter(
    "edgefill_tracker_relayed_total",
    "Tracker messages relayed, by kind: offer and answer (WebRTC signalling between "
    "peers), forward (a client's message passed to the member owning its swarm).",
    ["kind"],
)
UPLOADED = Counter(
    "edgefill_tracker_client_uploaded_bytes",
    "Bytes clients report having uploaded to other peers (P2P bytes).",
)
DOWNLOADED = Counter(
    "edgefill_tracker_client_downloaded_bytes",
    "Bytes clients report having downloaded in total (peers plus web seed).",
)
EFFICIENCY = Gauge(
    "edgefill_tracker_peer_efficiency_ratio",
    "P2P bytes / all bytes reported by this node's clients since start (0..1).",
)
MANIFESTS = Counter(
    "edgefill_tracker_manifests_served_total", "Signed piece-hash manifests served."
)


class EfficiencyTracker:
    """Keeps the running totals behind the efficiency gauge (counters cannot be read back)."""

    def __init__(self) -> None:
        self.uploaded = 0
        self.downloaded = 0

    def add(self, uploaded: int, downloaded: int) -> None:
        if uploaded:
            UPLOADED.inc(uploaded)
            self.uploaded += uploaded
        if downloaded:
            DOWNLOADED.inc(downloaded)
            self.downloaded += downloaded
        if self.downloaded:
            EFFICIENCY.set(min(1.0, self.uploaded / self.downloaded))
