"""The operator as a real process against the real API server of the local cluster.

Asserts API objects (never log lines): children, placement, status and
convergence after edits, deletions and SIGKILLs of the operator.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SITE_NODES = {
    "alpha-east": {"edgefill-worker", "edgefill-worker2"},
    "beta-west": {"edgefill-worker3", "edgefill-worker4"},
}
CHILD_KINDS = (
    "statefulsets,services,configmaps,serviceaccounts,poddisruptionbudgets,networkpolicies"
)


def expected_children(site: str) -> set[tuple[str, str]]:
    return {
        ("ServiceAccount", f"{site}-cache-node"),
        ("ConfigMap", f"{site}-config"),
        ("Service", f"{site}-peers"),
        ("Service", site),
        ("NetworkPolicy", f"{site}-clients"),
        ("NetworkPolicy", f"{site}-peers"),
        ("NetworkPolicy", f"{site}-metrics"),
        ("PodDisruptionBudget", f"{site}-cache"),
        ("StatefulSet", f"{site}-cache"),
    }


def children(cluster: Any, ns: str) -> set[tuple[str, str]]:
    out = json.loads(
        cluster.kubectl(
            "get",
            CHILD_KINDS,
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/managed-by=edgefill-operator",
            "-o",
            "json",
        ).stdout
    )
    return {(i["kind"], i["metadata"]["name"]) for i in out["items"]}


def get(cluster: Any, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    out = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None


def apply_examples(cluster: Any, ns: str, *names: str) -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        if names and not any(n in path.name for n in names):
            continue
        cluster.kubectl("apply", "-n", ns, "-f", str(path))


def node_json(cluster: Any, ns: str, site: str) -> dict[str, Any]:
    cm = get(cluster, ns, "configmap", f"{site}-config")
    assert cm is not None
    doc: dict[str, Any] = json.loads(cm["data"]["node.json"])
    return doc


def test_examples_become_exactly_the_expected_children(
    operator: Any, namespace: str, wait: Any
) -> None:
    cluster = operator.cluster
    apply_examples(cluster, namespace)
    want = expected_children("alpha-east") | expected_children("beta-west")
    wait("children", lambda: children(cluster, namespace) == want, timeout=60)

    # Pods land only on their site's labelled nodes, one per node (topology spread).
    def placed() -> bool:
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
        by_site: dict[str, list[str]] = {}
        for p in pods["items"]:
            node = p["spec"].get("nodeName")
            if not node:
                return False
            by_site.setdefault(p["metadata"]["labels"]["edgefill.io/site"], []).append(node)
        return all(
            sorted(by_site.get(site, [])) == sorted(nodes) for site, nodes in SITE_NODES.items()
        )

    wait("pods placed on their site's nodes", placed, timeout=90)

    # Ready=True once the StatefulSet is ready.
    for site in SITE_NODES:

        def ready(site: str = site) -> bool:
            c = condition(get(cluster, namespace, "edgesite", site), "Ready")
            return c is not None and c["status"] == "True"

        wait(f"{site} Ready", ready, timeout=90)
        obj = get(cluster, namespace, "edgesite", site)
        assert obj is not None
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        assert obj["status"]["readyReplicas"] == 2
        c = condition(obj, "Ready")
        assert c is not None
        assert c["reason"] == "AllNodesReady"
        # No node has reported: fill figures are absent, Filled is Unknown.
        assert "fill" not in obj["status"]
        filled = condition(obj, "Filled")
        assert filled is not None
        assert filled["status"] == "Unknown"

    # Fill plans: beta-west gets both ContentSets, alpha-east only the popular one.
    assert [e["name"] for e in node_json(cluster, namespace, "alpha-east")["fillPlan"]] == [
        f"{namespace}/popular-titles"
    ]
    beta = node_json(cluster, namespace, "beta-west")
    assert [e["name"] for e in beta["fillPlan"]] == [
        f"{namespace}/popular-titles",
        f"{namespace}/series-launch",
    ]
    assert beta["peering"]["upstreams"][0]["name"] == f"{namespace}/alpha-east"

    # The parent admits its child site on the peer port.
    pol = get(cluster, namespace, "networkpolicy", "alpha-east-peers")
    assert pol is not None
    sources = pol["spec"]["ingress"][0]["from"]
    assert any(
        s.get("podSelector", {}).get("matchLabels", {}).get("edgefill.io/site") == "beta-west"
        for s in sources
    )

    # ContentSet status lists its sites.
    def cs_ready() -> bool:
        c = condition(get(cluster, namespace, "contentset", "popular-titles"), "Ready")
        return c is not None and c["status"] == "True"

    wait("ContentSet Ready", cs_ready, timeout=60)
    cs = get(cluster, namespace, "contentset", "popular-titles")
    assert cs is not None
    assert [s["name"] for s in cs["status"]["sites"]] == ["alpha-east", "beta-west"]

    # Printer columns.
    table = cluster.kubectl("get", "edgesites,contentsets", "-n", namespace).stdout
    for column in ("READY", "REPLICAS", "FILL", "AGE", "SITES", "COPIES"):
        assert column in table
    assert "edgefill" in cluster.kubectl("get", "edgefill", "-n", namespace).stdout

    # `edgefill status` reads the same objects.
    cli = subprocess.run(
        [sys.executable, "-m", "edgefill_operator.cli", "status", "-n", namespace],
        capture_output=True,
        text=True,
        env={**cluster.env(), "COLUMNS": "200"},
        timeout=60,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    for name in ("alpha-east", "beta-west", "popular-titles", "series-launch"):
        assert name in cli.stdout
    assert "True (AllNodesReady)" in cli.stdout

    # Events on transitions.
    events = json.loads(
        cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "involvedObject.kind=EdgeSite",
            "-o",
            "json",
        ).stdout
    )
    assert any(e["reason"] == "AllNodesReady" for e in events["items"])

    # Operator metrics.
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics") as resp:
        text = resp.read().decode()
    assert 'edgefill_operator_reconciles_total{kind="EdgeSite"' in text


def test_edits_and_deletions_converge(operator: Any, namespace: str, wait: Any) -> None:
    cluster = operator.cluster
    apply_examples(cluster, namespace)
    want = expected_children("alpha-east") | expected_children("beta-west")
    wait("children", lambda: children(cluster, namespace) == want, timeout=60)

    # Scaling replicas.
    cluster.kubectl(
        "patch",
        "edgesite",
        "alpha-east",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"replicas": 3}}',
    )
    wait(
        "StatefulSet scaled",
        lambda: (
            (get(cluster, namespace, "statefulset", "alpha-east-cache") or {})
            .get("spec", {})
            .get("replicas")
            == 3
        ),
    )
    wait(
        "members in node.json",
        lambda: len(node_json(cluster, namespace, "alpha-east")["peering"]["members"]) == 3,
    )

    # Editing the fill window.
    cluster.kubectl(
        "patch",
        "edgesite",
        "beta-west",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"fill": {"window": {"start": "03:30"}}}}',
    )
    wait(
        "window in node.json",
        lambda: node_json(cluster, namespace, "beta-west")["fill"]["window"]["start"] == "03:30",
    )

    # Deleting a child: back within 30 s.
    cluster.kubectl("delete", "configmap", "beta-west-config", "-n", namespace)
    wait(
        "ConfigMap recreated",
        lambda: get(cluster, namespace, "configmap", "beta-west-config"),
        timeout=30,
    )
    cluster.kubectl("delete", "networkpolicy", "beta-west-peers", "-n", namespace)
    wait(
        "NetworkPolicy recreated",
        lambda: get(cluster, namespace, "networkpolicy", "beta-west-peers"),
        timeout=30,
    )

    # Editing a child's spec: taken back within 30 s.
    cluster.kubectl("scale", "statefulset", "beta-west-cache", "-n", namespace, "--replicas=5")
    # A field we own (the ConfigMap's node.json) edited by hand is forced back; fields
    # other managers add stay theirs (server-side apply semantics).
    cluster.kubectl(
        "patch",
        "configmap",
        "beta-west-config",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"data": {"node.json": "{}"}}),
    )
    wait(
        "StatefulSet replicas restored",
        lambda: (
            (get(cluster, namespace, "statefulset", "beta-west-cache") or {})
            .get("spec", {})
            .get("replicas")
            == 2
        ),
        timeout=30,
    )
    wait(
        "node.json restored",
        lambda: (
            node_json(cluster, namespace, "beta-west").get("site", {}).get("name") == "beta-west"
        ),
        timeout=30,
    )

    # Deleting a ContentSet drops it from the plans.
    cluster.kubectl("delete", "contentset", "series-launch", "-n", namespace)
    wait(
        "plan without the deleted ContentSet",
        lambda: (
            [e["name"] for e in node_json(cluster, namespace, "beta-west")["fillPlan"]]
            == [f"{namespace}/popular-titles"]
        ),
        timeout=30,
    )

    # Deleting the EdgeSite removes its children (owner references).
    cluster.kubectl("delete", "edgesite", "beta-west", "-n", namespace)
    wait(
        "beta-west children gone",
        lambda: children(cluster, namespace) == expected_children("alpha-east"),
        timeout=60,
    )
    # ... and alpha-east's peer port stops admitting it.
    wait(
        "peer policy without beta-west",
        lambda: (
            len(
                (get(cluster, namespace, "networkpolicy", "alpha-east-peers") or {})
                .get("spec", {})
                .get("ingress", [{}])[0]
                .get("from", [])
            )
            == 1
        ),
        timeout=30,
    )


def _site_doc(name: str, replicas: int) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "11-edgesite-beta-west.yaml").read_text())
    doc["metadata"]["name"] = name
    doc["spec"]["replicas"] = replicas
    del doc["spec"]["peering"]["parents"]
    return dict(doc)


def test_sigkill_the_operator_while_it_reconciles(operator: Any, namespace: str, wait: Any) -> None:
    """Ten SIGKILLs at random points; each restart converges to exactly the expected state."""
    cluster = operator.cluster
    apply_examples(cluster, namespace, "00-secrets")
    sites = ["kill-a", "kill-b", "kill-c"]
    rng = random.Random(20261122)
    want: set[tuple[str, str]] = set()
    for site in sites:
        want |= expected_children(site)
    took: list[float] = []
    for round_ in range(10):
        # Change every site (new generation), then kill the operator mid-way.
        for i, site in enumerate(sites):
            doc = _site_doc(site, 1 + (round_ + i) % 2)
            doc["spec"]["fill"]["window"]["start"] = f"0{round_ % 10}:1{i}"
            cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
        time.sleep(rng.uniform(0.0, 2.5))  # a random point in the reconcile
        operator.kill()
        operator.start()

        def converged() -> bool:
            # One read of everything, so the check itself stays cheap.
            items = json.loads(
                cluster.kubectl(
                    "get", f"edgesites,{CHILD_KINDS}", "-n", namespace, "-o", "json"
                ).stdout
            )["items"]
            by = {(i["kind"], i["metadata"]["name"]): i for i in items}
            managed = {
                k
                for k, i in by.items()
                if (i["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by")
                == "edgefill-operator"
            }
            if managed != want:
                return False
            for site in sites:
                obj = by[("EdgeSite", site)]
                status = obj.get("status") or {}
                if status.get("observedGeneration") != obj["metadata"]["generation"]:
                    return False
                sts = by[("StatefulSet", f"{site}-cache")]
                if sts["spec"]["replicas"] != obj["spec"]["replicas"]:
                    return False
                doc = json.loads(by[("ConfigMap", f"{site}-config")]["data"]["node.json"])
                if doc["fill"]["window"]["start"] != obj["spec"]["fill"]["window"]["start"]:
                    return False
            return True

        started = time.monotonic()
        wait(f"convergence after kill {round_ + 1}", converged, timeout=60)
        took.append(time.monotonic() - started)
    print(f"convergence after each SIGKILL (s): {[round(t, 1) for t in took]}")
    assert operator.starts == 11


def _template_checksum(cluster: Any, ns: str, site: str) -> str | None:
    sts = get(cluster, ns, "statefulset", f"{site}-cache")
    annotations = ((sts or {}).get("spec", {}).get("template", {}).get("metadata") or {}).get(
        "annotations"
    ) or {}
    value = annotations.get("edgefill.io/restart-config-checksum")
    return str(value) if value else None


def test_scale_subresource_rollout_checksum_and_generated_peer_secret(
    operator: Any, namespace: str, wait: Any
) -> None:
    """`kubectl scale edgesite` works; start-only config changes roll pods, live ones do not."""
    cluster = operator.cluster
    apply_examples(cluster, namespace, "00-secrets")
    doc = yaml.safe_load((EXAMPLES / "10-edgesite-alpha-east.yaml").read_text())
    del doc["spec"]["peering"]  # no secret named: the operator generates one
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    wait("children", lambda: children(cluster, namespace) == expected_children("alpha-east"))

    # The generated peer Secret: owned by the site, mounted, named in node.json.
    secret = wait(
        "generated peer Secret", lambda: get(cluster, namespace, "secret", "alpha-east-peering")
    )
    (owner,) = secret["metadata"]["ownerReferences"]
    site = get(cluster, namespace, "edgesite", "alpha-east")
    assert site is not None
    assert owner["uid"] == site["metadata"]["uid"]
    assert owner["controller"] is True
    assert owner["blockOwnerDeletion"] is True
    assert set(secret["data"]) == {"secret"}
    assert node_json(cluster, namespace, "alpha-east")["peering"]["secretFile"]

    # Scale subresource: kubectl scale on the EdgeSite itself.
    cluster.kubectl("scale", "edgesite/alpha-east", "-n", namespace, "--replicas=4")
    wait(
        "StatefulSet scaled through the EdgeSite",
        lambda: (
            (get(cluster, namespace, "statefulset", "alpha-east-cache") or {})
            .get("spec", {})
            .get("replicas")
            == 4
        ),
    )
    wait(
        "four members in node.json",
        lambda: len(node_json(cluster, namespace, "alpha-east")["peering"]["members"]) == 4,
    )

    def scale_status() -> dict[str, Any] | None:
        out = cluster.kubectl(
            "get", "edgesite", "alpha-east", "-n", namespace, "--subresource=scale", "-o", "json"
        )
        scale: dict[str, Any] = json.loads(out.stdout)
        return scale if scale.get("status", {}).get("replicas") == 4 else None

    scale = wait("scale status", scale_status, timeout=90)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 4
    assert scale["status"]["selector"] == (
        "app.kubernetes.io/name=edgefill-cache-node,edgefill.io/site=alpha-east"
    )
    # The secret did not change with the scale (pods keep authenticating each other).
    again = get(cluster, namespace, "secret", "alpha-east-peering")
    assert again is not None
    assert again["data"] == secret["data"]

    # Rollout: a live-reloaded change keeps the pod template, a start-only one changes it.
    before = wait("checksum", lambda: _template_checksum(cluster, namespace, "alpha-east"))
    cluster.kubectl(
        "patch",
        "edgesite",
        "alpha-east",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"fill": {"window": {"start": "04:15"}}}}',
    )
    wait(
        "window in node.json",
        lambda: node_json(cluster, namespace, "alpha-east")["fill"]["window"]["start"] == "04:15",
    )
    assert _template_checksum(cluster, namespace, "alpha-east") == before
    cluster.kubectl(
        "patch",
        "edgesite",
        "alpha-east",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"cache": {"size": "17Gi"}}}',
    )
    wait(
        "new checksum on the pod template",
        lambda: _template_checksum(cluster, namespace, "alpha-east") not in (None, before),
    )

    # Conditions in metav1.Condition shape, for the current generation.
    def current() -> dict[str, Any] | None:
        obj = get(cluster, namespace, "edgesite", "alpha-east")
        status = (obj or {}).get("status") or {}
        if obj is None or status.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        return obj

    obj = wait("status for the latest generation", current)
    types = [c["type"] for c in obj["status"]["conditions"]]
    assert types == ["Ready", "Progressing", "Degraded", "Filled"]
    for c in obj["status"]["conditions"]:
        assert c["status"] in ("True", "False", "Unknown")
        assert c["observedGeneration"] == obj["metadata"]["generation"]
        assert c["reason"][0].isupper()
        assert c["reason"].isalnum()
        assert c["lastTransitionTime"].endswith("Z")

    # Events name the EdgeSite as their involved object, with CamelCase reasons.
    events = json.loads(
        cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "involvedObject.kind=EdgeSite,involvedObject.name=alpha-east",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert "PeerSecretGenerated" in {e["reason"] for e in events}
    for e in events:
        assert e["involvedObject"]["uid"] == obj["metadata"]["uid"]
        assert e["involvedObject"]["apiVersion"] == "edgefill.io/v1alpha1"
        assert e["reason"][0].isupper()
        assert e["reason"].isalnum()
