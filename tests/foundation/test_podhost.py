"""The pod host's translation of a rendered pod into a runnable local process."""

from __future__ import annotations

from pathlib import Path

from edgefill_devenv.podhost import (
    UNREACHABLE_HOST,
    localize_config,
    map_path,
    map_peer_url,
    pod_view,
)

POD = {
    "metadata": {
        "namespace": "edge",
        "name": "alpha-east-cache-1",
        "labels": {"edgefill.io/site": "alpha-east"},
    },
    "spec": {
        "containers": [
            {
                "name": "cache-node",
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/edgefill"},
                    {"name": "origin-credentials", "mountPath": "/etc/edgefill/origin"},
                    {"name": "store", "mountPath": "/var/cache/edgefill"},
                ],
            }
        ],
        "volumes": [
            {"name": "config", "configMap": {"name": "alpha-east-config"}},
            {"name": "origin-credentials", "secret": {"secretName": "origin-credentials"}},
            {"name": "store", "emptyDir": {}},
        ],
    },
    "status": {"phase": "Running", "podIP": "127.100.1.3"},
}


def test_pod_view_only_for_running_pods_with_ip() -> None:
    view = pod_view(POD)
    assert view is not None
    assert view.key == "edge/alpha-east-cache-1"
    assert view.mounts["/etc/edgefill/origin"] == "origin-credentials"
    assert pod_view({**POD, "status": {"phase": "Pending"}}) is None
    assert pod_view({**POD, "status": {"phase": "Running"}}) is None
    deleting = {**POD, "metadata": {**POD["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert pod_view(deleting) is None


def test_longest_mount_wins() -> None:
    mounts = {"/etc/edgefill": Path("/w/config"), "/etc/edgefill/origin": Path("/w/origin")}
    assert map_path("/etc/edgefill/node.json", mounts) == "/w/config/node.json"
    assert map_path("/etc/edgefill/origin", mounts) == "/w/origin"
    assert map_path("/etc/edgefill/origin/accessKeyId", mounts) == "/w/origin/accessKeyId"
    assert map_path("/etc/edgefillx/a", mounts) == "/etc/edgefillx/a"
    assert map_path("/var/other", mounts) == "/var/other"


def test_peer_urls_map_to_pod_ips() -> None:
    pods = {"edge/alpha-east-cache-0": "127.100.1.0", "edge/alpha-east-cache-1": "127.100.2.0"}
    sites = {"edge/alpha-east-peers": ["127.100.1.0", "127.100.2.0"]}
    url = "http://alpha-east-cache-1.alpha-east-peers.edge.svc:8081"
    assert map_peer_url(url, "edge", pods, sites) == "http://127.100.2.0:8081"
    site_url = "http://alpha-east-peers.edge.svc:8081"
    assert map_peer_url(site_url, "edge", pods, sites) == "http://127.100.1.0:8081"
    missing = "http://alpha-east-cache-7.alpha-east-peers.edge.svc:8081"
    assert map_peer_url(missing, "edge", pods, sites) == f"http://{UNREACHABLE_HOST}:8081"
    assert map_peer_url("http://127.0.0.5:1/x", "edge", pods, sites) == "http://127.0.0.5:1/x"


def test_localize_rewrites_paths_urls_and_listen_host() -> None:
    view = pod_view(POD)
    assert view is not None
    mounts = {
        "/etc/edgefill": Path("/w/config"),
        "/etc/edgefill/origin": Path("/w/origin"),
        "/var/cache/edgefill": Path("/w/store"),
    }
    doc = {
        "listen": {"host": "0.0.0.0", "clientPort": 8080},
        "store": {"path": "/var/cache/edgefill", "maxBytes": 10},
        "origin": {"bucket": "b", "credentialsDir": "/etc/edgefill/origin"},
        "peering": {
            "members": [
                {
                    "name": "alpha-east-cache-1",
                    "peerUrl": "http://alpha-east-cache-1.alpha-east-peers.edge.svc:8081",
                }
            ]
        },
        "fillPlan": [{"source": {"prefixes": ["/etc/edgefill/x"]}}],
    }
    out = localize_config(doc, view, mounts, {"edge/alpha-east-cache-1": "127.100.1.3"}, {})
    assert out["listen"]["host"] == "127.100.1.3"
    assert out["store"]["path"] == "/w/store"
    assert out["origin"]["credentialsDir"] == "/w/origin"
    assert out["peering"]["members"][0]["peerUrl"] == "http://127.100.1.3:8081"
    assert out["fillPlan"][0]["source"]["prefixes"] == ["/etc/edgefill/x"]  # data, not a path
    assert doc["listen"]["host"] == "0.0.0.0"  # the input is not modified
