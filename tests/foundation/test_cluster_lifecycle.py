"""`make cluster-up` / `make cluster-down` as a user runs them, on a separate state dir.

A second local cluster (own ports, own state) is started through the CLI,
then stopped: every process it started must be gone afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_cluster_up_then_down_leaves_no_process(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEFILL_STATE": str(tmp_path / "state")}
    cli = [sys.executable, "-m", "edgefill_devenv.cluster"]
    up = subprocess.run([*cli, "up"], env=env, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    assert "export KUBECONFIG=" in up.stdout
    state = json.loads((tmp_path / "state" / "cluster" / "state.json").read_text())
    pids = state["pids"]
    assert set(pids) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    }
    try:
        assert all(_alive(pid) for pid in pids.values())
        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True)
        assert status.stdout.strip() == "running"
        # A second `up` reuses the running cluster instead of starting another.
        again = subprocess.run([*cli, "up"], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0
        assert "reusing" in again.stderr
        assert json.loads((tmp_path / "state" / "cluster" / "state.json").read_text()) == state
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert not [name for name, pid in pids.items() if _alive(pid)]
    assert not (tmp_path / "state" / "cluster").exists()
    status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True)
    assert status.returncode == 1
