"""The local Kubernetes cluster: real control plane, simulated nodes, no Docker.

kind needs a Docker engine, which our machines do not have. This module runs
the same Kubernetes components as processes on loopback instead:

* etcd, built from ``go.etcd.io/etcd/server/v3``;
* kube-apiserver, kube-controller-manager and kube-scheduler, built from the
  ``k8s.io/kubernetes`` Go module (``devenv/build-cluster-bins.sh`` builds them
  once and caches them by version);
* kwok, which plays the kubelet: it keeps the nodes from ``kind-config.yaml``
  Ready and moves scheduled pods to Running with an IP out of the node's pod
  CIDR. Pod CIDRs are loopback /24s, so a process can stand in for a pod by
  listening on the pod's own IP.

Authentication is real TLS with client certificates (``pki``); authorization
is Node + RBAC, so least-privilege RBAC in the chart is actually exercised.

``python -m edgefill_devenv.cluster up`` starts it in the background (``make
cluster-up``), ``down`` stops exactly the processes it started, by PID, and
removes its state. ``local_cluster()`` is the context manager the test
fixtures use: it reuses a running cluster and only tears down one it started.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgefill_devenv import pki
from edgefill_devenv.paths import REPO_ROOT, state_dir
from edgefill_devenv.s3 import free_port
from edgefill_devenv.topology import NodeSpec, load_kind_config, node_manifest

HOST = "127.0.0.1"
POD_CIDR_BASE = "127.100.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"  # virtual ClusterIPs: allocated, never routed or contacted
BUILD_SCRIPT = REPO_ROOT / "devenv" / "build-cluster-bins.sh"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


@dataclass
class Cluster:
    """A cluster to test against: the local one or a given one (kind)."""

    kubeconfig: Path
    kubectl_path: str
    local: bool
    pids: dict[str, int] = field(default_factory=dict)
    nodes: list[NodeSpec] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def wait_established(self, *crds: str, timeout: float = 60.0) -> None:
        """Wait until each CRD reports Established=True.

        Polls the condition instead of ``kubectl wait``, which fails at once
        (``.status.conditions accessor error``) when it reads a CRD whose
        status has no conditions yet, right after the apply.
        """
        deadline = time.monotonic() + timeout
        for crd in crds:
            while True:
                proc = self.kubectl(
                    "get",
                    f"crd/{crd}",
                    "-o",
                    'jsonpath={.status.conditions[?(@.type=="Established")].status}',
                    check=False,
                )
                if proc.returncode == 0 and proc.stdout.strip() == "True":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"CRD {crd} not Established after {timeout}s")
                time.sleep(0.2)


# --- binaries ----------------------------------------------------------------


def binaries() -> dict[str, Path]:
    """Build (once) and locate the component binaries."""
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True
    ).stdout.split()
    k8s, etcd, kwok = (Path(p) for p in out[-3:])
    return {
        "etcd": etcd / "etcd",
        "kube-apiserver": k8s / "kube-apiserver",
        "kube-controller-manager": k8s / "kube-controller-manager",
        "kube-scheduler": k8s / "kube-scheduler",
        "kubectl": k8s / "kubectl",
        "kwok": kwok / "kwok",
    }


# --- kubeconfig ----------------------------------------------------------------


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca: Path, client: pki.KeyPair) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "edgefill-local",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca)},
            }
        ],
        "users": [
            {
                "name": "edgefill-local",
                "user": {
                    "client-certificate-data": _b64(client.cert),
                    "client-key-data": _b64(client.key),
                },
            }
        ],
        "contexts": [
            {
                "name": "edgefill-local",
                "context": {
                    "cluster": "edgefill-local",
                    "user": "edgefill-local",
                    "namespace": "default",
                },
            }
        ],
        "current-context": "edgefill-local",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


# --- the local cluster -----------------------------------------------------------


@dataclass
class _Layout:
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def lock(self) -> Path:
        return self.root.parent / "cluster.lock"


def _layout() -> _Layout:
    return _Layout(state_dir() / "cluster")


def _ssl_context(layout: _Layout) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))
    ctx.load_cert_chain(str(layout.pki / "admin.crt"), str(layout.pki / "admin.key"))
    return ctx


def _api_ok(server: str, layout: _Layout, path: str = "/readyz") -> bool:
    try:
        with urllib.request.urlopen(  # noqa: S310 - https to our own loopback server
            server + path, timeout=3, context=_ssl_context(layout)
        ) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited child not reaped yet) counts as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


# Children this process started, kept so they are reaped here (no zombies, and no
# "subprocess is still running" ResourceWarning when a Popen is collected while
# the cluster keeps running for a later test or for `make cluster-down`).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _start(name: str, argv: list[str], layout: _Layout) -> int:
    layout.logs.mkdir(parents=True, exist_ok=True)
    with (layout.logs / f"{name}.log").open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stopped as a unit, by our PID
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _stop_pids(pids: dict[str, int], timeout: float = 15.0) -> None:
    # Reverse start order: kwok and controllers first, etcd last.
    for name in reversed(list(pids)):
        pid = pids[name]
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids.values():
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)


def _read_state(layout: _Layout) -> dict[str, Any] | None:
    if not layout.state.exists():
        return None
    data: dict[str, Any] = json.loads(layout.state.read_text())
    return data


def _running(layout: _Layout) -> Cluster | None:
    state = _read_state(layout)
    if state is None:
        return None
    pids: dict[str, int] = state["pids"]
    if not all(_alive(pid) for pid in pids.values()):
        return None
    if not _api_ok(state["server"], layout):
        return None
    return Cluster(
        kubeconfig=layout.kubeconfig,
        kubectl_path=state["kubectl"],
        local=True,
        pids=pids,
        nodes=load_kind_config(REPO_ROOT / "kind-config.yaml", POD_CIDR_BASE),
    )


def _wait(what: str, check: Any, timeout: float, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"local cluster: {what} not ready after {timeout:.0f}s")


def _component_kubeconfigs(layout: _Layout, server: str, ca: pki.KeyPair) -> dict[str, Path]:
    identities = {
        "admin": ("kubernetes-admin", "system:masters"),
        "controller-manager": ("system:kube-controller-manager", None),
        "scheduler": ("system:kube-scheduler", None),
        # kwok plays every kubelet (node status, leases, pod status): it gets
        # the admin group rather than one node identity per simulated node.
        "kwok": ("kwok-controller", "system:masters"),
    }
    out: dict[str, Path] = {}
    for stem, (cn, org) in identities.items():
        pair = pki.issue(ca, layout.pki, stem, cn=cn, org=org)
        out[stem] = write_kubeconfig(layout.root / f"{stem}.kubeconfig", server, ca.cert, pair)
    shutil.copyfile(out["admin"], layout.kubeconfig)
    layout.kubeconfig.chmod(0o600)
    return out


def _clean(layout: _Layout) -> None:
    state = _read_state(layout)
    if state is not None:
        _stop_pids(state["pids"])
    if layout.root.exists():
        shutil.rmtree(layout.root)


def up(timeout: float = 180.0) -> Cluster:
    """Start the local cluster, or return the one already running."""
    layout = _layout()
    layout.root.parent.mkdir(parents=True, exist_ok=True)
    with layout.lock.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running = _running(layout)
        if running is not None:
            log(f"reusing the running cluster ({layout.kubeconfig})")
            return running
        _clean(layout)
        return _start_cluster(layout, timeout)


def _start_cluster(layout: _Layout, timeout: float) -> Cluster:
    started = time.monotonic()
    bins = binaries()
    layout.pki.mkdir(parents=True)
    ports = {name: free_port(HOST) for name in ("etcd", "etcd-peer", "api", "kcm", "sched", "kwok")}
    server = f"https://{HOST}:{ports['api']}"

    ca = pki.make_ca(layout.pki)
    serving = pki.issue(
        ca,
        layout.pki,
        "apiserver",
        cn="kube-apiserver",
        server_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
        server_ips=(HOST, "10.96.0.1"),
    )
    sa = pki.service_account_keys(layout.pki)
    kubeconfigs = _component_kubeconfigs(layout, server, ca)
    pids: dict[str, int] = {}

    def record() -> None:
        layout.state.write_text(
            json.dumps({"pids": pids, "server": server, "kubectl": str(bins["kubectl"])})
        )

    try:
        etcd_url = f"http://{HOST}:{ports['etcd']}"
        peer_url = f"http://{HOST}:{ports['etcd-peer']}"
        pids["etcd"] = _start(
            "etcd",
            [
                str(bins["etcd"]),
                "--name=local",
                f"--data-dir={layout.root / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=local={peer_url}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
            layout,
        )
        record()
        pids["kube-apiserver"] = _start(
            "kube-apiserver",
            [
                str(bins["kube-apiserver"]),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={HOST}",
                f"--advertise-address={HOST}",
                f"--secure-port={ports['api']}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=0",
            ],
            layout,
        )
        record()
        _wait("kube-apiserver", lambda: _api_ok(server, layout), timeout)
        common = [
            f"--bind-address={HOST}",
            "--leader-elect=false",
            "--profiling=false",
        ]
        pids["kube-controller-manager"] = _start(
            "kube-controller-manager",
            [
                str(bins["kube-controller-manager"]),
                *common,
                f"--kubeconfig={kubeconfigs['controller-manager']}",
                f"--authentication-kubeconfig={kubeconfigs['controller-manager']}",
                f"--authorization-kubeconfig={kubeconfigs['controller-manager']}",
                f"--secure-port={ports['kcm']}",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={ca.cert}",
                f"--cluster-signing-cert-file={ca.cert}",
                f"--cluster-signing-key-file={ca.key}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
            ],
            layout,
        )
        record()
        pids["kube-scheduler"] = _start(
            "kube-scheduler",
            [
                str(bins["kube-scheduler"]),
                *common,
                f"--kubeconfig={kubeconfigs['scheduler']}",
                f"--authentication-kubeconfig={kubeconfigs['scheduler']}",
                f"--authorization-kubeconfig={kubeconfigs['scheduler']}",
                f"--secure-port={ports['sched']}",
            ],
            layout,
        )
        record()
        pids["kwok"] = _start(
            "kwok",
            [
                str(bins["kwok"]),
                f"--kubeconfig={kubeconfigs['kwok']}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--node-ip={HOST}",
                f"--node-port={ports['kwok']}",
                f"--server-address={HOST}:{ports['kwok']}",
                "--cidr=127.100.255.0/24",
                "--node-lease-duration-seconds=40",
            ],
            layout,
        )
        record()

        cluster = Cluster(
            kubeconfig=layout.kubeconfig,
            kubectl_path=str(bins["kubectl"]),
            local=True,
            pids=pids,
            nodes=load_kind_config(REPO_ROOT / "kind-config.yaml", POD_CIDR_BASE),
        )
        manifests = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [node_manifest(n, node_ip=HOST) for n in cluster.nodes],
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifests))
        wait_ready(cluster, timeout)
    except BaseException:
        _stop_pids(pids)
        raise
    log(f"ready in {time.monotonic() - started:.1f}s: {len(cluster.nodes)} nodes")
    return cluster


def wait_ready(cluster: Cluster, timeout: float) -> None:
    """Nodes Ready and the default ServiceAccount present (pods are admitted only then)."""

    def nodes_ready() -> bool:
        out = cluster.kubectl("get", "nodes", "-o", "json", check=False)
        if out.returncode != 0:
            return False
        items = json.loads(out.stdout)["items"]
        ready = [
            n
            for n in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        return len(ready) >= len(cluster.nodes)

    def default_sa() -> bool:
        return cluster.kubectl("get", "serviceaccount", "default", check=False).returncode == 0

    _wait("nodes", nodes_ready, timeout)
    _wait("default ServiceAccount", default_sa, timeout)


def down() -> bool:
    layout = _layout()
    layout.root.parent.mkdir(parents=True, exist_ok=True)
    with layout.lock.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existed = layout.state.exists()
        _clean(layout)
        return existed


@contextlib.contextmanager
def local_cluster() -> Iterator[Cluster]:
    """The local cluster for a test session: reused if running, else started and removed."""
    layout = _layout()
    layout.root.parent.mkdir(parents=True, exist_ok=True)
    was_running = _running(layout) is not None
    cluster = up()
    try:
        yield cluster
    finally:
        if not was_running and not os.environ.get("EDGEFILL_KEEP_CLUSTER"):
            down()


def external_cluster(kubeconfig: Path) -> Cluster:
    """A cluster given by kubeconfig (e.g. kind in users' CI)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("EDGEFILL_KUBECONFIG is set but kubectl is not on PATH")
    return Cluster(kubeconfig=kubeconfig, kubectl_path=kubectl, local=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Local Kubernetes cluster (real control plane + kwok nodes, no Docker)."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start the cluster (reuse it when already running)")
    sub.add_parser("down", help="stop every process 'up' started and remove the state")
    sub.add_parser("status", help="say whether the cluster is running")
    sub.add_parser("kubeconfig", help="print the kubeconfig path")
    args = parser.parse_args(argv)
    layout = _layout()
    if args.cmd == "up":
        cluster = up()
        print(f"Local cluster ready: {len(cluster.nodes)} nodes.")
        print(f"  export KUBECONFIG={cluster.kubeconfig}")
        print(f"  {cluster.kubectl_path} get nodes -L edgefill.io/site")
        print("  make cluster-down   # stop it")
    elif args.cmd == "down":
        print("stopped" if down() else "not running")
    elif args.cmd == "status":
        running = _running(layout)
        print("running" if running else "not running")
        return 0 if running else 1
    else:
        print(layout.kubeconfig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
