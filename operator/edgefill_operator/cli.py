"""``edgefill``: the command line for people who run EdgeFill.

``edgefill manifest`` lists S3 prefixes and publishes a ContentSet manifest.
``edgefill status`` shows every EdgeSite and ContentSet with their Ready
condition and fill progress bars, read from the cluster (kubeconfig like
kubectl, or in-cluster). Fill numbers are what the nodes reported through the
operator; where nothing was reported yet the bar says so instead of showing
zero.

The table building is a pure function of the objects (tested without a
cluster); only :func:`main` talks to the API, through :mod:`kube`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from edgefill_operator import names

Obj = Mapping[str, Any]


def _condition(obj: Obj, type_: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def _ready_text(obj: Obj) -> Text:
    c = _condition(obj, "Ready")
    if c is None:
        return Text("Unknown", style="yellow")
    style = {"True": "green", "False": "red"}.get(str(c.get("status")), "yellow")
    return Text(f"{c.get('status')} ({c.get('reason', '')})", style=style)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


def fill_cell(fill: Mapping[str, Any] | None) -> RenderableType:
    """A progress bar with figures, or a note that nodes have not reported."""
    if not fill or "bytesTotal" not in fill:
        return Text("no reports yet", style="dim")
    total = int(fill.get("bytesTotal") or 0)
    done = int(fill.get("bytesDone") or 0)
    bar = ProgressBar(total=max(total, 1), completed=min(done, total) if total else 1, width=24)
    label = Text(
        f" {fill.get('percent', '?')}  {human_bytes(done)}/{human_bytes(total)}", style="bold"
    )
    grid = Table.grid()
    grid.add_row(bar, label)
    return grid


def sites_table(sites: Sequence[Obj]) -> Table:
    table = Table(title="EdgeSites", title_justify="left", expand=False)
    for column in ("Namespace", "Name", "Ready", "Nodes", "Fill", "Cached", "Offload"):
        table.add_column(column)
    for s in sorted(sites, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])):
        status = s.get("status") or {}
        spec = s.get("spec") or {}
        traffic = status.get("traffic") or {}
        table.add_row(
            s["metadata"]["namespace"],
            s["metadata"]["name"],
            _ready_text(s),
            f"{status.get('readyReplicas', 0)}/{spec.get('replicas', '?')}",
            fill_cell(status.get("fill")),
            human_bytes(int(status["bytesCached"])) if "bytesCached" in status else "-",
            str(traffic.get("offloadPercent", "-")),
        )
    return table


def contentsets_table(contentsets: Sequence[Obj]) -> Table:
    table = Table(title="ContentSets", title_justify="left", expand=False)
    for column in ("Namespace", "Name", "Ready", "Copies", "Sites", "Fill", "Degraded"):
        table.add_column(column)
    for cs in sorted(
        contentsets, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])
    ):
        status = cs.get("status") or {}
        degraded = _condition(cs, "Degraded")
        per_site = ", ".join(
            f"{row['name']} {row.get('percent', '-')}" for row in status.get("sites") or []
        )
        table.add_row(
            cs["metadata"]["namespace"],
            cs["metadata"]["name"],
            _ready_text(cs),
            str((cs.get("spec") or {}).get("copies", 1)),
            per_site or "none selected",
            fill_cell(status.get("fill")),
            Text(str(degraded.get("reason")), style="red")
            if degraded and degraded.get("status") == "True"
            else Text("-"),
        )
    return table


def render_status(sites: Sequence[Obj], contentsets: Sequence[Obj]) -> Group:
    return Group(sites_table(sites), Text(""), contentsets_table(contentsets))


def _status(args: argparse.Namespace, console: Console) -> int:
    from edgefill_operator.kube import Kube, KubeError

    namespace = None if args.all_namespaces else args.namespace
    try:
        api = Kube.from_environment()
        sites = api.list(names.API_VERSION, "EdgeSite", namespace)
        contentsets = api.list(names.API_VERSION, "ContentSet", namespace)
    except KubeError as exc:
        console.print(f"[red]error:[/red] the API server refused: {exc}")
        return 1
    except Exception as exc:
        console.print(f"[red]error:[/red] cannot reach the cluster: {exc}")
        return 1
    console.print(render_status(sites, contentsets))
    return 0


def _manifest(args: argparse.Namespace, console: Console) -> int:
    import asyncio
    from pathlib import Path

    from botocore.exceptions import BotoCoreError, ClientError

    from edgefill_operator import manifest

    fmt: manifest.Format = "csv" if args.key.endswith(".csv") else "jsonl"
    popularity: list[str] = []
    if args.popularity:
        popularity = [
            line.strip() for line in Path(args.popularity).read_text().splitlines() if line.strip()
        ]
    s3 = {"endpoint_url": args.endpoint_url, "region": args.region}
    try:
        listing = asyncio.run(manifest.list_prefixes(args.bucket, args.prefix, **s3))
        if not listing:
            console.print(f"[red]error:[/red] no objects under {', '.join(args.prefix)}")
            return 1
        body = manifest.build(listing, popularity, fmt)
        asyncio.run(manifest.publish(args.bucket, args.key, body, **s3))
    except (BotoCoreError, ClientError) as exc:
        console.print(f"[red]error:[/red] S3 refused: {exc}")
        return 1
    console.print(
        f"published s3://{args.bucket}/{args.key}: {len(listing)} objects, "
        f"{human_bytes(sum(size for _, size in listing))}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefill", description="EdgeFill: Kubernetes-native edge cache with peer assist."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser(
        "status", help="show EdgeSites and ContentSets with fill progress, read from the cluster"
    )
    scope = status.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", default="default", help="namespace (default: default)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    man = sub.add_parser(
        "manifest",
        help="list S3 prefixes and publish a ContentSet manifest (key, size, rank) to the bucket",
    )
    man.add_argument("--bucket", required=True, help="bucket holding the objects")
    man.add_argument(
        "--prefix", action="append", required=True, help="key prefix to list (repeatable)"
    )
    man.add_argument("--key", required=True, help="manifest object key (.jsonl or .csv)")
    man.add_argument("--popularity", help="file with one key per line, most popular first")
    man.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS)")
    man.add_argument("--region", default="us-east-1", help="S3 region (default: us-east-1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if args.command == "status":
        return _status(args, console)
    if args.command == "manifest":
        if not args.key.endswith((".jsonl", ".json", ".csv")):
            console.print("[red]error:[/red] --key must end in .jsonl, .json or .csv")
            return 2
        return _manifest(args, console)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
