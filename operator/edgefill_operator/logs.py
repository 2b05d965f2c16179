"""structlog JSON logs with stable keys (kind, namespace, name, event), one object per line.

kopf's own records go through the standard library; they are rendered by the
same JSON renderer so the operator's output is one uniform stream. ``kopf
run`` installs its own root handler when it starts, so :func:`configure` runs
again from the startup handler and replaces it; the object a kopf record is
about (its ``k8s_ref`` extra) becomes our ``kind``/``namespace``/``name`` keys.
"""

from __future__ import annotations

import logging
import sys

import structlog


def _kopf_object(
    _logger: object, _method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    ref = event.pop("k8s_ref", None)
    if isinstance(ref, dict):
        for key in ("kind", "namespace", "name"):
            if ref.get(key) and key not in event:
                event[key] = ref[key]
    return event


_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(level: int = logging.INFO) -> None:
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder(("k8s_ref",)), _kopf_object],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
