"""Render functions: examples in, children out; every node config validates against the schema."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from edgefill_operator import names
from edgefill_operator.planning import SiteRef, fill_plan
from edgefill_operator.render import (
    SiteInputs,
    Upstream,
    generates_peer_secret,
    node_config,
    peer_secret_name,
    quantity_bytes,
    render_children,
    render_generated_peer_secret,
    render_network_policies,
    render_statefulset,
    restart_checksum,
)

SITES = ["alpha-east", "beta-west"]
CONTENTSETS = ["popular-titles", "series-launch"]


def _inputs(edge_example: Any, site_name: str, **kw: Any) -> SiteInputs:
    site = edge_example("EdgeSite", site_name)
    sets = [edge_example("ContentSet", c) for c in CONTENTSETS]
    return SiteInputs(site=site, fill_plan=fill_plan(site, sets), **kw)


@pytest.mark.parametrize("site_name", SITES)
def test_children_are_exactly_the_expected_set(edge_example: Any, site_name: str) -> None:
    children = render_children(_inputs(edge_example, site_name))
    kinds = sorted((c["kind"], c["metadata"]["name"]) for c in children)
    assert kinds == sorted(
        [
            ("ServiceAccount", f"{site_name}-cache-node"),
            ("ConfigMap", f"{site_name}-config"),
            ("Service", f"{site_name}-peers"),
            ("Service", site_name),
            ("NetworkPolicy", f"{site_name}-clients"),
            ("NetworkPolicy", f"{site_name}-peers"),
            ("NetworkPolicy", f"{site_name}-metrics"),
            ("PodDisruptionBudget", f"{site_name}-cache"),
            ("StatefulSet", f"{site_name}-cache"),
        ]
    )
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "edge"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "edgefill-operator"
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "edgefill.io/v1alpha1",
            "kind": "EdgeSite",
            "name": site_name,
            "uid": f"uid-{site_name}",
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_render_is_deterministic(edge_example: Any) -> None:
    a = render_children(_inputs(edge_example, "alpha-east"))
    b = render_children(_inputs(edge_example, "alpha-east"))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_statefulset_places_pods_on_the_sites_nodes_only(edge_example: Any) -> None:
    sts = render_statefulset(_inputs(edge_example, "beta-west"))
    pod = sts["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"edgefill.io/site": "beta-west"}
    assert {
        "key": "edgefill.io/dedicated",
        "operator": "Equal",
        "value": "edge-cache",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == names.selector_labels("beta-west")
    assert sts["spec"]["serviceName"] == "beta-west-peers"
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["selector"]["matchLabels"] == names.selector_labels("beta-west")
    assert pod["serviceAccountName"] == "beta-west-cache-node"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e for e in container["env"]}
    assert env["EDGEFILL_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_token_keys_are_mounted_as_files_named_by_key_id(edge_example: Any) -> None:
    sts = render_statefulset(_inputs(edge_example, "alpha-east"))
    vols = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert vols["token-keys"]["secret"]["items"] == [
        {"key": "key-2026-11", "path": "2026-11"},
        {"key": "key-2026-12", "path": "2026-12"},
    ]
    assert vols["origin-credentials"]["secret"]["secretName"] == "origin-credentials"
    assert vols["store"] == {"name": "store", "emptyDir": {"sizeLimit": "20Gi"}}
    assert "volumeClaimTemplates" not in sts["spec"]


def test_persistent_storage_uses_one_claim_per_node(edge_example: Any) -> None:
    site = edge_example("EdgeSite", "alpha-east")
    site["spec"]["storage"] = {"size": "500Gi", "storageClassName": "local-nvme"}
    sts = render_statefulset(SiteInputs(site=site))
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "store"
    assert claim["spec"]["resources"]["requests"]["storage"] == "500Gi"
    assert claim["spec"]["storageClassName"] == "local-nvme"
    names_ = [v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]]
    assert "store" not in names_


def test_network_policies_admit_clients_members_and_downstream_sites(edge_example: Any) -> None:
    inputs = _inputs(edge_example, "alpha-east", downstreams=[SiteRef("edge", "beta-west")])
    clients, peers, metrics = render_network_policies(inputs)
    (rule,) = clients["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert rule["from"] == [
        {"ipBlock": {"cidr": "198.51.100.0/24"}},
        {"ipBlock": {"cidr": "2001:db8:a::/48"}},
        # members' tracker links to a swarm's owner use the client port
        {"podSelector": {"matchLabels": names.selector_labels("alpha-east")}},
    ]
    (peer_rule,) = peers["spec"]["ingress"]
    assert peer_rule["ports"] == [{"protocol": "TCP", "port": 8081}]
    sources = peer_rule["from"]
    assert sources[0] == {"podSelector": {"matchLabels": names.selector_labels("alpha-east")}}
    assert sources[1]["podSelector"]["matchLabels"] == names.selector_labels("beta-west")
    assert sources[1]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "edge"}
    }
    assert len(sources) == 2
    assert metrics["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9090}]


def test_without_client_networks_every_client_reaches_the_client_port(edge_example: Any) -> None:
    site = edge_example("EdgeSite", "beta-west")
    del site["spec"]["clientNetworks"]
    clients, _, _ = render_network_policies(SiteInputs(site=site))
    assert "from" not in clients["spec"]["ingress"][0]


@pytest.mark.parametrize("site_name", SITES)
def test_node_config_validates_against_the_committed_schema(
    edge_example: Any, node_schema: dict[str, Any], site_name: str
) -> None:
    upstreams = (
        [Upstream(SiteRef("edge", "alpha-east"), "parent", 8081)]
        if site_name == "beta-west"
        else []
    )
    doc = node_config(_inputs(edge_example, site_name, upstreams=upstreams))
    jsonschema.validate(doc, node_schema)


def test_node_config_content(edge_example: Any) -> None:
    doc = node_config(
        _inputs(
            edge_example,
            "beta-west",
            upstreams=[Upstream(SiteRef("edge", "alpha-east"), "parent", 8081)],
        )
    )
    assert doc["site"] == {"namespace": "edge", "name": "beta-west"}
    assert doc["store"]["maxBytes"] == 9 * 1024**3
    assert doc["peering"]["members"] == [
        {
            "name": "beta-west-cache-0",
            "peerUrl": "http://beta-west-cache-0.beta-west-peers.edge.svc:8081",
        },
        {
            "name": "beta-west-cache-1",
            "peerUrl": "http://beta-west-cache-1.beta-west-peers.edge.svc:8081",
        },
    ]
    assert doc["peering"]["upstreams"] == [
        {
            "name": "edge/alpha-east",
            "role": "parent",
            "peerUrl": "http://alpha-east-peers.edge.svc:8081",
        }
    ]
    assert doc["fill"]["window"] == {
        "start": "01:00",
        "durationSeconds": 21600,
        "timeZone": "Europe/Berlin",
    }
    assert doc["fill"]["rateLimitBytesPerSecond"] == 50_000_000
    assert doc["tokens"] == {
        "enabled": True,
        "clockSkewSeconds": 30,
        "keysDir": "/etc/edgefill/tokens",
    }
    assert [e["name"] for e in doc["fillPlan"]] == ["edge/popular-titles", "edge/series-launch"]
    assert doc["clientNetworks"] == ["203.0.113.0/24"]


def test_rendered_configs_load_in_the_cache_nodes_own_loader(
    edge_example: Any, tmp_path: Path
) -> None:
    """The node's pydantic loader also enforces cross-field rules the JSON Schema cannot."""
    for site_name in SITES:
        path = tmp_path / f"{site_name}.json"
        path.write_text(json.dumps(node_config(_inputs(edge_example, site_name))))
        out = subprocess.run(
            [sys.executable, "-m", "cache_node.config", "--check", str(path)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr


def test_config_map_carries_node_json(edge_example: Any, node_schema: dict[str, Any]) -> None:
    children = render_children(_inputs(edge_example, "alpha-east"))
    (cm,) = [c for c in children if c["kind"] == "ConfigMap"]
    doc = json.loads(cm["data"]["node.json"])
    jsonschema.validate(doc, node_schema)
    assert doc["fillPlan"][0]["source"] == {
        "bucket": "catalogue",
        "manifestKey": "manifests/popular.jsonl",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90Gi", 90 * 1024**3), ("500M", 500_000_000), ("1", 1), ("64Mi", 64 * 1024**2), ("0", 0)],
)
def test_quantity_bytes(text: str, expected: int) -> None:
    assert quantity_bytes(text) == expected


def test_disabled_tokens_render_no_keys_dir(edge_example: Any, node_schema: dict[str, Any]) -> None:
    site = edge_example("EdgeSite", "beta-west")
    site["spec"]["tokens"] = {"enabled": False}
    doc = node_config(SiteInputs(site=site))
    assert doc["tokens"] == {"enabled": False, "clockSkewSeconds": 30}
    jsonschema.validate(doc, node_schema)


def test_manifest_signing_key_is_mounted_and_configured(
    edge_example: Any, node_schema: dict[str, Any]
) -> None:
    inputs = _inputs(edge_example, "alpha-east")
    sts = render_statefulset(inputs)
    pod = sts["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "tracker-signing-key")
    assert volume["secret"]["secretName"] == "tracker-signing-key"
    assert volume["secret"]["items"] == [{"key": "ed25519", "path": "manifest-signing.key"}]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    doc = node_config(inputs)
    assert doc["tracker"]["manifestKeyFile"] == f"{mount['mountPath']}/manifest-signing.key"
    assert doc["tracker"]["trustedProxies"] == []
    jsonschema.validate(doc, node_schema)
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["EDGEFILL_POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


# --- tracker.memberUrlTemplate -> tracker.memberClientUrls ----------------------------------


def _with_template(edge_example: Any, template: str | None, replicas: int = 3) -> SiteInputs:
    site = edge_example("EdgeSite", "alpha-east")
    site["spec"]["replicas"] = replicas
    if template is not None:
        site["spec"]["tracker"]["memberUrlTemplate"] = template
    return SiteInputs(site=site)


def test_member_url_template_renders_one_client_url_per_member(
    edge_example: Any, node_schema: dict[str, Any]
) -> None:
    doc = node_config(_with_template(edge_example, "https://cache-{ordinal}.alpha.isp.example"))
    assert doc["tracker"]["memberClientUrls"] == {
        "alpha-east-cache-0": "https://cache-0.alpha.isp.example",
        "alpha-east-cache-1": "https://cache-1.alpha.isp.example",
        "alpha-east-cache-2": "https://cache-2.alpha.isp.example",
    }
    # Exactly the members the peering section names: the tracker hashes over those.
    members = [m["name"] for m in doc["peering"]["members"]]
    assert sorted(doc["tracker"]["memberClientUrls"]) == members
    jsonschema.validate(doc, node_schema)


def test_member_url_template_fills_every_placeholder(edge_example: Any) -> None:
    doc = node_config(
        _with_template(edge_example, "http://{site}.{namespace}.isp.example:8080/t/{pod}/", 2)
    )
    assert doc["tracker"]["memberClientUrls"] == {
        "alpha-east-cache-0": "http://alpha-east.edge.isp.example:8080/t/alpha-east-cache-0",
        "alpha-east-cache-1": "http://alpha-east.edge.isp.example:8080/t/alpha-east-cache-1",
    }


def test_member_url_template_follows_scaling(edge_example: Any) -> None:
    one = node_config(_with_template(edge_example, "https://edge.isp.example", 1))
    assert one["tracker"]["memberClientUrls"] == {"alpha-east-cache-0": "https://edge.isp.example"}
    five = node_config(_with_template(edge_example, "https://c{ordinal}.isp.example", 5))
    assert list(five["tracker"]["memberClientUrls"].values())[-1] == "https://c4.isp.example"
    parked = node_config(_with_template(edge_example, "https://c{ordinal}.isp.example", 0))
    assert "memberClientUrls" not in parked["tracker"]


def test_without_member_url_template_no_member_urls_are_rendered(edge_example: Any) -> None:
    doc = node_config(_with_template(edge_example, None))
    assert "memberClientUrls" not in doc["tracker"]


def test_rendered_member_urls_load_in_the_cache_nodes_loader(
    edge_example: Any, tmp_path: Path
) -> None:
    path = tmp_path / "node.json"
    doc = node_config(_with_template(edge_example, "https://cache-{ordinal}.alpha.isp.example"))
    path.write_text(json.dumps(doc))
    out = subprocess.run(
        [sys.executable, "-m", "cache_node.config", "--check", str(path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


# --- eviction policy enum -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "node"),
    [
        ("LRU", "lru"),
        ("S3FIFO", "s3fifo"),
        ("SIEVE", "sieve"),
        ("sieve", "sieve"),
        (None, "s3fifo"),
    ],
)
def test_eviction_policy_maps_the_api_enum_to_the_node_name(
    edge_example: Any, api: str | None, node: str
) -> None:
    site = edge_example("EdgeSite", "beta-west")
    site["spec"]["cache"].pop("evictionPolicy", None)
    if api is not None:
        site["spec"]["cache"]["evictionPolicy"] = api
    assert node_config(SiteInputs(site=site))["store"]["evictionPolicy"] == node


# --- config rollout: restart checksum -------------------------------------------------------


def _checksum(site: dict[str, Any], plan: list[dict[str, Any]] | None = None) -> str:
    sts = render_statefulset(SiteInputs(site=site, fill_plan=plan or []))
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    value: str = annotations[names.CONFIG_CHECKSUM_ANNOTATION]
    return value


def test_restart_checksum_covers_exactly_the_sections_read_at_start(edge_example: Any) -> None:
    site = edge_example("EdgeSite", "alpha-east")
    doc = node_config(SiteInputs(site=site))
    canonical = json.dumps(
        {k: doc[k] for k in ("listen", "store", "origin")}, sort_keys=True, separators=(",", ":")
    )
    assert _checksum(site) == hashlib.sha256(canonical.encode()).hexdigest()
    assert restart_checksum(doc) == _checksum(site)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("cache.size", "17Gi"),  # store
        ("cache.evictionPolicy", "LRU"),  # store
        ("cache.memoryTier", "0"),  # store
        ("ports.client", 8180),  # listen
        ("origin.bucket", "other-bucket"),  # origin
        ("origin.endpoint", "https://s3.example"),  # origin
        ("origin.region", "eu-central-1"),  # origin
    ],
)
def test_a_change_read_only_at_start_changes_the_checksum(
    edge_example: Any, path: str, value: Any
) -> None:
    site = edge_example("EdgeSite", "alpha-east")
    before = _checksum(site)
    *parents, last = path.split(".")
    node = site["spec"]
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    assert _checksum(site) != before


def test_live_reloaded_changes_keep_the_checksum(edge_example: Any) -> None:
    """Membership, fill plan, fill policy, tokens and tracker reload live: no pod restart."""
    site = edge_example("EdgeSite", "alpha-east")
    sets = [edge_example("ContentSet", c) for c in CONTENTSETS]
    before = _checksum(site)
    assert _checksum(site, fill_plan(site, sets)) == before
    site["spec"]["replicas"] = 7
    site["spec"]["fill"]["window"]["start"] = "03:30"
    site["spec"]["fill"]["rateLimitBytesPerSecond"] = 1_000_000
    site["spec"]["tokens"]["clockSkewSeconds"] = 5
    site["spec"]["tracker"]["maxNumwant"] = 10
    site["spec"]["tracker"]["memberUrlTemplate"] = "https://c{ordinal}.isp.example"
    site["spec"]["clientNetworks"] = ["192.0.2.0/24"]
    assert _checksum(site) == before


def test_checksum_is_stable_across_renders(edge_example: Any) -> None:
    site = edge_example("EdgeSite", "beta-west")
    assert _checksum(site) == _checksum(copy.deepcopy(site))
    assert len(_checksum(site)) == 64


# --- the peer secret: named, generated, or none ----------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "named", "expected"),
    [
        (2, "peer-secret", "peer-secret"),
        (1, "peer-secret", "peer-secret"),
        (3, None, "alpha-east-peering"),
        (1, None, None),
        (0, None, None),
    ],
)
def test_peer_secret_is_the_named_one_else_generated_for_several_nodes(
    edge_example: Any,
    node_schema: dict[str, Any],
    replicas: int,
    named: str | None,
    expected: str | None,
) -> None:
    site = edge_example("EdgeSite", "alpha-east")
    site["spec"]["replicas"] = replicas
    site["spec"]["peering"] = {"secretRef": {"name": named}} if named else {}
    inputs = SiteInputs(site=site)
    assert peer_secret_name(inputs) == expected
    assert generates_peer_secret(inputs) == (named is None and expected is not None)
    doc = node_config(inputs)
    jsonschema.validate(doc, node_schema)
    pod = render_statefulset(inputs)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    if expected is None:
        assert "secretFile" not in doc["peering"]
        assert "peer-secret" not in volumes
    else:
        assert doc["peering"]["secretFile"] == "/etc/edgefill/peer/secret"
        assert volumes["peer-secret"]["secret"]["secretName"] == expected
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "peer-secret"]
        assert mount == {"name": "peer-secret", "mountPath": "/etc/edgefill/peer", "readOnly": True}


def test_generated_peer_secret_manifest_carries_the_value_given(edge_example: Any) -> None:
    site = edge_example("EdgeSite", "beta-west")
    secret = render_generated_peer_secret(SiteInputs(site=site), "s3cr3t-value")
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == "beta-west-peering"
    assert secret["data"] == {"secret": "czNjcjN0LXZhbHVl"}
    assert secret["metadata"]["ownerReferences"][0]["controller"] is True


def test_byte_sizes_given_as_integers(edge_example: Any, node_schema: dict[str, Any]) -> None:
    """Quantities are int-or-string: plain byte counts render like their suffixed forms."""
    site = edge_example("EdgeSite", "alpha-east")
    site["spec"]["storage"] = {"size": 21474836480}
    site["spec"]["cache"] = {"size": 10737418240, "memoryTier": 0}
    inputs = SiteInputs(site=site)
    doc = node_config(inputs)
    assert doc["store"]["maxBytes"] == 10 * 1024**3
    assert doc["store"]["memoryTierBytes"] == 0
    jsonschema.validate(doc, node_schema)
    (claim,) = render_statefulset(inputs)["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == 21474836480


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("edgefill/cache-node:0.1.0", "0.1.0"),
        ("registry.example.org:5000/edgefill/cache-node:1.2.3-rc.1", "1.2.3-rc.1"),
        ("registry.example.org:5000/edgefill/cache-node", None),
        ("edgefill/cache-node@sha256:" + "a" * 64, None),
        ("edgefill/cache-node", None),
    ],
)
def test_children_carry_the_recommended_labels(
    edge_example: Any, image: str, version: str | None
) -> None:
    site = edge_example("EdgeSite", "alpha-east")
    site["spec"]["image"] = image
    children = render_children(SiteInputs(site=site))
    sts = next(c for c in children if c["kind"] == "StatefulSet")
    for labels in [c["metadata"]["labels"] for c in children] + [
        sts["spec"]["template"]["metadata"]["labels"]
    ]:
        assert labels["app.kubernetes.io/name"] == "edgefill-cache-node"
        assert labels["app.kubernetes.io/instance"] == "alpha-east"
        assert labels["app.kubernetes.io/component"] == "cache-node"
        assert labels["app.kubernetes.io/part-of"] == "edgefill"
        assert labels["app.kubernetes.io/managed-by"] == "edgefill-operator"
        assert labels.get("app.kubernetes.io/version") == version
    # The selector (immutable on a StatefulSet) never carries the version.
    assert "app.kubernetes.io/version" not in sts["spec"]["selector"]["matchLabels"]
