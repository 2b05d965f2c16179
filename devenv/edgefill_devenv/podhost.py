"""Pod host: run a real cache-node process for every kwok cache-node pod.

kwok moves pods to Running without running containers. Where the demo or a
test needs the site's pods to actually serve, this module plays the part of
the kubelet for cache-node pods: for each Running pod of
``app.kubernetes.io/name=edgefill-cache-node`` it

* reads the pod spec and the ConfigMap and Secrets its volumes reference,
  exactly what the operator rendered;
* materialises those volumes into a folder per pod, and rewrites every path
  in ``node.json`` that points into a volume mount to that folder (longest
  mount path wins, as in a container's mount table);
* rewrites peer URLs from cluster DNS names (``<pod>.<site>-peers.<ns>.svc``,
  ``<site>-peers.<ns>.svc``) to the pods' own loopback IPs, because this
  machine has no cluster DNS and the API server refuses loopback addresses in
  EndpointSlices;
* starts ``python -m cache_node`` on the pod's IP, updates its configuration
  file in place when the rendered ConfigMap changes (as the kubelet does; the
  node re-reads it) but restarts it when its peers' addresses change (the
  stand-in for cluster DNS starting to resolve), restarts it if it exits, and
  stops it when the pod goes away.

It only ever stops processes it started, by PID.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from edgefill_devenv.paths import state_dir

CACHE_NODE_SELECTOR = "app.kubernetes.io/name=edgefill-cache-node"
UNREACHABLE_HOST = "127.255.255.254"  # nothing listens: connections are refused at once


# --- pure translation ------------------------------------------------------------


@dataclass(frozen=True)
class PodView:
    """What the pod host needs to know about one pod."""

    namespace: str
    name: str
    ip: str
    mounts: dict[str, str]  # mountPath -> volume name
    volumes: dict[str, dict[str, Any]]  # volume name -> volume source
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_view(pod: Mapping[str, Any], container: str = "cache-node") -> PodView | None:
    """A Running pod with an IP, as a :class:`PodView`; ``None`` otherwise."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return None
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    spec = pod["spec"]
    containers = [c for c in spec.get("containers", []) if c["name"] == container]
    if not containers:
        return None
    mounts = {m["mountPath"]: m["name"] for m in containers[0].get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    meta = pod["metadata"]
    return PodView(
        namespace=meta["namespace"],
        name=meta["name"],
        ip=status["podIP"],
        mounts=mounts,
        volumes=volumes,
        labels=dict(meta.get("labels") or {}),
    )


def map_path(path: str, mounts: Mapping[str, Path]) -> str:
    """Rewrite an in-container path to the host folder of the volume holding it."""
    best: str | None = None
    for mount in mounts:
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and (
            best is None or len(mount) > len(best)
        ):
            best = mount
    if best is None:
        return path
    rest = PurePosixPath(path).relative_to(best)
    return str(mounts[best] / rest) if str(rest) != "." else str(mounts[best])


def map_peer_url(
    url: str, namespace: str, pod_ips: Mapping[str, str], site_ips: Mapping[str, list[str]]
) -> str:
    """Cluster DNS peer URL -> loopback pod IP URL.

    ``pod_ips`` maps ``ns/pod`` to IP; ``site_ips`` maps ``ns/<peer service>``
    to the IPs of that service's Running pods (first one answers for the site).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    labels = host.split(".")
    ip: str | None = None
    if len(labels) >= 4 and labels[3] == "svc":  # <pod>.<svc>.<ns>.svc
        ip = pod_ips.get(f"{labels[2]}/{labels[0]}")
    elif len(labels) >= 3 and labels[2] == "svc":  # <svc>.<ns>.svc
        candidates = site_ips.get(f"{labels[1]}/{labels[0]}") or []
        ip = candidates[0] if candidates else None
    else:
        return url
    netloc = f"{ip or UNREACHABLE_HOST}:{parts.port}" if parts.port else (ip or UNREACHABLE_HOST)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _is_path_field(key: str) -> bool:
    """Filesystem fields of the node configuration: ``path``, ``...Dir``, ``...File``."""
    return key == "path" or key.endswith(("Dir", "File"))


def localize_config(
    doc: Mapping[str, Any],
    pod: PodView,
    mounts: Mapping[str, Path],
    pod_ips: Mapping[str, str],
    site_ips: Mapping[str, list[str]],
) -> dict[str, Any]:
    """The node configuration as the pod would see it, made runnable on this machine."""

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        if isinstance(value, str):
            if key == "peerUrl":
                return map_peer_url(value, pod.namespace, pod_ips, site_ips)
            if _is_path_field(key):
                return map_path(value, mounts)
        return value

    out: dict[str, Any] = walk(dict(doc))
    out.setdefault("listen", {})["host"] = pod.ip
    return out


# --- materialising volumes -------------------------------------------------------


def _write_items(
    folder: Path, data: Mapping[str, bytes], items: list[dict[str, Any]] | None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
    for key, rel in wanted.items():
        if key not in data:
            continue
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_bytes(data[key])
        tmp.chmod(0o600)
        tmp.replace(target)


class Cluster:
    """The few reads the pod host makes, over the kubernetes client."""

    def __init__(self, kubeconfig: Path, namespace: str | None = None) -> None:
        from kubernetes import client, config  # imported here: only the pod host needs it

        api_client = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        # Raw JSON responses (_preload_content=False): plain dicts, no model classes.
        self._api: Any = client.CoreV1Api(api_client)
        self.namespace = namespace

    def pods(self) -> list[dict[str, Any]]:
        opts: dict[str, Any] = {
            "label_selector": CACHE_NODE_SELECTOR,
            "_preload_content": False,
            "_request_timeout": 10,
        }
        if self.namespace:
            resp = self._api.list_namespaced_pod(self.namespace, **opts)
        else:
            resp = self._api.list_pod_for_all_namespaces(**opts)
        items: list[dict[str, Any]] = json.loads(resp.data)["items"]
        return items

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            resp = self._api.read_namespaced_config_map(
                name, namespace, _preload_content=False, _request_timeout=10
            )
        except Exception:  # a missing object is just "not yet"
            return None
        body = json.loads(resp.data)
        return {k: v.encode() for k, v in (body.get("data") or {}).items()}

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            resp = self._api.read_namespaced_secret(
                name, namespace, _preload_content=False, _request_timeout=10
            )
        except Exception:
            return None
        body = json.loads(resp.data)
        return {k: base64.b64decode(v) for k, v in (body.get("data") or {}).items()}


@dataclass
class Running:
    pod: PodView
    digest: str
    process: subprocess.Popen[bytes]
    folder: Path
    peering: Any = None


class PodHost:
    """Keeps one cache-node process per Running cache-node pod."""

    def __init__(self, cluster: Cluster, workdir: Path, env: Mapping[str, str] | None = None):
        self.cluster = cluster
        self.workdir = workdir
        self.env = dict(env or {})
        self.running: dict[str, Running] = {}

    def _materialise(self, pod: PodView, folder: Path) -> dict[str, Path] | None:
        mounts: dict[str, Path] = {}
        for mount_path, volume in pod.mounts.items():
            source = pod.volumes.get(volume, {})
            local = folder / "volumes" / volume
            if "configMap" in source:
                data = self.cluster.config_map(pod.namespace, source["configMap"]["name"])
                if data is None:
                    return None
                _write_items(local, data, source["configMap"].get("items"))
            elif "secret" in source:
                data = self.cluster.secret(pod.namespace, source["secret"]["secretName"])
                if data is None:
                    return None
                _write_items(local, data, source["secret"].get("items"))
            else:  # emptyDir or a PersistentVolumeClaim: a folder that survives restarts
                local.mkdir(parents=True, exist_ok=True)
            mounts[mount_path] = local
        return mounts

    def desired(self) -> dict[str, tuple[PodView, dict[str, Any], Path]]:
        views = [v for v in (pod_view(p) for p in self.cluster.pods()) if v is not None]
        pod_ips = {v.key: v.ip for v in views}
        site_ips: dict[str, list[str]] = {}
        for v in sorted(views, key=lambda v: v.name):
            site = v.labels.get("edgefill.io/site")
            if site:
                site_ips.setdefault(f"{v.namespace}/{site}-peers", []).append(v.ip)
        out: dict[str, tuple[PodView, dict[str, Any], Path]] = {}
        for view in views:
            folder = self.workdir / view.namespace / view.name
            mounts = self._materialise(view, folder)
            if mounts is None:
                continue
            config_files = [
                p / "node.json" for m, p in mounts.items() if (p / "node.json").exists()
            ]
            if not config_files:
                continue
            doc = json.loads(config_files[0].read_text())
            out[view.key] = (view, localize_config(doc, view, mounts, pod_ips, site_ips), folder)
        return out

    def sync(self) -> None:
        want = self.desired()
        for key in list(self.running):
            run = self.running[key]
            gone = key not in want or want[key][0].ip != run.pod.ip
            if gone or run.process.poll() is not None:
                self._stop(key)
        for key, (view, doc, folder) in want.items():
            raw = json.dumps(doc, sort_keys=True, indent=2).encode()
            digest = hashlib.sha256(raw).hexdigest()
            run_or_none = self.running.get(key)
            if run_or_none is not None and run_or_none.digest == digest:
                continue
            config_path = folder / "node.local.json"
            tmp = config_path.with_suffix(".json.tmp")
            tmp.write_bytes(raw)
            tmp.replace(config_path)  # readers (the node, the demo, tests) never see half a file
            if run_or_none is not None and run_or_none.peering == doc.get("peering"):
                # Like the kubelet with a ConfigMap volume: the file changes under the
                # running container, which re-reads it (fill plan, window); no restart.
                run_or_none.digest = digest
                continue
            if run_or_none is not None:
                # The peer addresses changed: in a cluster the DNS names stay and start
                # resolving; here that shows as new IPs in the file, and a restart gives
                # the node fresh connections and circuit breakers for them.
                self._stop(key)
            self.running[key] = Running(
                view, digest, self._spawn(view, config_path, folder), folder, doc.get("peering")
            )

    def _spawn(self, pod: PodView, config_path: Path, folder: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env, "EDGEFILL_NODE_NAME": pod.name}
        env.pop("EDGEFILL_S3_ENDPOINT", None)  # the rendered origin endpoint is the truth
        with (folder / "node.log").open("ab") as log:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cache_node",
                    "--config",
                    str(config_path),
                    "--node-name",
                    pod.name,
                    "--host",
                    pod.ip,
                ],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _stop(self, key: str, timeout: float = 10.0) -> None:
        run = self.running.pop(key)
        if run.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGTERM)
            try:
                run.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.process.pid, signal.SIGKILL)
                run.process.wait(timeout)

    def stop_all(self) -> None:
        for key in list(self.running):
            self._stop(key)

    def addresses(self) -> dict[str, str]:
        return {k: r.pod.ip for k, r in self.running.items()}


def run_forever(
    kubeconfig: Path, workdir: Path, interval: float = 1.0, namespace: str | None = None
) -> None:
    host = PodHost(Cluster(kubeconfig, namespace), workdir)
    stop = False

    def _term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    try:
        while not stop:
            try:
                host.sync()
            except Exception as exc:  # keep hosting through API hiccups
                print(f"[podhost] sync failed: {exc}", file=sys.stderr, flush=True)
            tmp = workdir / "pods.json.tmp"
            tmp.write_text(json.dumps(host.addresses(), indent=2))
            tmp.replace(workdir / "pods.json")  # readers never see a half-written file
            time.sleep(interval)
    finally:
        host.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a cache-node process for every Running kwok cache-node pod."
    )
    parser.add_argument("--kubeconfig", type=Path, default=state_dir() / "cluster" / "kubeconfig")
    parser.add_argument("--workdir", type=Path, default=state_dir() / "pods")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between syncs")
    parser.add_argument("--namespace", help="only pods of this namespace (default: all)")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    run_forever(args.kubeconfig, args.workdir, args.interval, args.namespace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
