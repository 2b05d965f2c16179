"""Pure render functions: an EdgeSite (plus what it depends on) in, child manifests out.

Nothing here talks to the API server; the reconciler feeds these functions the
objects it read and server-side applies what they return. Everything is
rendered in full every time (level-based): the same inputs give byte-identical
objects, so applying them again is a no-op for the API server.

The node configuration follows ``cache_node/node-config.schema.json`` (the
operator never imports ``cache_node``; the tests validate every rendered
document against that schema).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from edgefill_operator import names
from edgefill_operator.planning import SiteRef

Obj = Mapping[str, Any]
Manifest = dict[str, Any]

DEFAULT_PORTS = {"client": 8080, "peer": 8081, "metrics": 9090}
DEFAULT_IMAGE = "edgefill/cache-node:0.1.0"

EVICTION_POLICIES = {"LRU": "lru", "S3FIFO": "s3fifo", "SIEVE": "sieve"}
"""The API's CamelCase enum values (Kubernetes API conventions) to the node config's names."""

RESTART_SECTIONS = ("listen", "store", "origin")
"""Node-config sections a cache node reads only at start (``cache_node.app._reloadable``).

A change to any of them must restart the pods, so their checksum goes into the
pod template; membership, the fill plan and the other sections are reloaded
live and must not roll the site.
"""

MEMBER_URL_PLACEHOLDERS = ("{ordinal}", "{pod}", "{site}", "{namespace}")


@dataclass(frozen=True)
class Upstream:
    """A parent or sibling site, resolved: its peer Service and port."""

    ref: SiteRef
    role: str
    peer_port: int


@dataclass(frozen=True)
class SiteInputs:
    """Everything a site's children depend on, read by the reconciler."""

    site: Obj
    fill_plan: list[dict[str, Any]] = field(default_factory=list)
    upstreams: list[Upstream] = field(default_factory=list)
    downstreams: list[SiteRef] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.site["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.site["metadata"]["namespace"])

    @property
    def spec(self) -> Obj:
        spec: Obj = self.site.get("spec") or {}
        return spec


def quantity_bytes(value: str | int) -> int:
    """A Kubernetes quantity (``90Gi``, ``500M``) as whole bytes."""
    exact = parse_quantity(value)  # type: ignore[no-untyped-call]
    return int(exact.to_integral_value(rounding="ROUND_FLOOR"))


def image(spec: Obj) -> str:
    return str(spec.get("image", DEFAULT_IMAGE))


def ports(spec: Obj) -> dict[str, int]:
    given = spec.get("ports") or {}
    return {k: int(given.get(k, v)) for k, v in DEFAULT_PORTS.items()}


def owner_reference(site: Obj) -> dict[str, Any]:
    meta = site["metadata"]
    return {
        "apiVersion": names.API_VERSION,
        "kind": "EdgeSite",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(inputs: SiteInputs, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": inputs.namespace,
        "labels": names.common_labels(inputs.name, image(inputs.spec)),
        "ownerReferences": [owner_reference(inputs.site)],
    }


def peer_url(namespace: str, site: str, port: int, ordinal: int | None = None) -> str:
    """Peer endpoint of one pod (stable DNS through the headless Service) or of a whole site."""
    svc = f"{names.peer_service_name(site)}.{namespace}.svc"
    host = f"{names.pod_name(site, ordinal)}.{svc}" if ordinal is not None else svc
    return f"http://{host}:{port}"


def eviction_policy(value: object) -> str:
    """The node's policy name for the API's enum value (default S3FIFO).

    Objects stored before the enum became CamelCase carry the node's own
    lower-case names; the API server never re-validates stored objects, so
    those are still understood.
    """
    given = str(value or "S3FIFO")
    if given in EVICTION_POLICIES:
        return EVICTION_POLICIES[given]
    if given in EVICTION_POLICIES.values():
        return given
    raise ValueError(f"unknown cache.evictionPolicy {given!r}")


def member_url(template: str, *, namespace: str, site: str, ordinal: int) -> str:
    """One node's public client base URL from ``spec.tracker.memberUrlTemplate``.

    Placeholders are replaced literally (no format-string parsing, so a URL
    with other braces cannot inject anything); a trailing slash is dropped
    because the node appends ``/announce`` itself.
    """
    values = {
        "{ordinal}": str(ordinal),
        "{pod}": names.pod_name(site, ordinal),
        "{site}": site,
        "{namespace}": namespace,
    }
    url = template
    for placeholder in MEMBER_URL_PLACEHOLDERS:
        url = url.replace(placeholder, values[placeholder])
    return url.rstrip("/")


def member_client_urls(inputs: SiteInputs) -> dict[str, str]:
    """Pod name -> public client base URL of every member; empty without a template."""
    template = (inputs.spec.get("tracker") or {}).get("memberUrlTemplate")
    if not template:
        return {}
    replicas = int(inputs.spec.get("replicas", 2))
    return {
        names.pod_name(inputs.name, i): member_url(
            str(template), namespace=inputs.namespace, site=inputs.name, ordinal=i
        )
        for i in range(replicas)
    }


def peer_secret_name(inputs: SiteInputs) -> str | None:
    """The Secret holding the site's peer secret: the one the spec names, else a generated one.

    Nodes of a site with more than one replica always talk to each other, and
    that traffic must be authenticated (a node without a secret does not peer
    at all), so a site that names no ``peering.secretRef`` gets a Secret the
    operator generates (:func:`render_generated_peer_secret`). Sites that peer
    with other sites need one shared Secret named in every one of them.
    """
    ref = (inputs.spec.get("peering") or {}).get("secretRef")
    if ref:
        return str(ref["name"])
    if int(inputs.spec.get("replicas", 2)) > 1:
        return names.generated_peer_secret_name(inputs.name)
    return None


def generates_peer_secret(inputs: SiteInputs) -> bool:
    """Whether the site's peer Secret is the operator's own (see :func:`peer_secret_name`)."""
    ref = (inputs.spec.get("peering") or {}).get("secretRef")
    return not ref and peer_secret_name(inputs) is not None


def render_generated_peer_secret(inputs: SiteInputs, secret: str) -> Manifest:
    """The generated peer Secret, around a random value the caller draws (never rendered twice).

    Created once and never updated: re-drawing the value would split the site
    until every pod had restarted. Owned by the EdgeSite, so it goes with it.
    """
    meta = _metadata(inputs, names.generated_peer_secret_name(inputs.name))
    meta["annotations"] = {
        f"{names.GROUP}/generated": (
            "peer secret generated by edgefill-operator because spec.peering.secretRef is "
            "unset; name a Secret there to share one secret with other sites"
        )
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": {names.PEER_SECRET_KEY: base64.b64encode(secret.encode()).decode()},
    }


def node_config(inputs: SiteInputs) -> dict[str, Any]:
    """The ``node.json`` document every node of the site mounts."""
    spec = inputs.spec
    p = ports(spec)
    cache = spec.get("cache") or {}
    origin = spec["origin"]
    fill = spec.get("fill") or {}
    window = fill.get("window") or {}
    peering = spec.get("peering") or {}
    tokens = spec.get("tokens") or {}
    tracker = spec.get("tracker") or {}
    replicas = int(spec.get("replicas", 2))

    origin_doc: dict[str, Any] = {
        "bucket": origin["bucket"],
        "region": origin.get("region", "us-east-1"),
    }
    if origin.get("endpoint"):
        origin_doc["endpointUrl"] = origin["endpoint"]
    if origin.get("credentialsSecretRef"):
        origin_doc["credentialsDir"] = names.ORIGIN_CREDENTIALS_DIR

    peering_doc: dict[str, Any] = {
        "members": [
            {
                "name": names.pod_name(inputs.name, i),
                "peerUrl": peer_url(inputs.namespace, inputs.name, p["peer"], i),
            }
            for i in range(replicas)
        ],
        "upstreams": [
            {
                "name": u.ref.qualified,
                "role": u.role,
                "peerUrl": peer_url(u.ref.namespace, u.ref.name, u.peer_port),
            }
            for u in inputs.upstreams
        ],
        "maxHops": int(peering.get("maxHops", 2)),
    }
    if peer_secret_name(inputs):
        peering_doc["secretFile"] = f"{names.PEER_SECRET_DIR}/{names.PEER_SECRET_KEY}"

    fill_doc: dict[str, Any] = {
        "window": {
            "start": window.get("start", "02:00"),
            "durationSeconds": int(window.get("durationSeconds", 43200)),
            "timeZone": window.get("timeZone", "UTC"),
        },
        "allowOutsideWindow": bool(fill.get("allowOutsideWindow", False)),
        "rateLimitBytesPerSecond": int(fill.get("rateLimitBytesPerSecond", 150_000_000)),
        "concurrency": int(fill.get("concurrency", 4)),
    }
    if fill.get("budgetBytesPerWindow") is not None:
        fill_doc["budgetBytesPerWindow"] = int(fill["budgetBytesPerWindow"])

    tokens_enabled = bool(tokens.get("enabled", True))
    tokens_doc: dict[str, Any] = {
        "enabled": tokens_enabled,
        "clockSkewSeconds": int(tokens.get("clockSkewSeconds", 30)),
    }
    if tokens_enabled or tokens.get("secretRef"):
        tokens_doc["keysDir"] = names.TOKEN_KEYS_DIR

    tracker_doc: dict[str, Any] = {
        "enabled": bool(tracker.get("enabled", True)),
        "announceIntervalSeconds": int(tracker.get("announceIntervalSeconds", 120)),
        "maxPeersPerSwarm": int(tracker.get("maxPeersPerSwarm", 1000)),
        "maxNumwant": int(tracker.get("maxNumwant", 50)),
        "trustedProxies": list(tracker.get("trustedProxies") or []),
    }
    if tracker.get("manifestSigningKeySecretRef"):
        tracker_doc["manifestKeyFile"] = f"{names.TRACKER_KEY_DIR}/{names.TRACKER_KEY_FILE}"
    urls = member_client_urls(inputs)
    if urls:
        tracker_doc["memberClientUrls"] = urls

    return {
        "schemaVersion": 1,
        "site": {"namespace": inputs.namespace, "name": inputs.name},
        "listen": {
            "host": "0.0.0.0",  # noqa: S104 - a pod listens on all of its interfaces
            "clientPort": p["client"],
            "peerPort": p["peer"],
            "metricsPort": p["metrics"],
        },
        "store": {
            "path": names.STORE_DIR,
            "maxBytes": quantity_bytes(cache["size"]),
            "evictionPolicy": eviction_policy(cache.get("evictionPolicy")),
            "memoryTierBytes": quantity_bytes(cache.get("memoryTier", "64Mi")),
        },
        "origin": origin_doc,
        "peering": peering_doc,
        "fill": fill_doc,
        "fillPlan": list(inputs.fill_plan),
        "tokens": tokens_doc,
        "tracker": tracker_doc,
        "clientNetworks": list(spec.get("clientNetworks") or []),
    }


def restart_checksum(config: Mapping[str, Any]) -> str:
    """SHA-256 over the node-config sections read only at start (:data:`RESTART_SECTIONS`).

    Canonical JSON (sorted keys, no whitespace), so the same sections give the
    same checksum whatever order they were built in.
    """
    sections = {k: config.get(k) for k in RESTART_SECTIONS}
    canonical = json.dumps(sections, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def render_config_map(inputs: SiteInputs) -> Manifest:
    doc = json.dumps(node_config(inputs), indent=2, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(inputs, names.configmap_name(inputs.name)),
        "data": {names.CONFIG_KEY: doc + "\n"},
    }


def render_service_account(inputs: SiteInputs) -> Manifest:
    """A cache node needs no Kubernetes API access at all: no Role, no token mounted."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(inputs, names.service_account_name(inputs.name)),
        "automountServiceAccountToken": False,
    }


def render_peer_service(inputs: SiteInputs) -> Manifest:
    """Headless: one DNS record per pod, published before readiness so peers find each other."""
    p = ports(inputs.spec)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(inputs, names.peer_service_name(inputs.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": names.selector_labels(inputs.name),
            "ports": [
                {"name": "peer", "port": p["peer"], "targetPort": "peer", "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": p["metrics"],
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def render_client_service(inputs: SiteInputs) -> Manifest:
    """The site's address for end users: content and the tracker on one port."""
    p = ports(inputs.spec)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(inputs, names.client_service_name(inputs.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector_labels(inputs.name),
            "ports": [
                {
                    "name": "http",
                    "port": p["client"],
                    "targetPort": "client",
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def render_pdb(inputs: SiteInputs) -> Manifest:
    """At most one node of a site down by voluntary disruption: one slice missed at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(inputs, names.pdb_name(inputs.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": names.selector_labels(inputs.name)},
        },
    }


def render_network_policies(inputs: SiteInputs) -> list[Manifest]:
    """Clients (and site members' tracker links) reach the client port; members and
    downstream sites reach the peer port.

    The metrics port (probes, Prometheus, the operator's /status poll) is open
    to the operator and to pods labelled as Prometheus scrapers only.
    """
    p = ports(inputs.spec)
    pods = {"matchLabels": names.selector_labels(inputs.name)}
    networks = list(inputs.spec.get("clientNetworks") or [])
    client_rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": p["client"]}]}
    if networks:
        # The site's own members also reach the client port: the tracker's
        # member links (/tracker/v1/link) run there, so a swarm's owner must
        # accept its siblings even when clients are limited to these CIDRs.
        client_rule["from"] = [
            *({"ipBlock": {"cidr": c}} for c in networks),
            {"podSelector": pods},
        ]
    peers: list[dict[str, Any]] = [{"podSelector": pods}]
    for ref in inputs.downstreams:
        peers.append(
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": ref.namespace}
                },
                "podSelector": {"matchLabels": names.selector_labels(ref.name)},
            }
        )
    any_namespace: dict[str, Any] = {"namespaceSelector": {}}
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(inputs, names.client_policy_name(inputs.name)),
            "spec": {"podSelector": pods, "policyTypes": ["Ingress"], "ingress": [client_rule]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(inputs, names.peer_policy_name(inputs.name)),
            "spec": {
                "podSelector": pods,
                "policyTypes": ["Ingress"],
                "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": p["peer"]}]}],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(inputs, names.metrics_policy_name(inputs.name)),
            "spec": {
                "podSelector": pods,
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {
                                **any_namespace,
                                "podSelector": {
                                    "matchLabels": {
                                        "app.kubernetes.io/name": names.OPERATOR_APP_NAME
                                    }
                                },
                            },
                            {
                                **any_namespace,
                                "podSelector": {
                                    "matchLabels": {"edgefill.io/scrape-metrics": "true"}
                                },
                            },
                        ],
                        "ports": [{"protocol": "TCP", "port": p["metrics"]}],
                    }
                ],
            },
        },
    ]


def _secret_volume(
    name: str, secret: str, items: Sequence[tuple[str, str]] | None = None
) -> Manifest:
    source: dict[str, Any] = {"secretName": secret, "defaultMode": 0o440}
    if items is not None:
        source["items"] = [{"key": k, "path": path} for k, path in items]
    return {"name": name, "secret": source}


def render_statefulset(inputs: SiteInputs) -> Manifest:
    """Cache nodes with stable identities (``<site>-cache-<n>``): the hash ring's members."""
    spec = inputs.spec
    site = inputs.name
    p = ports(spec)
    placement = spec.get("placement") or {}
    spread = placement.get("topologySpread") or {}
    storage = spec.get("storage") or {}
    origin = spec["origin"]
    tokens = spec.get("tokens") or {}
    config = node_config(inputs)

    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": names.CONFIG_DIR, "readOnly": True},
        {"name": "store", "mountPath": names.STORE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a private emptyDir
    ]
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {
                "name": names.configmap_name(site),
                "items": [{"key": names.CONFIG_KEY, "path": names.CONFIG_KEY}],
            },
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if origin.get("credentialsSecretRef"):
        mounts.append(
            {
                "name": "origin-credentials",
                "mountPath": names.ORIGIN_CREDENTIALS_DIR,
                "readOnly": True,
            }
        )
        volumes.append(
            _secret_volume(
                "origin-credentials",
                origin["credentialsSecretRef"]["name"],
                [("accessKeyId", "accessKeyId"), ("secretAccessKey", "secretAccessKey")],
            )
        )
    if tokens.get("secretRef"):
        mounts.append({"name": "token-keys", "mountPath": names.TOKEN_KEYS_DIR, "readOnly": True})
        volumes.append(
            _secret_volume(
                "token-keys",
                tokens["secretRef"]["name"],
                [(k["secretKey"], k["id"]) for k in tokens.get("keys") or []],
            )
        )
    signing = (spec.get("tracker") or {}).get("manifestSigningKeySecretRef")
    if signing:
        mounts.append(
            {"name": "tracker-signing-key", "mountPath": names.TRACKER_KEY_DIR, "readOnly": True}
        )
        volumes.append(
            _secret_volume(
                "tracker-signing-key",
                signing["name"],
                [(signing.get("key", "ed25519"), names.TRACKER_KEY_FILE)],
            )
        )
    peer_secret = peer_secret_name(inputs)
    if peer_secret:
        mounts.append({"name": "peer-secret", "mountPath": names.PEER_SECRET_DIR, "readOnly": True})
        volumes.append(
            _secret_volume(
                "peer-secret",
                peer_secret,
                [(names.PEER_SECRET_KEY, names.PEER_SECRET_KEY)],
            )
        )

    claims: list[dict[str, Any]] = []
    size = storage.get("size", "100Gi")
    if storage.get("volume", "PersistentVolumeClaim") == "EmptyDir":
        volumes.append({"name": "store", "emptyDir": {"sizeLimit": size}})
    else:
        claim_spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
        }
        if storage.get("storageClassName"):
            claim_spec["storageClassName"] = storage["storageClassName"]
        claims.append({"metadata": {"name": "store"}, "spec": claim_spec})

    resources = spec.get("resources") or {}
    container: dict[str, Any] = {
        "name": "cache-node",
        "image": image(spec),
        "imagePullPolicy": spec.get("imagePullPolicy", "IfNotPresent"),
        "args": ["--config", f"{names.CONFIG_DIR}/{names.CONFIG_KEY}"],
        "env": [
            {
                "name": "EDGEFILL_NODE_NAME",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
            {
                # The web-seed URL the tracker offers clients is this pod's address.
                "name": "EDGEFILL_POD_IP",
                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
            },
        ],
        "ports": [
            {"name": "client", "containerPort": p["client"], "protocol": "TCP"},
            {"name": "peer", "containerPort": p["peer"], "protocol": "TCP"},
            {"name": "metrics", "containerPort": p["metrics"], "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
        "resources": {k: dict(v) for k, v in resources.items() if v},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": names.service_account_name(site),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "nodeSelector": dict(placement.get("nodeSelector") or {}),
        "tolerations": [dict(t) for t in placement.get("tolerations") or []],
        "topologySpreadConstraints": [
            {
                "maxSkew": int(spread.get("maxSkew", 1)),
                "topologyKey": spread.get("topologyKey", "kubernetes.io/hostname"),
                "whenUnsatisfiable": spread.get("whenUnsatisfiable", "DoNotSchedule"),
                "labelSelector": {"matchLabels": names.selector_labels(site)},
            }
        ],
        "containers": [container],
        "volumes": volumes,
    }
    sts_spec: dict[str, Any] = {
        "replicas": int(spec.get("replicas", 2)),
        "serviceName": names.peer_service_name(site),
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
        "selector": {"matchLabels": names.selector_labels(site)},
        "template": {
            "metadata": {
                "labels": names.common_labels(site, image(spec)),
                # Pods restart when a section the node reads only at start changes.
                "annotations": {names.CONFIG_CHECKSUM_ANNOTATION: restart_checksum(config)},
            },
            "spec": pod_spec,
        },
    }
    if claims:
        sts_spec["volumeClaimTemplates"] = claims
        sts_spec["persistentVolumeClaimRetentionPolicy"] = {
            "whenDeleted": "Delete",
            "whenScaled": "Retain",
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(inputs, names.statefulset_name(site)),
        "spec": sts_spec,
    }


def render_children(inputs: SiteInputs) -> list[Manifest]:
    """Every child of a site, in apply order (config and identity before the pods)."""
    return [
        render_service_account(inputs),
        render_config_map(inputs),
        render_peer_service(inputs),
        render_client_service(inputs),
        *render_network_policies(inputs),
        render_pdb(inputs),
        render_statefulset(inputs),
    ]
