"""The reconcile steps against a counting in-memory cluster."""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from edgefill_operator.conditions import find
from edgefill_operator.kube import KubeError
from edgefill_operator.nodes import NodeAddress
from edgefill_operator.reconcile import reconcile_contentset, reconcile_site
from edgefill_operator.report import NodeReport, parse_report

T0 = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)
EXPECTED_CHILDREN = 9
CRDS = Path(__file__).resolve().parents[2] / "crds"


class CountingPoller:
    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs
        self.calls: list[list[NodeAddress]] = []

    def poll(self, nodes: Any) -> list[NodeReport]:
        self.calls.append(list(nodes))
        return [parse_report(self.docs[n.name]) for n in nodes if n.name in self.docs]


def _cluster(fake_cluster: Any, edge_example: Any) -> Any:
    return fake_cluster(
        [
            edge_example("EdgeSite", "alpha-east"),
            edge_example("EdgeSite", "beta-west"),
            edge_example("ContentSet", "popular-titles"),
            edge_example("ContentSet", "series-launch"),
        ]
    )


def _status(cluster: Any, kind: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.get("", kind, "edge", name)["status"]
    return status


def _set_sts_ready(cluster: Any, site: str, ready: int) -> None:
    sts = cluster.objects[("StatefulSet", "edge", f"{site}-cache")]
    sts["status"] = {
        "observedGeneration": sts["metadata"]["generation"],
        "replicas": 2,
        "readyReplicas": ready,
        "updatedReplicas": 2,
    }


def test_site_children_and_status(fake_cluster: Any, edge_example: Any) -> None:
    cluster = _cluster(fake_cluster, edge_example)
    out = reconcile_site(cluster, "edge", "beta-west", T0)
    assert out.found
    assert not out.errors
    assert len(cluster.children("edge")) == EXPECTED_CHILDREN
    status = _status(cluster, "EdgeSite", "beta-west")
    assert status["observedGeneration"] == 1
    assert status["fillPlan"] == ["edge/popular-titles", "edge/series-launch"]
    ready = find(status["conditions"], "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "NodesNotReady")
    filled = find(status["conditions"], "Filled")
    assert filled is not None
    assert filled["status"] == "Unknown"
    for key in ("fill", "bytesCached", "traffic", "nodesReporting"):
        assert key not in status


def test_rerun_is_idempotent_and_never_duplicates(fake_cluster: Any, edge_example: Any) -> None:
    cluster = _cluster(fake_cluster, edge_example)
    reconcile_site(cluster, "edge", "alpha-east", T0)
    first = {k: v for k, v in cluster.objects.items() if k[0] not in ("EdgeSite", "ContentSet")}
    reconcile_site(cluster, "edge", "alpha-east", T0 + timedelta(seconds=30))
    second = {k: v for k, v in cluster.objects.items() if k[0] not in ("EdgeSite", "ContentSet")}
    assert first == second
    assert len(cluster.applies) == 2 * EXPECTED_CHILDREN


def test_ready_follows_statefulset_and_time_moves_only_on_flip(
    fake_cluster: Any, edge_example: Any
) -> None:
    cluster = _cluster(fake_cluster, edge_example)
    reconcile_site(cluster, "edge", "alpha-east", T0)
    _set_sts_ready(cluster, "alpha-east", 2)
    out = reconcile_site(cluster, "edge", "alpha-east", T0 + timedelta(seconds=10))
    ready = find(_status(cluster, "EdgeSite", "alpha-east")["conditions"], "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", "AllNodesReady")
    assert ready["lastTransitionTime"] == "2026-11-22T01:00:10Z"
    assert [(t.type, t.new) for t in out.transitions] == [
        ("Ready", "True"),
        ("Progressing", "False"),
    ]
    out = reconcile_site(cluster, "edge", "alpha-east", T0 + timedelta(seconds=20))
    assert out.transitions == []
    ready = find(_status(cluster, "EdgeSite", "alpha-east")["conditions"], "Ready")
    assert ready is not None
    assert ready["lastTransitionTime"] == "2026-11-22T01:00:10Z"


def test_drift_is_repaired(fake_cluster: Any, edge_example: Any) -> None:
    cluster = _cluster(fake_cluster, edge_example)
    reconcile_site(cluster, "edge", "alpha-east", T0)
    del cluster.objects[("ConfigMap", "edge", "alpha-east-config")]
    cluster.objects[("StatefulSet", "edge", "alpha-east-cache")]["spec"]["replicas"] = 7
    reconcile_site(cluster, "edge", "alpha-east", T0)
    assert ("ConfigMap", "alpha-east-config") in cluster.children("edge")
    sts = cluster.objects[("StatefulSet", "edge", "alpha-east-cache")]
    assert sts["spec"]["replicas"] == 2


def test_apply_failure_is_reported_not_raised(fake_cluster: Any, edge_example: Any) -> None:
    cluster = _cluster(fake_cluster, edge_example)
    cluster.fail_apply["StatefulSet"] = KubeError(422, "Invalid", "volumeClaimTemplates: Forbidden")
    out = reconcile_site(cluster, "edge", "alpha-east", T0)
    assert out.errors == ["StatefulSet alpha-east-cache: volumeClaimTemplates: Forbidden"]
    conds = _status(cluster, "EdgeSite", "alpha-east")["conditions"]
    degraded = find(conds, "Degraded")
    ready = find(conds, "Ready")
    assert degraded is not None
    assert (degraded["status"], degraded["reason"]) == (
        "True",
        "ApplyFailed",
    )
    assert ready is not None
    assert ready["reason"] == "ApplyFailed"


def test_missing_parent_is_degraded(fake_cluster: Any, edge_example: Any) -> None:
    cluster = fake_cluster([edge_example("EdgeSite", "beta-west")])
    reconcile_site(cluster, "edge", "beta-west", T0)
    degraded = find(_status(cluster, "EdgeSite", "beta-west")["conditions"], "Degraded")
    assert degraded is not None
    assert (degraded["status"], degraded["reason"]) == ("True", "PeerSiteNotFound")
    assert "edge/alpha-east" in degraded["message"]


def test_node_reports_fill_status(fake_cluster: Any, edge_example: Any) -> None:
    cluster = _cluster(fake_cluster, edge_example)
    for i in range(2):
        cluster.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"alpha-east-cache-{i}",
                    "namespace": "edge",
                    "labels": {
                        "app.kubernetes.io/name": "edgefill-cache-node",
                        "edgefill.io/site": "alpha-east",
                    },
                },
                "status": {"podIP": f"127.0.50.{i + 1}"},
            }
        )
    entry = {
        "name": "edge/popular-titles",
        "objectsStored": 1,
        "bytesStored": 10,
        "objectsTotal": 2,
        "bytesTotal": 20,
    }
    docs = {
        f"alpha-east-cache-{i}": {
            "node": f"alpha-east-cache-{i}",
            "fillPlan": [entry],
            "store": {"bytes": 10, "objects": 1},
            "requests": {"hit": 3, "origin": 1},
        }
        for i in range(2)
    }
    poller = CountingPoller(docs)
    reconcile_site(cluster, "edge", "alpha-east", T0, poller=poller)
    (call,) = poller.calls
    assert [(n.ip, n.port) for n in call] == [("127.0.50.1", 9090), ("127.0.50.2", 9090)]
    status = _status(cluster, "EdgeSite", "alpha-east")
    assert status["fill"]["percent"] == "50%"
    assert status["traffic"]["offloadPercent"] == "75%"
    filled = find(status["conditions"], "Filled")
    assert filled is not None
    assert (filled["status"], filled["reason"]) == ("False", "Filling")

    # A non-polling step keeps the last poll's figures ...
    reconcile_site(cluster, "edge", "alpha-east", T0)
    assert _status(cluster, "EdgeSite", "alpha-east")["fill"]["percent"] == "50%"
    # ... and the ContentSet aggregates the site's progress.
    reconcile_contentset(cluster, "edge", "popular-titles", T0)
    cs = _status(cluster, "ContentSet", "popular-titles")
    rows = {r["name"]: r for r in cs["sites"]}
    assert rows["alpha-east"]["percent"] == "50%"
    assert "percent" not in rows["beta-west"]  # beta-west has not reported
    assert "fill" not in cs

    # Nodes going silent removes the figures instead of keeping stale ones.
    reconcile_site(cluster, "edge", "alpha-east", T0, poller=CountingPoller({}))
    status = _status(cluster, "EdgeSite", "alpha-east")
    assert "fill" not in status
    assert "traffic" not in status


def test_contentset_status_and_copies_cap(fake_cluster: Any, edge_example: Any) -> None:
    cluster = _cluster(fake_cluster, edge_example)
    beta = cluster.objects[("EdgeSite", "edge", "beta-west")]
    beta["spec"]["replicas"] = 1
    reconcile_contentset(cluster, "edge", "popular-titles", T0)
    status = _status(cluster, "ContentSet", "popular-titles")
    assert status["siteCount"] == 2
    assert status["sites"] == [
        {"name": "alpha-east", "copies": 2},
        {"name": "beta-west", "copies": 1},
    ]
    conds = status["conditions"]
    ready, degraded = find(conds, "Ready"), find(conds, "Degraded")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForSites")
    assert degraded is not None
    assert (degraded["status"], degraded["reason"]) == ("True", "CopiesAboveReplicas")
    assert "beta-west (1 replicas)" in degraded["message"]

    reconcile_site(cluster, "edge", "alpha-east", T0)
    reconcile_site(cluster, "edge", "beta-west", T0)
    reconcile_contentset(cluster, "edge", "popular-titles", T0)
    ready = find(_status(cluster, "ContentSet", "popular-titles")["conditions"], "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("True", "Planned")


def test_deleted_contentset_leaves_the_plan(fake_cluster: Any, edge_example: Any) -> None:
    cluster = _cluster(fake_cluster, edge_example)
    reconcile_site(cluster, "edge", "beta-west", T0)
    del cluster.objects[("ContentSet", "edge", "series-launch")]
    reconcile_site(cluster, "edge", "beta-west", T0)
    assert _status(cluster, "EdgeSite", "beta-west")["fillPlan"] == ["edge/popular-titles"]


def test_gone_objects_are_a_no_op(fake_cluster: Any) -> None:
    cluster = fake_cluster([])
    assert not reconcile_site(cluster, "edge", "nothing", T0).found
    assert not reconcile_contentset(cluster, "edge", "nothing", T0).found
    assert cluster.applies == []
    assert cluster.status_patches == []


def test_managed_objects_gauge_follows_sites(fake_cluster: Any, edge_example: Any) -> None:
    from prometheus_client import REGISTRY

    def value(kind: str) -> float:
        v = REGISTRY.get_sample_value("edgefill_operator_managed_objects", {"kind": kind})
        return v or 0.0

    site = edge_example("EdgeSite", "alpha-east", namespace="gauge")
    cluster = fake_cluster([site])
    before_sites, before_policies = value("EdgeSite"), value("NetworkPolicy")
    reconcile_site(cluster, "gauge", "alpha-east", T0)
    assert value("EdgeSite") == before_sites + 1
    assert value("NetworkPolicy") == before_policies + 3
    del cluster.objects[("EdgeSite", "gauge", "alpha-east")]
    reconcile_site(cluster, "gauge", "alpha-east", T0)
    assert value("EdgeSite") == before_sites
    assert value("NetworkPolicy") == before_policies


# --- the generated peer Secret --------------------------------------------------------------


def _site_without_peer_secret(edge_example: Any, replicas: int = 3) -> dict[str, Any]:
    site: dict[str, Any] = edge_example("EdgeSite", "alpha-east")
    del site["spec"]["peering"]
    site["spec"]["replicas"] = replicas
    site["metadata"]["uid"] = f"uid-{uuid.uuid4().hex}"  # the created-once memo is per uid
    return site


def test_a_multi_node_site_without_a_peer_secret_gets_a_generated_one(
    fake_cluster: Any, edge_example: Any, caplog: Any, capsys: Any
) -> None:
    cluster = fake_cluster([_site_without_peer_secret(edge_example)])
    out = reconcile_site(cluster, "edge", "alpha-east", T0)
    assert not out.errors
    secret = cluster.objects[("Secret", "edge", "alpha-east-peering")]
    value = base64.b64decode(secret["data"]["secret"])
    # 32 random bytes as base64url text: a bearer token the nodes can send as it is.
    assert len(base64.urlsafe_b64decode(value + b"=")) == 32
    assert secret["type"] == "Opaque"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["controller"], owner["blockOwnerDeletion"]) == (
        "EdgeSite",
        True,
        True,
    )
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "edgefill-operator"
    # Mounted and configured.
    sts = cluster.objects[("StatefulSet", "edge", "alpha-east-cache")]
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["peer-secret"]["secret"]["secretName"] == "alpha-east-peering"
    cm = cluster.objects[("ConfigMap", "edge", "alpha-east-config")]
    assert (
        json.loads(cm["data"]["node.json"])["peering"]["secretFile"] == "/etc/edgefill/peer/secret"
    )
    # Never logged, by the operator or anything it calls.
    captured = capsys.readouterr()
    assert "peer_secret_generated" in captured.out + captured.err + caplog.text
    for text in (captured.out, captured.err, caplog.text):
        assert value.decode() not in text
    degraded = find(_status(cluster, "EdgeSite", "alpha-east")["conditions"], "Degraded")
    assert degraded is not None
    assert degraded["status"] == "False"


def test_the_generated_peer_secret_is_created_once_and_never_replaced(
    fake_cluster: Any, edge_example: Any
) -> None:
    cluster = fake_cluster([_site_without_peer_secret(edge_example)])
    out = reconcile_site(cluster, "edge", "alpha-east", T0)
    ((reason, message),) = out.notices  # a Normal Event on the EdgeSite
    assert reason == "PeerSecretGenerated"
    assert "alpha-east-peering" in message
    first = cluster.objects[("Secret", "edge", "alpha-east-peering")]["data"]
    again = reconcile_site(cluster, "edge", "alpha-east", T0 + timedelta(seconds=5))
    assert again.notices == []
    assert cluster.creates == [("Secret", "alpha-east-peering")]  # remembered: no request
    # The timer asks again (a deleted Secret comes back) but never replaces one that exists.
    reconcile_site(
        cluster, "edge", "alpha-east", T0 + timedelta(seconds=15), poller=CountingPoller({})
    )
    assert cluster.creates == [("Secret", "alpha-east-peering")] * 2
    assert cluster.objects[("Secret", "edge", "alpha-east-peering")]["data"] == first
    assert ("Secret", "alpha-east-peering") not in cluster.applies
    del cluster.objects[("Secret", "edge", "alpha-east-peering")]
    reconcile_site(
        cluster, "edge", "alpha-east", T0 + timedelta(seconds=30), poller=CountingPoller({})
    )
    again = cluster.objects[("Secret", "edge", "alpha-east-peering")]["data"]
    assert again != first  # a fresh random value


def test_two_sites_get_different_generated_secrets(fake_cluster: Any, edge_example: Any) -> None:
    a = _site_without_peer_secret(edge_example)
    b = _site_without_peer_secret(edge_example)
    b["metadata"]["name"] = "alpha-west"
    cluster = fake_cluster([a, b])
    reconcile_site(cluster, "edge", "alpha-east", T0)
    reconcile_site(cluster, "edge", "alpha-west", T0)
    sa = cluster.objects[("Secret", "edge", "alpha-east-peering")]["data"]["secret"]
    sb = cluster.objects[("Secret", "edge", "alpha-west-peering")]["data"]["secret"]
    assert sa != sb


def test_a_named_peer_secret_or_a_single_node_generates_nothing(
    fake_cluster: Any, edge_example: Any
) -> None:
    named = edge_example("EdgeSite", "alpha-east")  # names peer-secret
    single = _site_without_peer_secret(edge_example, replicas=1)
    single["metadata"]["name"] = "solo"
    cluster = fake_cluster([named, single])
    reconcile_site(cluster, "edge", "alpha-east", T0)
    reconcile_site(cluster, "edge", "solo", T0)
    assert cluster.creates == []
    assert not [k for k in cluster.objects if k[0] == "Secret"]


def test_a_generated_secret_on_a_site_that_peers_with_others_is_degraded(
    fake_cluster: Any, edge_example: Any
) -> None:
    parent = edge_example("EdgeSite", "alpha-east")
    child = edge_example("EdgeSite", "beta-west")
    del child["spec"]["peering"]["secretRef"]
    child["metadata"]["uid"] = f"uid-{uuid.uuid4().hex}"
    cluster = fake_cluster([parent, child])
    reconcile_site(cluster, "edge", "beta-west", T0)
    assert ("Secret", "edge", "beta-west-peering") in cluster.objects
    degraded = find(_status(cluster, "EdgeSite", "beta-west")["conditions"], "Degraded")
    assert degraded is not None
    assert (degraded["status"], degraded["reason"]) == ("True", "PeerSecretNotShared")
    assert "spec.peering.secretRef" in degraded["message"]


def test_a_failed_secret_create_is_reported_not_raised(
    fake_cluster: Any, edge_example: Any
) -> None:
    cluster = fake_cluster([_site_without_peer_secret(edge_example)])

    def refuse(manifest: Any) -> bool:
        raise KubeError(403, "Forbidden", "secrets is forbidden")

    cluster.create = refuse
    out = reconcile_site(cluster, "edge", "alpha-east", T0)
    assert out.errors == ["Secret alpha-east-peering: Forbidden"]
    ready = find(_status(cluster, "EdgeSite", "alpha-east")["conditions"], "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed")


# --- what the operator writes fits the CRDs' status schemas ---------------------------------


def _status_schema(kind: str) -> dict[str, Any]:
    path = CRDS / f"{kind.lower()}s.edgefill.io.yaml"
    (version,) = yaml.safe_load(path.read_text())["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    return schema


def _unknown_fields(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Fields the API server would prune silently (structural schemas drop unknown keys)."""
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, child in value.items():
            if key not in props:
                out.append(f"{path}.{key}")
            else:
                out += _unknown_fields(child, props[key], f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _unknown_fields(item, schema.get("items") or {}, f"{path}[{i}]")
    return out


def test_every_status_written_fits_the_crd_schema(fake_cluster: Any, edge_example: Any) -> None:
    cluster = _cluster(fake_cluster, edge_example)
    for i in range(2):
        cluster.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"beta-west-cache-{i}",
                    "namespace": "edge",
                    "labels": {
                        "app.kubernetes.io/name": "edgefill-cache-node",
                        "edgefill.io/site": "beta-west",
                    },
                },
                "status": {"podIP": f"127.0.50.{i + 1}"},
            }
        )
    entry = {"objectsStored": 1, "bytesStored": 10, "objectsTotal": 1, "bytesTotal": 10}
    report = {
        "fillPlan": [
            {"name": "edge/popular-titles", **entry},
            {"name": "edge/series-launch", **entry},
        ],
        "store": {"bytes": 20, "objects": 2},
        "requests": {"hit": 3, "peer": 1, "parent": 1, "origin": 1, "error": 1},
    }
    poller = CountingPoller({f"beta-west-cache-{i}": report for i in range(2)})
    reconcile_site(cluster, "edge", "alpha-east", T0)
    reconcile_site(cluster, "edge", "beta-west", T0, poller=poller)
    _set_sts_ready(cluster, "beta-west", 2)
    reconcile_site(cluster, "edge", "beta-west", T0 + timedelta(seconds=15), poller=poller)
    for cs in ("popular-titles", "series-launch"):
        reconcile_contentset(cluster, "edge", cs, T0)
    written = [
        (kind, _status(cluster, kind, name))
        for kind, name in (
            ("EdgeSite", "alpha-east"),
            ("EdgeSite", "beta-west"),
            ("ContentSet", "popular-titles"),
            ("ContentSet", "series-launch"),
        )
    ]
    beta = written[1][1]
    assert beta["fill"]["percent"] == "100%"  # the reported branch was exercised
    assert "traffic" in beta
    for kind, status in written:
        schema = _status_schema(kind)
        jsonschema.validate(status, schema)
        assert _unknown_fields(status, schema, "status") == []
        for c in status["conditions"]:
            assert re.fullmatch(
                schema["properties"]["conditions"]["items"]["properties"]["reason"]["pattern"],
                c["reason"],
            )
