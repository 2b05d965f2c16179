"""Rewrite examples/ for the kind e2e run (used by kind-e2e.sh).

The examples name the development S3 origin on loopback and a nightly fill
window. In kind the origin is a cluster Service, and the run must not depend
on the clock, so every EdgeSite gets the in-cluster endpoint and
fill.allowOutsideWindow=true. Everything else is applied as written.

    python3 .github/scripts/kind_examples.py ENDPOINT OUT.yaml examples/*.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


def rewrite(docs: list[dict[str, Any]], endpoint: str) -> list[dict[str, Any]]:
    out = []
    for doc in docs:
        if doc.get("kind") == "EdgeSite":
            spec = doc["spec"]
            spec["origin"]["endpoint"] = endpoint
            spec.setdefault("fill", {})["allowOutsideWindow"] = True
        out.append(doc)
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    endpoint, out, *paths = argv
    docs = [d for p in sorted(paths) for d in yaml.safe_load_all(Path(p).read_text()) if d]
    Path(out).write_text(yaml.safe_dump_all(rewrite(docs, endpoint), sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
