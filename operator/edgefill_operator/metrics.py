"""Prometheus metrics of the operator (served on its own port, see ``settings``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "edgefill_operator_reconciles_total",
    "Reconcile steps run, by kind, trigger (create, update, resume, timer, child, contentset) "
    "and result.",
    ["kind", "trigger", "result"],
)
ERRORS = Counter(
    "edgefill_operator_errors_total",
    "Errors while reconciling, by kind and reason (the API's reason or the exception type).",
    ["kind", "reason"],
)
DURATION = Histogram(
    "edgefill_operator_reconcile_duration_seconds",
    "Wall time of one reconcile step, by kind.",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MANAGED = Gauge(
    "edgefill_operator_managed_objects",
    "Objects the operator currently manages, by kind (EdgeSite, ContentSet and child kinds).",
    ["kind"],
)
APPLIES = Counter(
    "edgefill_operator_applies_total",
    "Server-side applies of child objects, by kind and result.",
    ["kind", "result"],
)
NODE_REPORT_FAILURES = Counter(
    "edgefill_operator_node_report_failures_total",
    "Cache-node /status polls that gave no usable report, by reason (unreachable, invalid).",
    ["reason"],
)
