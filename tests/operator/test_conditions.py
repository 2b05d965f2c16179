"""Condition bookkeeping: lastTransitionTime moves only on a flip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edgefill_operator.conditions import Condition, find, merge

T0 = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)


def test_first_set_records_transitions() -> None:
    conds, transitions = merge(None, [Condition("Ready", "False", "NodesNotReady", "0/2")], 1, T0)
    assert conds == [
        {
            "type": "Ready",
            "status": "False",
            "observedGeneration": 1,
            "lastTransitionTime": "2026-11-22T01:00:00Z",
            "reason": "NodesNotReady",
            "message": "0/2",
        }
    ]
    assert [(t.type, t.old, t.new) for t in transitions] == [("Ready", None, "False")]


def test_same_status_keeps_time_but_updates_reason_message_generation() -> None:
    first, _ = merge(None, [Condition("Ready", "False", "NodesNotReady", "0/2")], 1, T0)
    later = T0 + timedelta(minutes=5)
    second, transitions = merge(first, [Condition("Ready", "False", "ApplyFailed", "x")], 2, later)
    assert second[0]["lastTransitionTime"] == "2026-11-22T01:00:00Z"
    assert second[0]["reason"] == "ApplyFailed"
    assert second[0]["observedGeneration"] == 2
    assert transitions == []


def test_flip_moves_time() -> None:
    first, _ = merge(None, [Condition("Ready", "False", "NodesNotReady", "0/2")], 1, T0)
    later = T0 + timedelta(minutes=5)
    second, transitions = merge(
        first, [Condition("Ready", "True", "AllNodesReady", "2/2")], 1, later
    )
    assert second[0]["lastTransitionTime"] == "2026-11-22T01:05:00Z"
    assert [(t.old, t.new, t.reason) for t in transitions] == [("False", "True", "AllNodesReady")]


def test_foreign_conditions_are_kept() -> None:
    existing = [
        {
            "type": "Custom",
            "status": "True",
            "lastTransitionTime": "x",
            "reason": "R",
            "message": "",
        }
    ]
    conds, _ = merge(existing, [Condition("Ready", "True", "AllNodesReady", "")], 1, T0)
    assert [c["type"] for c in conds] == ["Ready", "Custom"]
    assert find(conds, "Custom") == existing[0]
    assert find(conds, "Missing") is None
