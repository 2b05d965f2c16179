"""The cluster tier's foundation: a real API server, scheduler and controllers.

Runs against the local cluster (real kube-apiserver, kube-scheduler,
kube-controller-manager and etcd plus kwok nodes), or against kind when
``EDGEFILL_KUBECONFIG`` is given.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from edgefill_devenv.cluster import Cluster

pytestmark = pytest.mark.integration

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.foundation.edgefill.io"},
    "spec": {
        "group": "foundation.edgefill.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def eventually(check: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"not true within {timeout}s: {what} (last: {last!r})")


def get_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return out


@pytest.fixture
def namespace(k8s_cluster: Cluster) -> Iterator[str]:
    name = f"foundation-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    eventually(
        lambda: (
            k8s_cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0
        ),
        what="default ServiceAccount",
    )
    yield name
    k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_crd_installs_and_custom_object_reads_back(k8s_cluster: Cluster, namespace: str) -> None:
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
    k8s_cluster.wait_established("widgets.foundation.edgefill.io")
    widget = {
        "apiVersion": "foundation.edgefill.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": namespace},
        "spec": {"size": 3},
    }
    eventually(
        lambda: (
            k8s_cluster.kubectl(
                "apply", "-f", "-", input=json.dumps(widget), check=False
            ).returncode
            == 0
        ),
        what="custom object accepted",
    )
    got = get_json(k8s_cluster, "widget", "w1", "-n", namespace)
    assert got["spec"] == {"size": 3}
    # The schema is enforced by the API server itself.
    bad = {**widget, "metadata": {"name": "w2", "namespace": namespace}, "spec": {"size": 0}}
    proc = k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert proc.returncode != 0
    assert "spec.size" in proc.stderr


def test_pods_land_only_on_the_sites_labelled_nodes(k8s_cluster: Cluster, namespace: str) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "placed", "namespace": namespace},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "placed"}},
            "template": {
                "metadata": {"labels": {"app": "placed"}},
                "spec": {
                    "nodeSelector": {"edgefill.io/site": "beta-west"},
                    "tolerations": [
                        {
                            "key": "edgefill.io/dedicated",
                            "operator": "Equal",
                            "value": "edge-cache",
                            "effect": "NoSchedule",
                        }
                    ],
                    "containers": [{"name": "c", "image": "registry.invalid/placeholder:1"}],
                },
            },
        },
    }
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(deployment))

    def running_pods() -> list[dict[str, Any]] | None:
        pods = get_json(k8s_cluster, "pods", "-n", namespace, "-l", "app=placed")["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running if len(running) == 4 else None

    pods = eventually(running_pods, 90, "4 Running pods")
    site_nodes = {
        n["metadata"]["name"]
        for n in get_json(k8s_cluster, "nodes", "-l", "edgefill.io/site=beta-west")["items"]
    }
    assert len(site_nodes) == 2
    assert {p["spec"]["nodeName"] for p in pods} <= site_nodes
    if k8s_cluster.local:
        # kwok hands out pod IPs from the node's loopback pod CIDR.
        assert all(p["status"]["podIP"].startswith("127.") for p in pods)

    # Without the toleration nothing may land on the tainted site nodes.
    untolerated = json.loads(json.dumps(deployment))
    untolerated["metadata"]["name"] = "untolerated"
    untolerated["spec"]["selector"]["matchLabels"]["app"] = "untolerated"
    untolerated["spec"]["template"]["metadata"]["labels"]["app"] = "untolerated"
    del untolerated["spec"]["template"]["spec"]["tolerations"]
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(untolerated))

    def unschedulable() -> bool:
        pods = get_json(k8s_cluster, "pods", "-n", namespace, "-l", "app=untolerated")["items"]
        return len(pods) == 4 and all(
            any(c.get("reason") == "Unschedulable" for c in p["status"].get("conditions", []))
            for p in pods
        )

    eventually(unschedulable, 60, "pods without toleration stay Pending/Unschedulable")


def test_owner_reference_garbage_collection(k8s_cluster: Cluster, namespace: str) -> None:
    owner = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "owner", "namespace": namespace},
        "data": {"a": "1"},
    }
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(owner))
    uid = get_json(k8s_cluster, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
        "data": {"b": "2"},
    }
    k8s_cluster.kubectl("apply", "-f", "-", input=json.dumps(child))
    k8s_cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    eventually(
        lambda: (
            k8s_cluster.kubectl(
                "get", "configmap", "child", "-n", namespace, check=False
            ).returncode
            != 0
        ),
        60,
        "child garbage-collected after its owner was deleted",
    )
