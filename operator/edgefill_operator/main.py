"""The operator's kopf entry module: importing it registers every handler.

Run as ``kopf run -m edgefill_operator.main`` (or ``edgefill-operator``),
never in file mode. Nothing else belongs here.
"""

from __future__ import annotations

from edgefill_operator import settings
from edgefill_operator.handlers import children, contentset, edgesite, timers

__all__ = ["children", "contentset", "edgesite", "settings", "timers"]
