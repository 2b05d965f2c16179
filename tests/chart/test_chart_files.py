"""The chart's own files, checked without helm: schema, comments, CRD copies, dashboard.

These are the checks a reviewer would do by eye on every change to the
chart; as unit tests they cannot be forgotten.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from .support import DuplicateKeyError, StrictLoader

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "edgefill"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
ALL_ON = yaml.safe_load((CHART / "ci" / "all-on-values.yaml").read_text())


def _object_schemas(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, child in node.items():
            yield from _object_schemas(child, f"{path}.{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _object_schemas(child, f"{path}[{i}]")


def test_schema_is_closed_everywhere() -> None:
    """Every object either lists its keys (additionalProperties false) or types its map values."""
    open_objects = [
        path
        for path, schema in _object_schemas(SCHEMA)
        if not (
            schema.get("additionalProperties") is False
            or (isinstance(schema.get("additionalProperties"), dict) and "properties" not in schema)
        )
    ]
    assert open_objects == []
    assert SCHEMA["additionalProperties"] is False


KUBERNETES_OBJECTS = {
    "$.resources",
    "$.podSecurityContext",
    "$.podSecurityContext.seccompProfile",
    "$.securityContext",
    "$.securityContext.capabilities",
    "$.affinity",
}


def test_schema_and_values_describe_the_same_keys() -> None:
    """values.yaml sets every top-level key the schema knows, and the schema knows all of them."""
    assert set(VALUES) == set(SCHEMA["properties"])

    def walk(values: dict[str, Any], schema: dict[str, Any], path: str) -> None:
        props = schema.get("properties")
        if props is None:
            return
        if path in KUBERNETES_OBJECTS:
            # Kubernetes' own types: the defaults set some of their fields.
            assert set(values) <= set(props), path
        else:
            assert set(values) == set(props), path
        for key, value in values.items():
            if isinstance(value, dict) and "properties" in props[key]:
                walk(value, props[key], f"{path}.{key}")

    walk(VALUES, SCHEMA, "$")


@pytest.mark.parametrize("values", [VALUES, ALL_ON], ids=["defaults", "all-on"])
def test_values_files_validate(values: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(values)


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"crds": {"kepp": True}}, "'kepp' was unexpected"),
        ({"crds": {"keep": "yes"}}, "is not of type 'boolean'"),
        ({"operator": {"peering": {"priority": 666}}}, "maximum of 665"),
        ({"image": {"pullPolicy": "Sometimes"}}, "is not one of"),
        ({"networkPolicy": {"apiServerPorts": [70000]}}, "maximum of 65535"),
        ({"prometheus": {"podMonitor": {"interval": "soon"}}}, "does not match"),
    ],
)
def test_schema_rejects_bad_values(patch: dict[str, Any], fragment: str) -> None:
    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if isinstance(v, dict) and k in base else v
        return out

    errors = list(jsonschema.Draft7Validator(SCHEMA).iter_errors(merge(VALUES, patch)))
    assert errors, patch
    assert any(fragment in e.message for e in errors), [e.message for e in errors]


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?:\s|$)")


def test_every_value_is_commented() -> None:
    """Each key has a comment right above it, unless it sits inside a documented leaf value.

    A comment starting with ``# --`` documents a parameter whose value may be an
    object (``resources``, ``podSecurityContext``); keys inside it are the
    Kubernetes object's own fields. A comment without ``--`` introduces a section,
    whose keys each need their own comment.
    """
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, is a documented leaf)
    missing = []
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        if not m:
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        comment: list[str] = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.insert(0, lines[j].strip())
            j -= 1
        inside_leaf = any(leaf for _, leaf in stack)
        if not comment and not inside_leaf:
            missing.append(f"line {i + 1}: {m['key']}")
        stack.append((indent, inside_leaf or any(c.startswith("# --") for c in comment)))
    assert missing == []


def test_chart_crds_are_verbatim_copies_of_crds() -> None:
    source = sorted(p.name for p in (REPO_ROOT / "crds").glob("*.yaml"))
    copies = sorted(p.name for p in (CHART / "files" / "crds").glob("*.yaml"))
    assert copies == source, "run charts/edgefill/sync-crds.sh"
    for name in source:
        assert (CHART / "files" / "crds" / name).read_bytes() == (
            REPO_ROOT / "crds" / name
        ).read_bytes(), f"{name} drifted: run charts/edgefill/sync-crds.sh"


def test_sync_script_check_mode_reports_drift(tmp_path: Path) -> None:
    """The --check mode the lead can put in CI fails on a drifted copy and names the file."""
    chart = tmp_path / "charts" / "edgefill"
    (chart / "files" / "crds").mkdir(parents=True)
    (tmp_path / "crds").mkdir()
    script = chart / "sync-crds.sh"
    script.write_bytes((CHART / "sync-crds.sh").read_bytes())
    (tmp_path / "crds" / "a.yaml").write_text("kind: A\n")
    (chart / "files" / "crds" / "a.yaml").write_text("kind: Old\n")
    (chart / "files" / "crds" / "gone.yaml").write_text("kind: Gone\n")
    check = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True)
    assert check.returncode == 1
    assert "crds/a.yaml" in check.stderr
    assert "gone.yaml" in check.stderr
    subprocess.run(["bash", str(script)], check=True)
    assert (chart / "files" / "crds" / "a.yaml").read_text() == "kind: A\n"
    assert not (chart / "files" / "crds" / "gone.yaml").exists()
    assert subprocess.run(["bash", str(script), "--check"]).returncode == 0


_SUFFIXES = {
    "Counter": ("_total",),
    "CounterMetricFamily": ("_total",),
    "Gauge": ("",),
    "GaugeMetricFamily": ("",),
    "Histogram": ("_bucket", "_sum", "_count"),
}


def _exported_series() -> set[str]:
    """Sample names the cache node declares (Counter, Gauge, Histogram and their families).

    Read from the source rather than a running node: several collectors are
    created only inside a running node (pre-positioning, tracker), and the
    declaration is what a scrape shows, with the type's own suffixes.
    """
    names: set[str] = set()
    for path in (REPO_ROOT / "cache_node").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            first = node.args[0]
            if (
                kind in _SUFFIXES
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                names |= {f"{first.value}{suffix}" for suffix in _SUFFIXES[kind]}
    return names


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((CHART / "files" / "dashboards" / "edgefill.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bedgefill_[a-z_]+\b", e)}
    assert used, "the dashboard queries nothing"
    exported = _exported_series()
    assert {"edgefill_requests_total", "edgefill_fill_plan_bytes"} <= exported
    assert used <= exported
    # Every series is grouped or filtered by the site label the PodMonitor adds.
    assert all('site=~"$site"' in e for e in exprs)


def test_dashboard_covers_what_operators_watch() -> None:
    dashboard = json.loads((CHART / "files" / "dashboards" / "edgefill.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("hit ratio by source", "offload", "fill progress", "origin", "peer efficiency"):
        assert topic in titles
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "site"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_strict_loader_refuses_duplicate_keys() -> None:
    """The loader the helm tests parse renders with: a duplicated label must not slip by."""
    assert list(yaml.load_all("a: {b: 1, c: [x, {d: 2}]}", Loader=StrictLoader)) == [
        {"a": {"b": 1, "c": ["x", {"d": 2}]}}
    ]
    with pytest.raises(DuplicateKeyError, match="duplicate keys"):
        list(yaml.load_all("labels: {app: x, app: y}", Loader=StrictLoader))
