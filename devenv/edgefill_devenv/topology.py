"""Node topology from ``kind-config.yaml``, shared by kind and the local cluster.

kind names nodes ``<cluster>-control-plane``, ``<cluster>-worker``,
``<cluster>-worker2`` ... in file order, takes node labels from ``labels`` and
taints from a ``JoinConfiguration`` / ``InitConfiguration`` patch. Reading the
same file here means the local cluster's kwok nodes carry exactly the names,
labels and taints that kind would give, so examples and tests do not care
which of the two they run on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NODE_RESOURCES = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "500Gi"}
CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}


@dataclass(frozen=True)
class NodeSpec:
    name: str
    role: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    pod_cidr: str = ""


def _taints_from_patches(patches: list[str]) -> list[dict[str, str]]:
    taints: list[dict[str, str]] = []
    for patch in patches:
        for doc in yaml.safe_load_all(patch):
            if not isinstance(doc, dict):
                continue
            registration = doc.get("nodeRegistration") or {}
            for taint in registration.get("taints") or []:
                taints.append({k: str(v) for k, v in taint.items()})
    return taints


def parse_kind_config(
    data: dict[str, Any], pod_cidr_base: str = "127.100.0.0/16"
) -> list[NodeSpec]:
    """Nodes as kind would create them, each with a /24 pod CIDR out of ``pod_cidr_base``.

    Pod CIDRs are loopback subnets so that a process standing in for a pod can
    listen on the pod's own IP on this machine.
    """
    if data.get("kind") != "Cluster":
        raise ValueError("kind-config.yaml: expected 'kind: Cluster'")
    cluster = str(data.get("name") or "kind")
    base = ipaddress.ip_network(pod_cidr_base)
    subnets = base.subnets(new_prefix=24)
    nodes: list[NodeSpec] = []
    workers = 0
    for raw in data.get("nodes") or [{"role": "control-plane"}]:
        role = raw.get("role", "control-plane")
        labels = {str(k): str(v) for k, v in (raw.get("labels") or {}).items()}
        taints = _taints_from_patches(list(raw.get("kubeadmConfigPatches") or []))
        if role == "control-plane":
            name = f"{cluster}-control-plane"
            labels.setdefault("node-role.kubernetes.io/control-plane", "")
            if not taints:
                taints = [dict(CONTROL_PLANE_TAINT)]
        elif role == "worker":
            workers += 1
            name = f"{cluster}-worker" + (str(workers) if workers > 1 else "")
        else:
            raise ValueError(f"kind-config.yaml: unknown node role {role!r}")
        labels.setdefault("kubernetes.io/hostname", name)
        labels.setdefault("kubernetes.io/os", "linux")
        labels.setdefault("kubernetes.io/arch", "amd64")
        nodes.append(NodeSpec(name, role, labels, tuple(taints), str(next(subnets))))
    return nodes


def load_kind_config(path: Path, pod_cidr_base: str = "127.100.0.0/16") -> list[NodeSpec]:
    return parse_kind_config(yaml.safe_load(path.read_text()), pod_cidr_base)


def node_manifest(node: NodeSpec, *, node_ip: str = "127.0.0.1") -> dict[str, Any]:
    """A Node object that kwok manages (annotation ``kwok.x-k8s.io/node: fake``)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {**node.labels, "type": "kwok"},
            "annotations": {
                "kwok.x-k8s.io/node": "fake",
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": {
            "podCIDR": node.pod_cidr,
            "podCIDRs": [node.pod_cidr],
            "taints": list(node.taints),
        },
        "status": {
            "allocatable": {
                "cpu": "16",
                "memory": "64Gi",
                "pods": "110",
                "ephemeral-storage": "500Gi",
            },
            "capacity": {
                "cpu": "16",
                "memory": "64Gi",
                "pods": "110",
                "ephemeral-storage": "500Gi",
            },
            "addresses": [{"type": "InternalIP", "address": node_ip}],
        },
    }
