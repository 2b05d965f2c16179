"""Fixtures for the chart tests: real helm, real linters, a private local cluster.

``tools`` builds helm, actionlint and hadolint with ``devenv/build-tools.sh``
(cached by version, so only the first run pays). If the build fails the tests
fail with the build's own error: a chart test that skips because helm is
missing would hide exactly what CI is there to catch.

``chart_cluster`` is a local cluster of its own (real API server, kwok nodes)
under a temporary ``EDGEFILL_STATE``, not the session's shared ``k8s_cluster``:
these tests install and delete cluster-scoped CRDs, which would wipe every
EdgeSite other tests hold on a shared cluster. It never uses
``EDGEFILL_KUBECONFIG`` for the same reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefill_devenv.cluster import Cluster, binaries
from edgefill_devenv.topology import load_kind_config

from .support import BUILD_TIMEOUT_SECONDS, BUILD_TOOLS, REPO_ROOT, Helm, Tools


@pytest.fixture(scope="session")
def tools() -> Tools:
    proc = subprocess.run(
        ["bash", str(BUILD_TOOLS)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"devenv/build-tools.sh failed with exit {proc.returncode}; the chart tests need "
            f"helm, actionlint and hadolint and skip nothing:\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    helm_dir, actionlint_dir, hadolint_dir = (Path(p) for p in proc.stdout.split()[-3:])
    return Tools(
        helm=helm_dir / "helm",
        actionlint=actionlint_dir / "actionlint",
        hadolint=hadolint_dir / "hadolint",
    )


@pytest.fixture(scope="session")
def helm(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tools.helm, tmp_path_factory.mktemp("helm-home"))


# --- a private local cluster -------------------------------------------------


def _cluster_cli(state: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefill_devenv.cluster", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "EDGEFILL_STATE": str(state)},
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def chart_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("chart-cluster-state")
    up = _cluster_cli(state, "up", timeout=900)
    if up.returncode != 0:
        _cluster_cli(state, "down", timeout=120)
        pytest.fail(f"the private local cluster did not start:\n{up.stderr[-6000:]}", pytrace=False)
    try:
        cluster = Cluster(
            kubeconfig=state / "cluster" / "kubeconfig",
            kubectl_path=str(binaries()["kubectl"]),
            local=True,
            nodes=load_kind_config(REPO_ROOT / "kind-config.yaml"),
        )
        yield cluster
    finally:
        _cluster_cli(state, "down", timeout=120)
