"""kind-config.yaml parsing: the local cluster mirrors kind's node names, labels, taints."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from edgefill_devenv.topology import load_kind_config, node_manifest, parse_kind_config

REPO = Path(__file__).resolve().parents[2]


def test_repository_topology_has_two_isp_sites_with_two_workers_each() -> None:
    nodes = load_kind_config(REPO / "kind-config.yaml")
    by_site: dict[str, list[str]] = {}
    for n in nodes:
        if "edgefill.io/site" in n.labels:
            by_site.setdefault(n.labels["edgefill.io/site"], []).append(n.name)
    assert by_site == {
        "alpha-east": ["edgefill-worker", "edgefill-worker2"],
        "beta-west": ["edgefill-worker3", "edgefill-worker4"],
    }
    names = [n.name for n in nodes]
    assert names[0] == "edgefill-control-plane"
    assert "edgefill-worker5" in names


def test_site_nodes_are_tainted_and_isp_labelled() -> None:
    for n in load_kind_config(REPO / "kind-config.yaml"):
        if "edgefill.io/site" in n.labels:
            assert n.labels["edgefill.io/isp"] in {"alpha", "beta"}
            assert {
                "key": "edgefill.io/dedicated",
                "value": "edge-cache",
                "effect": "NoSchedule",
            } in n.taints


def test_pod_cidrs_are_distinct_loopback_subnets() -> None:
    nodes = load_kind_config(REPO / "kind-config.yaml")
    nets = [ipaddress.ip_network(n.pod_cidr) for n in nodes]
    assert len(set(nets)) == len(nets)
    assert all(net.subnet_of(ipaddress.ip_network("127.0.0.0/8")) for net in nets)


def test_worker_names_follow_kind() -> None:
    nodes = parse_kind_config(
        {
            "kind": "Cluster",
            "name": "x",
            "nodes": [{"role": "control-plane"}, {"role": "worker"}, {"role": "worker"}],
        }
    )
    assert [n.name for n in nodes] == ["x-control-plane", "x-worker", "x-worker2"]
    assert nodes[0].taints[0]["key"] == "node-role.kubernetes.io/control-plane"


def test_rejects_non_cluster_documents() -> None:
    with pytest.raises(ValueError, match="kind: Cluster"):
        parse_kind_config({"kind": "Pod"})
    with pytest.raises(ValueError, match="unknown node role"):
        parse_kind_config({"kind": "Cluster", "nodes": [{"role": "master"}]})


def test_node_manifest_is_managed_by_kwok() -> None:
    node = load_kind_config(REPO / "kind-config.yaml")[1]
    m = node_manifest(node)
    assert m["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert m["spec"]["podCIDR"] == node.pod_cidr
    assert m["metadata"]["labels"]["edgefill.io/site"] == "alpha-east"
