"""``edgefill status`` rendering (pure) and its command line."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from rich.console import Console

from edgefill_operator.cli import build_parser, human_bytes, render_status


def _text(sites: list[Any], sets: list[Any]) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(render_status(sites, sets))
    return console.export_text()


def test_status_shows_progress_only_from_reports(edge_example: Any) -> None:
    alpha = edge_example("EdgeSite", "alpha-east")
    beta = edge_example("EdgeSite", "beta-west")
    alpha["status"] = {
        "readyReplicas": 2,
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllNodesReady"}],
        "fill": {"percent": "50%", "bytesDone": 1024**3, "bytesTotal": 2 * 1024**3},
        "bytesCached": 3 * 1024**3,
        "traffic": {"offloadPercent": "97.5%"},
    }
    popular = edge_example("ContentSet", "popular-titles")
    popular["status"] = {
        "sites": [{"name": "alpha-east", "percent": "50%"}, {"name": "beta-west"}],
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Planned"},
            {"type": "Degraded", "status": "True", "reason": "CopiesAboveReplicas"},
        ],
    }
    text = _text([beta, alpha], [popular])
    lines = text.splitlines()
    alpha_line = next(line for line in lines if "alpha-east" in line and "True" in line)
    beta_line = next(line for line in lines if "beta-west" in line and "Unknown" in line)
    assert "50%  1.0 GiB/2.0 GiB" in alpha_line
    assert "3.0 GiB" in alpha_line
    assert "97.5%" in alpha_line
    assert "2/2" in alpha_line
    assert "no reports yet" in beta_line
    assert "0/2" in beta_line
    cs_line = next(line for line in lines if "popular-titles" in line)
    assert "alpha-east 50%, beta-west -" in cs_line
    assert "CopiesAboveReplicas" in cs_line
    assert "no reports yet" in cs_line
    # Sites sorted by namespace/name.
    assert text.index("alpha-east") < text.index("beta-west")


def test_human_bytes() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 1024**4) == "5.0 TiB"


def test_parser() -> None:
    args = build_parser().parse_args(["status", "-A"])
    assert args.all_namespaces is True
    args = build_parser().parse_args(["status", "-n", "edge"])
    assert args.namespace == "edge"


@pytest.mark.integration
def test_unreachable_cluster_is_a_clear_error(tmp_path: Any) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n"
        "    server: https://127.0.0.1:1\ncontexts:\n- name: c\n  context:\n    cluster: c\n"
        "    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "edgefill_operator.cli", "status"],
        capture_output=True,
        text=True,
        env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert out.returncode == 1
    assert "error: cannot reach the cluster" in out.stdout


def test_manifest_build_orders_ranked_keys_first() -> None:
    from edgefill_operator.manifest import build

    listing = [("b", 2), ("a", 1), ("c", 3)]
    assert build(listing, ["c", "a", "c"]).decode().splitlines() == [
        '{"key":"c","size":3,"rank":1}',
        '{"key":"a","size":1,"rank":2}',
        '{"key":"b","size":2}',
    ]
    assert build(listing, ["b"], "csv").decode().splitlines() == [
        "key,size,rank",
        "b,2,1",
        "a,1,",
        "c,3,",
    ]


@pytest.mark.integration
def test_manifest_command_publishes_to_s3(s3_server: Any, tmp_path: Any) -> None:
    import json

    import boto3

    from edgefill_devenv.catalogue import generate, seed_bucket

    entries = generate(12, prefix="mf")
    seed_bucket(s3_server.endpoint_url, "manifests", entries)
    popular = tmp_path / "popular.txt"
    popular.write_text(entries[5].key + "\n" + entries[2].key + "\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefill_operator.cli",
            "manifest",
            "--endpoint-url",
            s3_server.endpoint_url,
            "--bucket",
            "manifests",
            "--prefix",
            "mf/",
            "--key",
            "lists/all.jsonl",
            "--popularity",
            str(popular),
        ],
        capture_output=True,
        text=True,
        env=s3_server.env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "12 objects" in out.stdout
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="edgefill-test",
        aws_secret_access_key="edgefill-test-secret",
    )
    body = s3.get_object(Bucket="manifests", Key="lists/all.jsonl")["Body"].read()
    rows = [json.loads(line) for line in body.decode().splitlines()]
    assert [r["key"] for r in rows[:2]] == [entries[5].key, entries[2].key]
    assert [r.get("rank") for r in rows[:3]] == [1, 2, None]
    assert {(r["key"], r["size"]) for r in rows} == {(e.key, e.size) for e in entries}
