"""kopf settings, each chosen on purpose (see the comments), plus the metrics server.

* Watch streams: the server closes each watch after ``server_timeout`` and the
  client gives up ``client_timeout`` later, so a watch that stalls silently
  (a known failure mode behind load balancers) is re-established within
  minutes instead of never; a stream with no event at all for
  ``inactivity_timeout`` is restarted too.
* Liveness: ``__main__`` passes ``--liveness`` so the pod's probe sees a
  stuck operator; the probe reports healthy only while kopf's loops run.
* Peering: when several replicas run, the one with the highest priority
  works and the others wait. Two replicas with the same priority would
  freeze each other, so the priority comes from the environment (the chart
  sets it per replica) or is derived from the pod name. Peering is not
  mandatory: without kopf's peering CRDs one replica works alone.
* Progress and diff-base storage live in annotations under our own prefix
  (``edgefill.io/``), not kopf's defaults. Only the spec is kept there (a
  few KiB); catalogues never enter the spec, so the 256 KiB limit is safe.
* Handlers return None, so kopf writes nothing of its own into status.
* Posting: Events at INFO and above, reported as component edgefill-operator.
* Exit: on SIGTERM kopf waits at most 25 s for handlers in flight, below the
  30 s grace period of a pod, then exits; a step cut short is simply re-run
  by the next instance (every step is idempotent).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from typing import Any

import kopf
import prometheus_client

from edgefill_operator import logs, names

METRICS_PORT_ENV = "EDGEFILL_OPERATOR_METRICS_PORT"
PRIORITY_ENV = "EDGEFILL_OPERATOR_PRIORITY"


def peering_priority() -> int:
    given = os.environ.get(PRIORITY_ENV)
    if given:
        return int(given)
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    return 100 + int.from_bytes(hashlib.sha256(pod.encode()).digest()[:2], "big") % 900


def configure(settings: kopf.OperatorSettings) -> None:
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = 330
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10

    settings.peering.name = "edgefill-operator"
    settings.peering.clusterwide = True
    settings.peering.mandatory = False
    settings.peering.priority = peering_priority()

    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=names.ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{names.ANNOTATION_PREFIX}/finalizer"

    settings.process.ultimate_exiting_timeout = 25

    settings.posting.level = logging.INFO
    settings.posting.reporting_component = names.MANAGED_BY
    settings.posting.reporting_instance = socket.gethostname()

    # Retry failed handlers soon: reconcile steps are cheap and idempotent.
    settings.execution.max_workers = 8
    settings.queueing.error_delays = (1, 2, 5, 10, 20, 30)


def start_metrics_server() -> int | None:
    """Serve Prometheus metrics unless the port is 0; returns the port served."""
    port = int(os.environ.get(METRICS_PORT_ENV, "9100"))
    if port == 0:
        return None
    prometheus_client.start_http_server(
        port,
        addr=os.environ.get("EDGEFILL_OPERATOR_METRICS_ADDR", "0.0.0.0"),  # noqa: S104 - in a pod
    )
    return port


@kopf.on.startup()
def on_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    logs.configure()  # replaces the handler `kopf run` installed: one JSON stream
    configure(settings)
    start_metrics_server()
