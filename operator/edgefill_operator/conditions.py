"""Status conditions in the Kubernetes API conventions (as cert-manager keeps them).

``lastTransitionTime`` moves only when a condition's status flips: a
re-computed condition with the same status keeps its old time even if the
reason or message changed. ``observedGeneration`` says which spec the
condition describes. Reasons are CamelCase words a program can match on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str


@dataclass(frozen=True)
class Transition:
    """A condition whose status flipped (worth an Event)."""

    type: str
    old: str | None
    new: Status
    reason: str
    message: str


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    existing: Sequence[Mapping[str, Any]] | None,
    desired: Sequence[Condition],
    generation: int,
    now: datetime,
) -> tuple[list[dict[str, Any]], list[Transition]]:
    """New conditions list plus the transitions it contains, ordered as ``desired``.

    Conditions of other types already present (set by someone else) are kept
    after ours, untouched.
    """
    old = {str(c.get("type")): c for c in existing or []}
    out: list[dict[str, Any]] = []
    transitions: list[Transition] = []
    for cond in desired:
        prev = old.pop(cond.type, None)
        prev_status = str(prev.get("status")) if prev else None
        if prev is not None and prev_status == cond.status and prev.get("lastTransitionTime"):
            changed_at = str(prev["lastTransitionTime"])
        else:
            changed_at = timestamp(now)
            transitions.append(
                Transition(cond.type, prev_status, cond.status, cond.reason, cond.message)
            )
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "observedGeneration": generation,
                "lastTransitionTime": changed_at,
                "reason": cond.reason,
                "message": cond.message,
            }
        )
    out.extend(dict(c) for c in old.values())
    return out, transitions


def find(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None
