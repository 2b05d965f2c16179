"""A corpus of invalid manifests, each rejected by the API server itself with its intended message.

Server-side dry run goes through the whole admission chain (schema, CEL
rules, the ValidatingAdmissionPolicy) without storing anything, so each case
costs one request.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(kind: str, name: str) -> dict[str, Any]:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
                return copy.deepcopy(doc)
    raise KeyError(name)


def _site(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = _example("EdgeSite", "alpha-east")
    edit(doc["spec"])
    return doc


def _cs(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = _example("ContentSet", "series-launch")
    edit(doc["spec"])
    return doc


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return edit


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for p in parents:
            node = node[p]
        del node[last]

    return edit


def _both(*edits: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        for e in edits:
            e(spec)

    return edit


def _renamed(doc: dict[str, Any], name: str) -> dict[str, Any]:
    doc["metadata"]["name"] = name
    return doc


KEY = {"id": "k", "secretKey": "k"}

CASES: list[tuple[str, dict[str, Any], str]] = [
    # wrong types
    ("replicas-string", _site(_set("replicas", "two")), "must be of type integer"),
    ("rate-string", _site(_set("fill.rateLimitBytesPerSecond", "fast")), "must be of type integer"),
    ("networks-not-list", _site(_set("clientNetworks", "10.0.0.0/8")), "must be of type array"),
    ("pinned-string", _cs(_set("pinned", "yes")), "must be of type boolean"),
    # out of range
    ("replicas-too-many", _site(_set("replicas", 101)), "less than or equal to 100"),
    ("replicas-negative", _site(_set("replicas", -1)), "greater than or equal to 0"),
    ("window-over-24h", _site(_set("fill.window.durationSeconds", 90000)), "at most 24 h"),
    ("window-under-minute", _site(_set("fill.window.durationSeconds", 30)), "at least one minute"),
    ("window-start", _site(_set("fill.window.start", "25:00")), "HH:MM between 00:00 and 23:59"),
    ("rate-zero", _site(_set("fill.rateLimitBytesPerSecond", 0)), "rate cap) must be above zero"),
    ("rate-negative", _site(_set("fill.rateLimitBytesPerSecond", -5)), "must be above zero"),
    ("budget-zero", _site(_set("fill.budgetBytesPerWindow", 0)), "budgetBytesPerWindow must be"),
    ("copies-zero", _cs(_set("copies", 0)), "copies must be between 1 and 16"),
    ("copies-huge", _cs(_set("copies", 17)), "copies must be between 1 and 16"),
    ("piece-too-small", _cs(_set("pieceSizeBytes", 1000)), "between 16384 (16 KiB)"),
    ("piece-not-multiple", _cs(_set("pieceSizeBytes", 20000)), "multiple of 16384"),
    ("priority-high", _cs(_set("priority", 5000)), "less than or equal to 1000"),
    # bad CIDRs
    (
        "cidr-prefix-33",
        _site(_set("clientNetworks", ["10.0.0.0/33"])),
        "client networks must be CIDRs",
    ),
    ("cidr-host-bits", _site(_set("clientNetworks", ["10.0.0.1/24"])), "no host bits set"),
    (
        "cidr-garbage",
        _site(_set("clientNetworks", ["not-a-cidr"])),
        "client networks must be CIDRs",
    ),
    (
        "cidr-v6-bad",
        _site(_set("clientNetworks", ["2001:db8::/129"])),
        "client networks must be CIDRs",
    ),
    (
        "cidr-host-bits-names-the-fix",
        _site(_set("clientNetworks", ["10.0.0.1/24"])),
        "203.0.113.0/24 or 2001:db8::/32; 10.0.0.1/24 has host bits set",
    ),
    (
        "proxy-not-a-cidr",
        _site(_set("tracker.trustedProxies", ["proxy.example"])),
        "proxy.example is not a CIDR",
    ),
    # bad time zones
    ("tz-names-the-value", _site(_set("fill.window.timeZone", "CET+1")), "or UTC, not CET+1"),
    ("tz-lowercase", _site(_set("fill.window.timeZone", "europe/berlin")), "IANA time zone"),
    ("tz-offset", _site(_set("fill.window.timeZone", "UTC+2")), "IANA time zone"),
    ("tz-no-area", _site(_set("fill.window.timeZone", "Berlin")), "IANA time zone"),
    # token keys
    (
        "three-token-keys",
        _site(_set("tokens.keys", [{"id": f"k{i}", "secretKey": f"k{i}"} for i in range(3)])),
        "at most two token keys",
    ),
    (
        "tokens-no-secret",
        _site(_set("tokens", {"enabled": True, "keys": [KEY]})),
        "tokens.enabled needs",
    ),
    ("token-dup-id", _site(_set("tokens.keys", [KEY, KEY])), "Duplicate value"),
    # unknown fields
    ("unknown-spec-field", _site(_set("cacheSizeGB", 10)), 'unknown field "spec.cacheSizeGB"'),
    ("unknown-cs-field", _cs(_set("source.regex", ".*")), 'unknown field "spec.source.regex"'),
    # empty or contradictory sources
    ("source-empty", _cs(_set("source", {"bucket": "catalogue"})), "exactly one of the two"),
    (
        "source-both",
        _cs(_set("source", {"bucket": "catalogue", "prefixes": ["a/"], "manifestKey": "m.jsonl"})),
        "exactly one of the two",
    ),
    ("prefix-empty", _cs(_set("source.prefixes", [""])), "must be non-empty S3 key prefixes"),
    (
        "manifest-ext",
        _cs(_set("source", {"bucket": "catalogue", "manifestKey": "m.txt"})),
        ".jsonl, .json or .csv",
    ),
    ("bucket-bad", _cs(_set("source.bucket", "Bad_Bucket")), "S3 bucket name"),
    (
        "invalidation-both",
        _cs(_set("invalidations", [{"id": "x", "key": "a", "prefix": "b"}])),
        "either a key or a prefix",
    ),
    (
        "selector-in-no-values",
        _cs(_set("sites", {"matchExpressions": [{"key": "a", "operator": "In"}]})),
        "need values",
    ),
    ("sites-missing", _cs(_delete("sites")), "spec.sites: Required value"),
    # other cross-field rules
    (
        "cache-above-storage",
        _site(_set("cache.size", "30Gi")),
        "cache.size must fit into storage.size",
    ),
    (
        "cache-not-quantity",
        _site(_set("cache.size", "lots")),
        "cache.size must be a positive quantity",
    ),
    ("endpoint-ftp", _site(_set("origin.endpoint", "ftp://origin")), "http:// or https:// URL"),
    (
        "node-selector-missing",
        _site(_delete("placement.nodeSelector")),
        "nodeSelector: Required value",
    ),
    (
        "own-parent",
        _site(_set("peering.parents", [{"name": "alpha-east"}])),
        "cannot be its own parent",
    ),
    ("same-ports", _site(_set("ports", {"client": 9090})), "three different ports"),
    (
        "parent-twice",
        _site(_set("peering.parents", [{"name": "core"}, {"name": "core"}])),
        "peering.parents names the same EdgeSite more than once",
    ),
    (
        "sibling-twice",
        _site(
            _set(
                "peering.siblings",
                [{"name": "b", "namespace": "x"}, {"name": "b", "namespace": "x"}],
            )
        ),
        "peering.siblings names the same EdgeSite more than once",
    ),
    ("eviction-enum", _site(_set("cache.evictionPolicy", "fifo")), "Unsupported value"),
    (
        "toleration-exists-value",
        _site(_set("placement.tolerations", [{"key": "a", "operator": "Exists", "value": "b"}])),
        "operator Exists must not set a value",
    ),
    ("name-too-long", _renamed(_site(lambda s: None), "a" * 41), "at most 40 characters"),
    # tracker.memberUrlTemplate
    (
        "member-url-ftp",
        _site(_set("tracker.memberUrlTemplate", "ftp://cache-{ordinal}.isp.example")),
        "must start with http:// or https://",
    ),
    (
        "member-url-unknown-placeholder",
        _site(_set("tracker.memberUrlTemplate", "https://cache-{node}.isp.example")),
        "may only use the placeholders {ordinal}, {pod}, {site} and {namespace}",
    ),
    (
        "member-url-not-a-url",
        _site(_set("tracker.memberUrlTemplate", "https://cache {ordinal}.isp.example")),
        "must give a valid URL once its placeholders are filled in",
    ),
    (
        "member-url-query",
        _site(_set("tracker.memberUrlTemplate", "https://cache-{ordinal}.isp.example/?a=b")),
        "is a base URL",
    ),
    (
        "member-url-one-for-all",
        _site(_set("tracker.memberUrlTemplate", "https://{site}.isp.example")),
        "must contain {ordinal} or {pod} when the site has more than one replica",
    ),
    (
        "member-url-empty",
        _site(_set("tracker.memberUrlTemplate", "")),
        "spec.tracker.memberUrlTemplate: Invalid value",
    ),
    # quantities
    ("storage-size-garbage", _site(_set("storage.size", "20 GB")), "spec.storage.size"),
    ("memory-tier-negative", _site(_set("cache.memoryTier", "-1Mi")), "cache.memoryTier must be"),
    ("storage-size-zero", _site(_set("storage.size", 0)), "storage.size must be a positive"),
    # enums (CamelCase values)
    ("eviction-lowercase", _site(_set("cache.evictionPolicy", "lru")), "Unsupported value"),
]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert len({name for name, _, _ in CASES}) == len(CASES)


def _dry_run(cluster: Any, namespace: str, doc: dict[str, Any]) -> Any:
    return cluster.kubectl(
        "create",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(doc),
        check=False,
    )


@pytest.fixture(scope="module")
def corpus_namespace(crds: Any) -> Any:
    import uuid

    ns = f"edgefill-validation-{uuid.uuid4().hex[:6]}"
    crds.kubectl("create", "namespace", ns)
    yield ns
    crds.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.parametrize(
    ("doc", "message"), [(d, m) for _, d, m in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_manifest_is_rejected(
    crds: Any, corpus_namespace: str, doc: Any, message: str
) -> None:
    out = _dry_run(crds, corpus_namespace, doc)
    assert out.returncode != 0, f"accepted: {json.dumps(doc)}"
    assert message in out.stderr, out.stderr


@pytest.mark.parametrize(
    "doc",
    [
        _example("EdgeSite", "alpha-east"),
        _example("EdgeSite", "beta-west"),
        _example("ContentSet", "popular-titles"),
        _example("ContentSet", "series-launch"),
    ],
    ids=["alpha-east", "beta-west", "popular-titles", "series-launch"],
)
def test_examples_are_accepted(crds: Any, corpus_namespace: str, doc: Any) -> None:
    out = _dry_run(crds, corpus_namespace, doc)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "doc",
    [
        _site(_set("tracker.memberUrlTemplate", "https://cache-{ordinal}.alpha.isp.example")),
        _site(_set("tracker.memberUrlTemplate", "http://{pod}.{namespace}.isp.example:8080/")),
        _site(
            _both(_set("replicas", 1), _set("tracker.memberUrlTemplate", "https://edge.example"))
        ),
        _site(_both(_set("storage.size", 21474836480), _set("cache.size", 10737418240))),
        _site(_both(_set("storage.size", "20G"), _set("cache.size", "1.5e10"))),
        _site(_set("cache.memoryTier", 0)),
        _site(_set("peering.siblings", [{"name": "b"}, {"name": "b", "namespace": "other"}])),
    ],
    ids=[
        "ordinal",
        "pod-and-namespace",
        "one-replica-one-url",
        "int-bytes",
        "decimal",
        "tier-0",
        "same-name-other-namespace",
    ],
)
def test_valid_variants_are_accepted(crds: Any, corpus_namespace: str, doc: Any) -> None:
    out = _dry_run(crds, corpus_namespace, doc)
    assert out.returncode == 0, out.stderr


def test_scaling_past_one_replica_needs_a_per_member_url(crds: Any, namespace: str) -> None:
    """The rule holds on the scale subresource too: one URL for two nodes is refused."""
    doc = _site(_both(_set("replicas", 1), _set("tracker.memberUrlTemplate", "https://e.example")))
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
    out = crds.kubectl(
        "scale", "edgesite", "alpha-east", "-n", namespace, "--replicas=2", check=False
    )
    assert out.returncode != 0
    assert "must contain {ordinal} or {pod}" in out.stderr
    stored = json.loads(
        crds.kubectl("get", "edgesite", "alpha-east", "-n", namespace, "-o", "json").stdout
    )
    assert stored["spec"]["replicas"] == 1


def _condition(**over: Any) -> dict[str, Any]:
    cond = {
        "type": "Ready",
        "status": "True",
        "observedGeneration": 1,
        "lastTransitionTime": "2026-11-22T03:00:00Z",
        "reason": "AllNodesReady",
        "message": "2/2 cache nodes ready",
    }
    cond.update(over)
    return {k: v for k, v in cond.items() if v is not None}


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (_condition(reason="not camel case"), "status.conditions[0].reason"),
        (_condition(reason=""), "status.conditions[0].reason"),
        (_condition(status="Yes"), "Unsupported value"),
        (_condition(lastTransitionTime=None), "lastTransitionTime: Required value"),
        (_condition(type="bad type!"), "status.conditions[0].type"),
        (_condition(observedGeneration=-1), "greater than or equal to 0"),
    ],
    ids=["reason-spaces", "reason-empty", "status-yes", "no-time", "type-chars", "gen-negative"],
)
def test_status_conditions_follow_the_metav1_condition_shape(
    crds: Any, corpus_namespace: str, condition: dict[str, Any], message: str
) -> None:
    """The status subresource rejects conditions that are not metav1.Condition shaped."""
    name = "conditions-" + uuid.uuid4().hex[:6]
    site = _renamed(_site(lambda s: None), name)
    crds.kubectl("apply", "-n", corpus_namespace, "-f", "-", input=json.dumps(site))
    try:
        good = {"status": {"conditions": [_condition()]}}
        ok = _patch_status(crds, corpus_namespace, name, good)
        assert ok.returncode == 0, ok.stderr
        out = _patch_status(crds, corpus_namespace, name, {"status": {"conditions": [condition]}})
        assert out.returncode != 0, f"accepted: {condition}"
        assert message in out.stderr, out.stderr
    finally:
        crds.kubectl("delete", "edgesite", name, "-n", corpus_namespace, "--wait=false")


def _patch_status(cluster: Any, namespace: str, name: str, patch: dict[str, Any]) -> Any:
    return cluster.kubectl(
        "patch",
        "edgesite",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
        check=False,
    )


def test_copies_above_a_selected_sites_replicas_is_denied(
    crds: Any, namespace: str, wait: Any
) -> None:
    """Cross-object: the ValidatingAdmissionPolicy reads the selected EdgeSites as params."""
    site = _example("EdgeSite", "beta-west")
    crds.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(site))
    cs = _cs(_set("copies", 3))
    # The policy's param informer may need a moment to see the new site.
    out = wait(
        "the copies policy to deny",
        lambda: (r := _dry_run(crds, namespace, cs)).returncode != 0 and r,
        timeout=30,
    )
    assert "copies (3) is above the replicas (2) of EdgeSite beta-west" in out.stderr
    fits = _cs(_set("copies", 2))
    assert _dry_run(crds, namespace, fits).returncode == 0
    other = _cs(
        _both(_set("copies", 3), _set("sites", {"matchLabels": {"edgefill.io/isp": "gamma"}}))
    )
    assert _dry_run(crds, namespace, other).returncode == 0
