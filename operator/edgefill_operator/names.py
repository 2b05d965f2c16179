"""Names, labels and fixed paths shared by the render functions and the handlers.

Every child of an EdgeSite has a name derived from the site's name alone, so a
re-run of a handler (kopf re-runs what was in flight when the operator died)
applies the same objects again instead of creating new ones: a duplicate
child is impossible by construction. The CRD caps site names at 40
characters so ``<site>-cache-<n>`` and ``<site>-peers`` stay valid DNS labels.
"""

from __future__ import annotations

import re

GROUP = "edgefill.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
EDGESITES = "edgesites"
CONTENTSETS = "contentsets"

FIELD_MANAGER = "edgefill-operator"
"""Server-side apply field manager: we own exactly the fields we render."""

ANNOTATION_PREFIX = GROUP
"""kopf keeps its progress and diff-base annotations under this prefix."""

APP_NAME = "edgefill-cache-node"
MANAGED_BY = "edgefill-operator"
SITE_LABEL = f"{GROUP}/site"
OPERATOR_APP_NAME = "edgefill-operator"

CONFIG_KEY = "node.json"
CONFIG_DIR = "/etc/edgefill"
STORE_DIR = "/var/cache/edgefill"
ORIGIN_CREDENTIALS_DIR = f"{CONFIG_DIR}/origin"
TOKEN_KEYS_DIR = f"{CONFIG_DIR}/tokens"
PEER_SECRET_DIR = f"{CONFIG_DIR}/peer"
TRACKER_KEY_DIR = f"{CONFIG_DIR}/tracker"
TRACKER_KEY_FILE = "manifest-signing.key"
CONFIG_CHECKSUM_ANNOTATION = f"{GROUP}/restart-config-checksum"
"""Pod-template annotation: SHA-256 of the node-config sections read only at start."""
PEER_SECRET_KEY = "secret"  # noqa: S105 - the key name inside the Secret, not a secret


def statefulset_name(site: str) -> str:
    return f"{site}-cache"


def generated_peer_secret_name(site: str) -> str:
    """The peer Secret the operator generates for a multi-node site that names none."""
    return f"{site}-peering"


def peer_service_name(site: str) -> str:
    """The headless Service: stable DNS per pod for peering."""
    return f"{site}-peers"


def client_service_name(site: str) -> str:
    return site


def configmap_name(site: str) -> str:
    return f"{site}-config"


def pdb_name(site: str) -> str:
    return f"{site}-cache"


def service_account_name(site: str) -> str:
    return f"{site}-cache-node"


def client_policy_name(site: str) -> str:
    return f"{site}-clients"


def peer_policy_name(site: str) -> str:
    return f"{site}-peers"


def metrics_policy_name(site: str) -> str:
    return f"{site}-metrics"


def pod_name(site: str, ordinal: int) -> str:
    return f"{statefulset_name(site)}-{ordinal}"


def selector_labels(site: str) -> dict[str, str]:
    """Labels that select a site's pods; immutable on the StatefulSet, so never change them."""
    return {"app.kubernetes.io/name": APP_NAME, SITE_LABEL: site}


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def image_version(image: str) -> str | None:
    """The tag of an image reference when it is a valid label value (not for digests)."""
    if "@" in image:
        return None
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag or not tag or len(tag) > 63 or not _LABEL_VALUE.match(tag):
        return None
    return tag


def common_labels(site: str, image: str | None = None) -> dict[str, str]:
    """The recommended ``app.kubernetes.io/*`` labels (plus our site label) of every child."""
    version = image_version(image) if image else None
    return {
        **selector_labels(site),
        **({"app.kubernetes.io/version": version} if version else {}),
        "app.kubernetes.io/instance": site,
        "app.kubernetes.io/component": "cache-node",
        "app.kubernetes.io/part-of": "edgefill",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
