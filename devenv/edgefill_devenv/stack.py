"""The whole EdgeFill stack on the local cluster, for the demo and the e2e tier.

Pieces, each real: the cluster (``cluster``), the S3 origin (``s3``) seeded
with a catalogue (``catalogue``), the CRDs and ``examples/`` applied with
server-side apply, the operator as a process (``python -m
edgefill_operator``), and the pod host (``podhost``) that runs a cache-node
process for each cache-node pod the operator's StatefulSets create.

Examples are applied as written except for one field: each EdgeSite's
``spec.origin.endpoint`` is pointed at the S3 server actually running (the
examples say ``http://127.0.0.1:9000``, the ``make s3-up`` default).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cache_node.tokens import Claims, sign
from edgefill_devenv.cluster import Cluster
from edgefill_devenv.paths import REPO_ROOT
from edgefill_devenv.s3 import free_port

T = TypeVar("T")
EXAMPLES = REPO_ROOT / "examples"
CRDS = REPO_ROOT / "crds"
SITE_KINDS = ("EdgeSite",)


def log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


def load_examples(origin_endpoint: str | None = None) -> list[dict[str, Any]]:
    """The documents of ``examples/``, in file order, with the origin endpoint set."""
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if origin_endpoint and doc.get("kind") in SITE_KINDS:
                doc["spec"]["origin"]["endpoint"] = origin_endpoint
            docs.append(doc)
    return docs


def token_for(scope: str, secret: bytes, kid: str, ttl: int = 3600) -> str:
    """A URL token the example sites accept (what a content provider's signer issues)."""
    return sign(
        Claims(kid=kid, expires=int(time.time()) + ttl, not_before=None, scope=scope), secret
    )


def eventually(
    what: str, check: Callable[[], T | None], timeout: float, interval: float = 1.0
) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what}: not reached within {timeout:.0f}s (last: {last!r})")


@dataclass
class Stack:
    cluster: Cluster
    origin_endpoint: str
    workdir: Path
    namespace: str = "edge"
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    operator_metrics_port: int = 0

    # --- objects ----------------------------------------------------------------

    def install_crds(self) -> None:
        self.cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=edgefill-stack",
            "-f",
            str(CRDS),
        )
        self.cluster.wait_established("edgesites.edgefill.io", "contentsets.edgefill.io")

    def apply_examples(self) -> list[dict[str, Any]]:
        ns = self.namespace
        if self.cluster.kubectl("get", "namespace", ns, check=False).returncode != 0:
            self.cluster.kubectl("create", "namespace", ns)
        eventually(
            "default ServiceAccount",
            lambda: (
                self.cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0
            ),
            60,
            0.5,
        )
        docs = load_examples(self.origin_endpoint)
        payload = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})

        def applied() -> bool:
            proc = self.cluster.kubectl(
                "apply",
                "--server-side",
                "--field-manager=edgefill-stack",
                "-n",
                ns,
                "-f",
                "-",
                input=payload,
                check=False,
            )
            if proc.returncode == 0:
                return True
            # Right after the CRDs are installed the API server's admission plugin may
            # not map the ContentSet policy's paramKind (EdgeSite) yet; it catches up
            # within seconds. Anything else is a real error.
            if "failed to find resource referenced by paramKind" in proc.stderr:
                return False
            raise RuntimeError(f"applying examples/ failed: {proc.stderr.strip()}")

        eventually("examples/ accepted", applied, 90, 1.0)
        return docs

    def get(self, *args: str) -> Any:
        return json.loads(
            self.cluster.kubectl("get", *args, "-n", self.namespace, "-o", "json").stdout
        )

    # --- processes ----------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / f"{name}.log").open("ab") as out:
            self.processes[name] = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start_operator(self) -> None:
        self.operator_metrics_port = free_port()
        env = {
            **self.cluster.env(),
            "EDGEFILL_OPERATOR_METRICS_PORT": str(self.operator_metrics_port),
            "EDGEFILL_OPERATOR_METRICS_ADDR": "127.0.0.1",
            "EDGEFILL_OPERATOR_LIVENESS": f"http://127.0.0.1:{free_port()}/healthz",
        }
        self._spawn(
            "operator",
            [
                sys.executable,
                "-m",
                "edgefill_operator",
                f"--namespace={self.namespace}",
                "--standalone",
            ],
            env,
        )

    def start_podhost(self) -> None:
        self._spawn(
            "podhost",
            [
                sys.executable,
                "-m",
                "edgefill_devenv.podhost",
                f"--kubeconfig={self.cluster.kubeconfig}",
                f"--workdir={self.workdir / 'pods'}",
                "--interval=1",
                f"--namespace={self.namespace}",
            ],
            dict(os.environ),
        )

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            proc = self.processes.pop(name)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)

    # --- observations ---------------------------------------------------------------

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def node_addresses(self) -> dict[str, str]:
        """``namespace/pod`` -> loopback IP of every cache-node process the pod host runs."""
        path = self.workdir / "pods" / "pods.json"
        if not path.exists():
            return {}
        data: dict[str, str] = json.loads(path.read_text())
        return data

    def node_configs(self) -> dict[str, dict[str, Any]]:
        """``namespace/pod`` -> the localized node configuration each process runs with."""
        out: dict[str, dict[str, Any]] = {}
        for key in self.node_addresses():
            path = self.workdir / "pods" / key / "node.local.json"
            if path.exists():
                out[key] = json.loads(path.read_text())
        return out

    def site_condition(self, site: str, cond: str) -> str | None:
        obj = self.get("edgesite", site)
        for c in obj.get("status", {}).get("conditions", []):
            if c["type"] == cond:
                return str(c["status"])
        return None

    def wait_sites(self, sites: list[str], timeout: float = 180) -> None:
        def ready() -> bool:
            self.check_alive()
            return all(self.site_condition(s, "Ready") == "True" for s in sites)

        eventually(f"EdgeSites {sites} Ready", ready, timeout)


@contextlib.contextmanager
def running_stack(
    cluster: Cluster, origin_endpoint: str, workdir: Path, namespace: str = "edge"
) -> Iterator[Stack]:
    stack = Stack(cluster, origin_endpoint, workdir, namespace)
    try:
        stack.install_crds()
        stack.start_operator()
        stack.start_podhost()
        stack.apply_examples()
        yield stack
    finally:
        stack.stop()
