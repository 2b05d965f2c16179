"""Generate docs/api.md (the EdgeSite and ContentSet API reference) from crds/.

The CRDs are the single source of the API: field descriptions, types,
defaults, bounds and CEL rules are written there once, and this page is
rendered from them. ``python -m edgefill_devenv.crd_docs --write`` rewrites
the page; ``--check`` fails when the committed page is stale (a test runs it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import yaml

from edgefill_devenv.paths import REPO_ROOT

CRDS = (
    REPO_ROOT / "crds" / "edgesites.edgefill.io.yaml",
    REPO_ROOT / "crds" / "contentsets.edgefill.io.yaml",
)
POLICY = REPO_ROOT / "crds" / "contentset-copies.admission-policy.yaml"
OUTPUT = REPO_ROOT / "docs" / "api.md"


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"[]{_type(node.get('items') or {})}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type(node['additionalProperties'])}"
    if node.get("format") in ("int32", "int64", "date-time"):
        return f"{kind} ({node['format']})"
    return kind


def _constraints(node: dict[str, Any]) -> str:
    parts: list[str] = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, label in (
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minProperties", "min entries"),
        ("maxProperties", "max entries"),
    ):
        if key in node:
            parts.append(f"{label} {node[key]}")
    list_type = node.get("x-kubernetes-list-type")
    if list_type == "map":
        keys = ", ".join(f"`{k}`" for k in node.get("x-kubernetes-list-map-keys") or [])
        parts.append(f"list of entries keyed by {keys}")
    elif list_type == "set":
        parts.append("set (no duplicates)")
    if "pattern" in node and node.get("x-kubernetes-int-or-string"):
        parts.append("quantity (bytes) such as `64Mi`, `20Gi` or `500G`")
    for rule in node.get("x-kubernetes-validations") or []:
        parts.append("rule: " + " ".join(str(rule.get("message", "")).split()))
    for sub, label in (("items", "each item"), ("additionalProperties", "each value")):
        inner = node.get(sub)
        if isinstance(inner, dict) and not inner.get("properties"):
            for rule in inner.get("x-kubernetes-validations") or []:
                parts.append(f"{label}: " + " ".join(str(rule.get("message", "")).split()))
    return "; ".join(parts)


def _default(node: dict[str, Any]) -> str:
    if "default" not in node:
        return ""
    text = yaml.safe_dump(node["default"], default_flow_style=True).strip()
    return f"`{text.removesuffix('...').strip()}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(node: dict[str, Any], path: str, required: bool) -> Iterator[str]:
    yield (
        f"| `{path}` | {_type(node)} | {'yes' if required else ''} | {_default(node)} | "
        f"{_cell(str(node.get('description', '')))} | {_cell(_constraints(node))} |"
    )
    props = node.get("properties") or {}
    req = set(node.get("required") or [])
    for name, child in props.items():
        yield from _rows(child, f"{path}.{name}", name in req)
    items = node.get("items")
    if isinstance(items, dict) and items.get("properties"):
        ireq = set(items.get("required") or [])
        for name, child in items["properties"].items():
            yield from _rows(child, f"{path}[].{name}", name in ireq)


def render() -> str:
    out = [
        "# EdgeFill API reference (edgefill.io/v1alpha1)",
        "",
        "Generated from `crds/` by `python -m edgefill_devenv.crd_docs --write`; "
        "do not edit by hand. The CRDs are the single source: every description, "
        "default, bound and validation rule below is enforced by the API server.",
        "",
    ]
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        names = crd["spec"]["names"]
        (version,) = crd["spec"]["versions"]
        schema = version["schema"]["openAPIV3Schema"]
        out += [
            f"## {names['kind']}",
            "",
            _cell(schema.get("description", "")),
            "",
            f"- Resource: `{names['plural']}.{crd['spec']['group']}`, namespaced, "
            f"short name{'s' if len(names.get('shortNames', [])) > 1 else ''} "
            + ", ".join(f"`{s}`" for s in names.get("shortNames", []))
            + f", category `{', '.join(names.get('categories', []))}`",
            "- Subresources: "
            + ", ".join(f"`{s}`" for s in version.get("subresources", {}))
            + (
                f" (`kubectl scale` sets `{version['subresources']['scale']['specReplicasPath']}`)"
                if "scale" in version.get("subresources", {})
                else ""
            ),
            "- `kubectl get` columns: "
            + ", ".join(f"{c['name']}" for c in version.get("additionalPrinterColumns", [])),
            "",
        ]
        object_rules = schema.get("x-kubernetes-validations") or []
        if object_rules:
            out.append("Object-level rules:")
            out += [f"- {_cell(r['message'])}" for r in object_rules]
            out.append("")
        for part in ("spec", "status"):
            node = schema["properties"][part]
            out += [
                f"### {names['kind']} `{part}`",
                "",
                "| Field | Type | Required | Default | Description | Validation |",
                "|---|---|---|---|---|---|",
                *_rows(node, part, part in (schema.get("required") or [])),
                "",
            ]
    policy, _binding = yaml.safe_load_all(POLICY.read_text())
    out += [
        "## Admission policy: copies not above replicas",
        "",
        "`crds/contentset-copies.admission-policy.yaml` installs a "
        "ValidatingAdmissionPolicy (and its binding) that evaluates every "
        "ContentSet create or update against each EdgeSite of its namespace "
        "and denies it when it selects a site with fewer replicas than its "
        "`copies`. Message on denial, for example:",
        "",
        "> copies (3) is above the replicas (2) of EdgeSite beta-west, which this "
        "ContentSet selects; lower copies or scale that site up",
        "",
        "A site scaled down later is not blocked: the operator caps copies at "
        "the site's replicas and sets `Degraded=True` (reason "
        "`CopiesAboveReplicas`) on the ContentSet.",
        f"Policy name: `{policy['metadata']['name']}`.",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {OUTPUT}")
    group.add_argument("--check", action="store_true", help="fail if the page is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(text)
        return 0
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(
                f"{OUTPUT} is stale: run python -m edgefill_devenv.crd_docs --write",
                file=sys.stderr,
            )
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
