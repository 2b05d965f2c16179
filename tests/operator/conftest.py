"""Operator test fixtures: example objects, the node-config schema and a counting fake cluster.

Helpers live here (not in an importable module) because a package named
``tests.operator`` or ``operator`` on sys.path would shadow the standard
library's ``operator``.
"""

from __future__ import annotations

import builtins
import copy
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefill_devenv.procs import kill_process, stop_process
from edgefill_operator.kube import KubeError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CRDS = REPO / "crds"
SCHEMA = REPO / "cache_node" / "node-config.schema.json"

Obj = dict[str, Any]


def load_examples() -> list[Obj]:
    docs: list[Obj] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def example(kind: str, name: str, namespace: str = "edge") -> Obj:
    for doc in load_examples():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            obj = copy.deepcopy(doc)
            obj["metadata"].setdefault("namespace", namespace)
            obj["metadata"].setdefault("uid", f"uid-{name}")
            obj["metadata"].setdefault("generation", 1)
            return obj
    raise KeyError((kind, name))


def node_config_schema() -> Obj:
    """The committed node-config schema; generated from the model when not committed yet."""
    if SCHEMA.exists():
        schema: Obj = json.loads(SCHEMA.read_text())
        return schema
    out = subprocess.run(
        [sys.executable, "-m", "cache_node.config"], check=True, capture_output=True, text=True
    )
    generated: Obj = json.loads(out.stdout)
    return generated


class FakeCluster:
    """In-memory :class:`ClusterApi` that counts calls; StatefulSet status is set by tests."""

    def __init__(self, objects: list[Obj] | None = None) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.applies: list[tuple[str, str]] = []
        self.creates: list[tuple[str, str]] = []
        self.status_patches: list[tuple[str, str, Obj]] = []
        self.fail_apply: dict[str, KubeError] = {}
        for obj in objects or []:
            self.put(obj)

    @staticmethod
    def _key(kind: str, namespace: str, name: str) -> tuple[str, str, str]:
        return (kind, namespace, name)

    def put(self, obj: Obj) -> None:
        meta = obj["metadata"]
        self.objects[self._key(obj["kind"], meta["namespace"], meta["name"])] = copy.deepcopy(obj)

    def apply(self, manifest: Mapping[str, Any]) -> Obj:
        kind = manifest["kind"]
        if kind in self.fail_apply:
            raise self.fail_apply[kind]
        meta = manifest["metadata"]
        key = self._key(kind, meta["namespace"], meta["name"])
        self.applies.append((kind, meta["name"]))
        old = self.objects.get(key)
        new = copy.deepcopy(dict(manifest))
        if old is not None:
            if "status" in old:
                new["status"] = old["status"]
            gen = old["metadata"].get("generation", 1)
            changed = old.get("spec") != new.get("spec")
            new["metadata"]["generation"] = gen + 1 if changed else gen
        else:
            new["metadata"]["generation"] = 1
        self.objects[key] = new
        return copy.deepcopy(new)

    def create(self, manifest: Mapping[str, Any]) -> bool:
        meta = manifest["metadata"]
        key = self._key(manifest["kind"], meta["namespace"], meta["name"])
        self.creates.append((manifest["kind"], meta["name"]))
        if key in self.objects:
            return False
        self.objects[key] = copy.deepcopy(dict(manifest))
        return True

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        obj = self.objects.get(self._key(kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    def list(
        self, api_version: str, kind: str, namespace: str | None, selector: str | None = None
    ) -> list[Obj]:
        wanted = dict(s.split("=", 1) for s in selector.split(",")) if selector else {}
        out = []
        for (k, ns, _), obj in sorted(self.objects.items()):
            if k != kind or (namespace is not None and ns != namespace):
                continue
            labels = obj["metadata"].get("labels") or {}
            if all(labels.get(a) == b for a, b in wanted.items()):
                out.append(copy.deepcopy(obj))
        return out

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        key = self._key(kind, namespace, name)
        self.status_patches.append((kind, name, dict(status)))
        obj = self.objects[key]
        merged = dict(obj.get("status") or {})
        for k, v in status.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
        obj["status"] = merged

    def children(self, namespace: str) -> builtins.list[tuple[str, str]]:
        return sorted(
            (k, n)
            for (k, ns, n) in self.objects
            if ns == namespace and k not in ("EdgeSite", "ContentSet", "Pod", "Secret")
        )


@pytest.fixture
def fake_cluster() -> type[FakeCluster]:
    return FakeCluster


@pytest.fixture(scope="session")
def node_schema() -> Obj:
    return node_config_schema()


@pytest.fixture
def edge_example() -> Any:
    return example


# --- integration tier: the real API server --------------------------------------------------

CRD_NAMES = ("edgesites.edgefill.io", "contentsets.edgefill.io")


def kube_json(cluster: Any, *args: str) -> Any:
    out = cluster.kubectl(*args, "-o", "json")
    return json.loads(out.stdout)


def wait_for(what: str, check: Any, timeout: float = 60.0, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; bounded, never sleeps past ``timeout``."""
    import time

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last={last!r}")


@pytest.fixture(scope="session")
def crds(k8s_cluster: Any) -> Any:
    """The CRDs and the admission policy from crds/, installed with server-side apply."""
    k8s_cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=edgefill-tests",
        "-f",
        str(CRDS),
    )
    k8s_cluster.wait_established(*CRD_NAMES)
    wait_for("the copies admission policy to resolve EdgeSite", lambda: _policy_ready(k8s_cluster))
    return k8s_cluster


PROBE_CONTENTSET = {
    "apiVersion": "edgefill.io/v1alpha1",
    "kind": "ContentSet",
    "metadata": {"name": "policy-probe", "namespace": "default"},
    "spec": {"source": {"bucket": "probe", "prefixes": ["p/"]}, "sites": {}},
}


def _policy_ready(cluster: Any) -> bool:
    """Whether the ValidatingAdmissionPolicy can map its paramKind (EdgeSite) yet.

    Right after the CRDs are installed the API server's admission plugin may
    not know the EdgeSite resource for a few seconds and denies every
    ContentSet with "failed to find resource referenced by paramKind". A server
    dry run of a harmless ContentSet tells when it has caught up; any other
    error is real.
    """
    out = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(PROBE_CONTENTSET), check=False
    )
    if out.returncode == 0:
        return True
    if "failed to find resource referenced by paramKind" in out.stderr:
        return False
    raise AssertionError(f"probe ContentSet refused: {out.stderr}")


@pytest.fixture
def namespace(crds: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    import re
    import uuid

    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    ns = f"{base}-{uuid.uuid4().hex[:6]}"
    crds.kubectl("create", "namespace", ns)
    yield ns
    crds.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def wait() -> Any:
    return wait_for


@pytest.fixture
def kget() -> Any:
    return kube_json


class OperatorProcess:
    """``python -m edgefill_operator`` as a real child process, watching one namespace."""

    def __init__(self, cluster: Any, namespace: str, log_path: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.metrics_port = 0

    def start(self) -> None:
        from edgefill_devenv.s3 import free_port

        self.metrics_port = free_port()
        liveness = free_port()
        env = {
            **self.cluster.env(),
            "EDGEFILL_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "EDGEFILL_OPERATOR_METRICS_ADDR": "127.0.0.1",
            "EDGEFILL_OPERATOR_LIVENESS": f"http://127.0.0.1:{liveness}/healthz",
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefill_operator",
                f"--namespace={self.namespace}",
                "--standalone",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as when a node dies."""
        kill_process(self.proc)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


@pytest.fixture
def operator(namespace: str, crds: Any, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(crds, namespace, tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()
