"""Session fixtures shared by every tier.

* ``s3_server``: a real S3 HTTP server (moto in server mode) on loopback.
* ``k8s_cluster``: a Kubernetes cluster to test against. When
  ``EDGEFILL_KUBECONFIG`` names a kubeconfig (a kind cluster in users' CI)
  the tests use that cluster; otherwise the local cluster (real
  kube-apiserver, controller-manager, scheduler and etcd plus kwok nodes) is
  started, or reused when ``make cluster-up`` already runs it.

Tiers are markers (unit, integration, e2e, browser); a test without a tier
marker is a unit test. ``-m`` selects as usual.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefill_devenv.cluster import Cluster, external_cluster, local_cluster
from edgefill_devenv.s3 import S3Server

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tiers = {"unit", "integration", "e2e", "browser"}
    for item in items:
        if not tiers & {m.name for m in item.iter_markers()}:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    with S3Server(log_path=log) as server:
        yield server


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[Cluster]:
    given = os.environ.get("EDGEFILL_KUBECONFIG")
    if given:
        yield external_cluster(Path(given))
        return
    with local_cluster() as cluster:
        yield cluster
