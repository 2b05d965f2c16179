"""Fill-plan planning and label-selector semantics."""

from __future__ import annotations

from typing import Any

import pytest

from edgefill_operator.planning import (
    SiteRef,
    downstream_sites,
    effective_copies,
    fill_plan,
    selected_sites,
    selector_matches,
    upstream_refs,
)


def _expr(op: str, *values: str) -> dict[str, Any]:
    req: dict[str, Any] = {"key": "a", "operator": op}
    if values:
        req["values"] = list(values)
    return {"matchExpressions": [req]}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        (None, {}, True),
        ({}, {"a": "b"}, True),
        ({"matchLabels": {"a": "b"}}, {"a": "b", "c": "d"}, True),
        ({"matchLabels": {"a": "b"}}, {"a": "x"}, False),
        ({"matchLabels": {"a": "b"}}, {}, False),
        (
            _expr("In", "x", "y"),
            {"a": "y"},
            True,
        ),
        (_expr("In", "x"), {}, False),
        (_expr("NotIn", "x"), {}, True),
        (
            _expr("NotIn", "x"),
            {"a": "x"},
            False,
        ),
        (_expr("Exists"), {"a": ""}, True),
        (_expr("Exists"), {"b": "1"}, False),
        (_expr("DoesNotExist"), {"a": "1"}, False),
        (
            {
                "matchLabels": {"t": "edge"},
                "matchExpressions": [{"key": "isp", "operator": "In", "values": ["beta"]}],
            },
            {"t": "edge", "isp": "alpha"},
            False,
        ),
    ],
)
def test_selector_semantics(selector: Any, labels: dict[str, str], expected: bool) -> None:
    assert selector_matches(selector, labels) is expected


def test_fill_plans_of_the_examples(edge_example: Any) -> None:
    alpha = edge_example("EdgeSite", "alpha-east")
    beta = edge_example("EdgeSite", "beta-west")
    popular = edge_example("ContentSet", "popular-titles")
    launch = edge_example("ContentSet", "series-launch")
    launch["metadata"]["generation"] = 4

    assert [e["name"] for e in fill_plan(alpha, [launch, popular])] == ["edge/popular-titles"]
    plan = fill_plan(beta, [launch, popular])
    assert plan == [
        {
            "name": "edge/popular-titles",
            "generation": 1,
            "source": {"bucket": "catalogue", "manifestKey": "manifests/popular.jsonl"},
            "copies": 2,
            "pieceSizeBytes": 1048576,
            "priority": 500,
            "pinned": True,
        },
        {
            "name": "edge/series-launch",
            "generation": 4,
            "source": {"bucket": "catalogue", "prefixes": ["vod/title-0001/", "vod/title-0002/"]},
            "copies": 1,
            "pieceSizeBytes": 2097152,
            "priority": 200,
            "pinned": False,
            "invalidations": [
                {"id": "reencode-2026-11-20", "key": "vod/title-0001/1080p/seg-00003.m4s"}
            ],
        },
    ]


def test_plan_ignores_other_namespaces_and_deleting_contentsets(edge_example: Any) -> None:
    beta = edge_example("EdgeSite", "beta-west")
    elsewhere = edge_example("ContentSet", "popular-titles", namespace="other")
    going = edge_example("ContentSet", "series-launch")
    going["metadata"]["deletionTimestamp"] = "2026-11-22T00:00:00Z"
    assert fill_plan(beta, [elsewhere, going]) == []


def test_copies_are_capped_at_replicas(edge_example: Any) -> None:
    beta = edge_example("EdgeSite", "beta-west")
    beta["spec"]["replicas"] = 1
    popular = edge_example("ContentSet", "popular-titles")
    (entry,) = fill_plan(beta, [popular])
    assert entry["copies"] == 1
    assert effective_copies(3, 5) == 3
    assert effective_copies(3, 0) == 1


def test_selected_sites(edge_example: Any) -> None:
    sites = [edge_example("EdgeSite", "beta-west"), edge_example("EdgeSite", "alpha-east")]
    popular = edge_example("ContentSet", "popular-titles")
    launch = edge_example("ContentSet", "series-launch")
    assert [s["metadata"]["name"] for s in selected_sites(popular, sites)] == [
        "alpha-east",
        "beta-west",
    ]
    assert [s["metadata"]["name"] for s in selected_sites(launch, sites)] == ["beta-west"]


def test_parent_relation_both_ways(edge_example: Any) -> None:
    alpha = edge_example("EdgeSite", "alpha-east")
    beta = edge_example("EdgeSite", "beta-west")
    assert upstream_refs(beta) == [(SiteRef("edge", "alpha-east"), "parent")]
    assert upstream_refs(alpha) == []
    assert downstream_sites(alpha, [alpha, beta]) == [SiteRef("edge", "beta-west")]
    assert downstream_sites(beta, [alpha, beta]) == []
