"""Helpers shared by the chart tests: real helm runner, manifest lookups, polling."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefill_devenv.cluster import Cluster
from edgefill_devenv.topology import load_kind_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "edgefill"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
BUILD_TOOLS = REPO_ROOT / "devenv" / "build-tools.sh"
BUILD_TIMEOUT_SECONDS = 3600

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Tools:
    helm: Path
    actionlint: Path
    hadolint: Path


@dataclass(frozen=True)
class Helm:
    """Runs the real helm binary with a private HOME so no user config leaks in."""

    binary: Path
    home: Path

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        return env

    def run(
        self, *args: str, kubeconfig: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env(kubeconfig),
            timeout=timeout,
            check=False,
        )

    def template(
        self,
        *,
        values: Sequence[Path] = (),
        sets: Sequence[str] = (),
        namespace: str = "edgefill-system",
        release: str = "edgefill",
        include_crds: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", release, str(CHART), "--namespace", namespace]
        if include_crds:
            args.append("--include-crds")
        for v in values:
            args += ["--values", str(v)]
        for s in sets:
            args += ["--set", s]
        return self.run(*args)

    def render(self, **kwargs: Any) -> list[Manifest]:
        proc = self.template(**kwargs)
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.load_all(proc.stdout, Loader=StrictLoader) if d]


class DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate mapping keys.

    PyYAML keeps the last of two equal keys silently; the API server's strict
    field validation rejects them, so the tests must see them.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
        if dupes:
            raise DuplicateKeyError(None, None, f"duplicate keys {dupes}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def by_kind(docs: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Sequence[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --- a private local cluster -------------------------------------------------


def core_node() -> str:
    """The node kind-config.yaml labels edgefill.io/role=core (where the operator runs)."""
    cores = [
        n.name
        for n in load_kind_config(REPO_ROOT / "kind-config.yaml")
        if n.labels.get("edgefill.io/role") == "core"
    ]
    assert len(cores) == 1, cores
    return cores[0]


def wait_for(what: str, check: Any, timeout: float = 120.0, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def get_json(cluster: Cluster, *args: str) -> Any:
    proc = cluster.kubectl("get", *args, "-o", "json", check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)
