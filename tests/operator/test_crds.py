"""Static checks of the CRDs: described, structural, and the examples fit them.

CEL rules need a real API server (see test_api_validation.py); here the
OpenAPI part is checked with jsonschema, which ignores the x-kubernetes
extensions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILES = {
    "EdgeSite": REPO / "crds" / "edgesites.edgefill.io.yaml",
    "ContentSet": REPO / "crds" / "contentsets.edgefill.io.yaml",
}


def _crd(kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(CRD_FILES[kind].read_text())
    return doc


def _schema(kind: str) -> dict[str, Any]:
    (version,) = _crd(kind)["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_every_field_is_described(kind: str) -> None:
    # Map values and list items are described by the map or list that holds them.
    missing = [
        path
        for path, node in _walk(_schema(kind), kind)
        if "description" not in node and not path.endswith((".metadata", "{}", "[]"))
    ]
    assert missing == []


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_every_cel_rule_has_a_message(kind: str) -> None:
    rules = [
        (path, rule)
        for path, node in _walk(_schema(kind), kind)
        for rule in node.get("x-kubernetes-validations") or []
    ]
    assert rules, "validation lives in the CRD"
    for path, rule in rules:
        assert rule.get("message") or rule.get("messageExpression"), path


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_names_printer_columns_and_subresources(kind: str) -> None:
    crd = _crd(kind)
    names = crd["spec"]["names"]
    assert names["categories"] == ["edgefill"]
    for short in names["shortNames"]:
        assert short not in {"cs", "es", "ep", "svc", "sts", "cm", "po", "ns"}
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1"
    assert version["storage"] is True
    assert "status" in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Ready"
    assert "Fill" in columns
    assert columns[-1] == "Age"
    assert crd["spec"]["scope"] == "Namespaced"


def _examples() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((REPO / "examples").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_examples_cover_two_isp_sites_a_parent_and_two_contentsets() -> None:
    docs = _examples()
    sites = {d["metadata"]["name"]: d for d in docs if d["kind"] == "EdgeSite"}
    sets = [d for d in docs if d["kind"] == "ContentSet"]
    assert sorted(sites) == ["alpha-east", "beta-west"]
    assert {s["metadata"]["labels"]["edgefill.io/isp"] for s in sites.values()} == {"alpha", "beta"}
    assert sites["beta-west"]["spec"]["peering"]["parents"] == [{"name": "alpha-east"}]
    assert len(sets) == 2


@pytest.mark.parametrize(
    "doc",
    [d for d in _examples() if d["kind"] in CRD_FILES],
    ids=lambda d: f"{d['kind']}-{d['metadata']['name']}",
)
def test_examples_fit_the_openapi_schema(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, _schema(doc["kind"]))


def test_admission_policy_targets_contentsets_with_edgesite_params() -> None:
    policy, binding = yaml.safe_load_all(
        (REPO / "crds" / "contentset-copies.admission-policy.yaml").read_text()
    )
    assert policy["spec"]["paramKind"] == {"apiVersion": "edgefill.io/v1alpha1", "kind": "EdgeSite"}
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]


def test_api_reference_is_generated_from_the_crds() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "edgefill_devenv.crd_docs", "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr


# --- Kubernetes API conventions -------------------------------------------------------------

METAV1_CONDITION = {
    "type": {
        "maxLength": 316,
        "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    },
    "status": {"enum": ["True", "False", "Unknown"]},
    "observedGeneration": {"format": "int64", "minimum": 0},
    "lastTransitionTime": {"format": "date-time"},
    "reason": {
        "minLength": 1,
        "maxLength": 1024,
        "pattern": r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
    },
    "message": {"maxLength": 32768},
}


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_conditions_are_metav1_conditions_keyed_by_type(kind: str) -> None:
    status = _schema(kind)["properties"]["status"]
    assert status["properties"]["observedGeneration"]["format"] == "int64"
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert set(item["properties"]) == set(METAV1_CONDITION)
    for name, want in METAV1_CONDITION.items():
        for key, value in want.items():
            assert item["properties"][name][key] == value, (name, key)


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_every_list_declares_its_list_type(kind: str) -> None:
    for path, node in _walk(_schema(kind), kind):
        if node.get("type") != "array":
            continue
        list_type = node.get("x-kubernetes-list-type")
        assert list_type in ("atomic", "set", "map"), path
        if list_type == "map":
            keys = node["x-kubernetes-list-map-keys"]
            item = node["items"]
            for key in keys:  # map keys must be required (or defaulted) scalars
                assert key in item.get("required", []) or "default" in item["properties"][key]


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_field_names_are_lower_camel_case(kind: str) -> None:
    for path, node in _walk(_schema(kind), kind):
        for name in node.get("properties") or {}:
            assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", name), f"{path}.{name}"


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_enums_are_camel_case_and_documented(kind: str) -> None:
    for path, node in _walk(_schema(kind), kind):
        if "enum" not in node or path.endswith(".status"):
            continue  # condition status True/False/Unknown is metav1's own enum
        for value in node["enum"]:
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", value), f"{path}: {value}"
            assert value in node["description"], f"{path}: {value} not described"


def test_byte_sizes_are_quantities() -> None:
    spec = _schema("EdgeSite")["properties"]["spec"]["properties"]
    for node in (
        spec["storage"]["properties"]["size"],
        spec["cache"]["properties"]["size"],
        spec["cache"]["properties"]["memoryTier"],
    ):
        assert node["x-kubernetes-int-or-string"] is True
        assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
        assert re.fullmatch(node["pattern"], "20Gi")
        assert re.fullmatch(node["pattern"], "1.5e10")
        assert not re.fullmatch(node["pattern"], "20 GB")


def test_durations_are_integer_seconds() -> None:
    """API conventions: durations are integers with the unit in the name (fooSeconds)."""
    for kind in CRD_FILES:
        for path, node in _walk(_schema(kind), kind):
            if path.endswith("Seconds"):
                assert node["type"] == "integer", path


def test_edgesite_scale_subresource_matches_the_schema() -> None:
    (version,) = _crd("EdgeSite")["spec"]["versions"]
    scale = version["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    schema = _schema("EdgeSite")["properties"]
    assert schema["spec"]["properties"]["replicas"]["format"] == "int32"
    assert schema["status"]["properties"]["replicas"]["format"] == "int32"
    assert schema["status"]["properties"]["selector"]["type"] == "string"
