"""Aggregation of node /status reports: never invented numbers."""

from __future__ import annotations

from typing import Any

import pytest

from edgefill_operator.report import (
    Progress,
    ReportError,
    aggregate_site,
    contentset_progress,
    offload_percent,
    parse_report,
    site_status_fields,
)

PLAN = ["edge/popular-titles", "edge/series-launch"]


def _doc(node: str, entries: list[dict[str, Any]], **requests: int) -> dict[str, Any]:
    return {
        "node": node,
        "site": "edge/beta-west",
        "ready": True,
        "store": {"bytes": 100, "objects": 2, "pinnedBytes": 50},
        "requests": {"hit": 0, "peer": 0, "parent": 0, "origin": 0, "error": 0, **requests},
        "fillPlan": entries,
    }


def _entry(name: str, stored: int, total: int | None, objs: int = 1) -> dict[str, Any]:
    e: dict[str, Any] = {
        "name": name,
        "generation": 1,
        "objectsStored": objs,
        "bytesStored": stored,
    }
    if total is not None:
        e.update(objectsTotal=2, bytesTotal=total)
    return e


def test_parse_accepts_the_cache_nodes_document() -> None:
    r = parse_report(_doc("n0", [_entry(PLAN[0], 10, 40)], hit=3, origin=1))
    assert r.node == "n0"
    assert r.bytes_cached == 100
    assert r.requests["hit"] == 3
    assert r.fill == {PLAN[0]: Progress(1, 2, 10, 40)}


def test_pending_fields_give_totals() -> None:
    e = {
        "name": PLAN[0],
        "objectsStored": 1,
        "bytesStored": 5,
        "objectsPending": 3,
        "bytesPending": 7,
    }
    r = parse_report(_doc("n0", [e]))
    assert r.fill[PLAN[0]] == Progress(1, 4, 5, 12)


def test_entry_without_totals_is_unknown_not_zero() -> None:
    r = parse_report(_doc("n0", [_entry(PLAN[0], 10, None)]))
    assert r.fill == {}


@pytest.mark.parametrize(
    "doc",
    [
        [],
        "x",
        {"store": []},
        {"store": {"bytes": -1}},
        {"store": {"bytes": "12"}},
        {"requests": {"hit": True}},
        {"fillPlan": [{"bytesStored": 1}]},
        {"fillPlan": {}},
    ],
)
def test_malformed_reports_are_rejected(doc: Any) -> None:
    with pytest.raises(ReportError):
        parse_report(doc)


def test_no_reports_no_figures() -> None:
    figures = aggregate_site([], members=2, plan_names=PLAN)
    assert site_status_fields(figures) == {}


def test_partial_membership_publishes_traffic_but_not_fill() -> None:
    one = parse_report(_doc("n0", [_entry(p, 10, 20) for p in PLAN], hit=9, origin=1))
    fields = site_status_fields(aggregate_site([one], members=2, plan_names=PLAN))
    assert fields["nodesReporting"] == 1
    assert fields["traffic"]["offloadPercent"] == "90%"
    assert "fill" not in fields


def test_an_unresolved_entry_on_one_node_keeps_fill_unknown() -> None:
    a = parse_report(_doc("n0", [_entry(p, 10, 20) for p in PLAN]))
    b = parse_report(_doc("n1", [_entry(PLAN[0], 10, 20), _entry(PLAN[1], 0, None)]))
    fields = site_status_fields(aggregate_site([a, b], members=2, plan_names=PLAN))
    assert "fill" not in fields


def test_full_membership_sums_progress() -> None:
    a = parse_report(_doc("n0", [_entry(PLAN[0], 10, 20), _entry(PLAN[1], 30, 30)]))
    b = parse_report(_doc("n1", [_entry(PLAN[0], 20, 20), _entry(PLAN[1], 0, 10)]))
    fields = site_status_fields(aggregate_site([a, b], members=2, plan_names=PLAN))
    fill = fields["fill"]
    assert fill["bytesDone"] == 60
    assert fill["bytesTotal"] == 80
    assert fill["percent"] == "75%"
    assert fill["contentSets"] == [
        {
            "name": PLAN[0],
            "percent": "75%",
            "objectsDone": 2,
            "objectsTotal": 4,
            "bytesDone": 30,
            "bytesTotal": 40,
        },
        {
            "name": PLAN[1],
            "percent": "75%",
            "objectsDone": 2,
            "objectsTotal": 4,
            "bytesDone": 30,
            "bytesTotal": 40,
        },
    ]
    assert fields["bytesCached"] == 200


def test_entries_outside_the_plan_are_ignored() -> None:
    a = parse_report(_doc("n0", [_entry("edge/old", 10, 10)]))
    figures = aggregate_site([a], members=1, plan_names=[])
    assert figures.complete
    assert site_status_fields(figures)["fill"]["contentSets"] == []


def test_percent_never_rounds_up_to_complete() -> None:
    assert Progress(1, 1, 999_999, 1_000_000).percent() == "99.9%"
    assert Progress(1, 1, 10, 10).percent() == "100%"
    assert Progress(0, 0, 0, 0).percent() == "100%"
    assert Progress(0, 3, 0, 0).percent() == "0%"


def test_offload() -> None:
    assert offload_percent({"hit": 0, "origin": 0}) is None
    assert offload_percent({"hit": 1, "peer": 1, "parent": 1, "origin": 1}) == "75%"


def test_contentset_progress_reads_site_status() -> None:
    site = {
        "metadata": {"name": "beta-west"},
        "status": {"fill": {"contentSets": [{"name": PLAN[0], "bytesDone": 1, "bytesTotal": 2}]}},
    }
    bare = {"metadata": {"name": "alpha-east"}}
    assert contentset_progress(PLAN[0], [site, bare]) == {"beta-west": Progress(0, 0, 1, 2)}
