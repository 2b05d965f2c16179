"""The committed node-config schema is the model's schema (the operator validates against it)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cache_node.config import SCHEMA_PATH, NodeConfig, render_schema


def test_committed_schema_matches_the_model() -> None:
    assert SCHEMA_PATH.read_text() == render_schema(), (
        "cache_node/node-config.schema.json is stale: run "
        "`python -m cache_node.config --write-schema` and commit it"
    )


def test_serving_section_has_defaults_and_is_closed() -> None:
    base = {
        "site": {"namespace": "edge", "name": "a"},
        "store": {"maxBytes": 1 << 30},
        "origin": {"bucket": "videos"},
        "tokens": {"enabled": False},
    }
    cfg = NodeConfig.model_validate(base)
    assert cfg.serving.cache_control.startswith("public")
    with pytest.raises(ValidationError, match="cacheControlTypo"):
        NodeConfig.model_validate({**base, "serving": {"cacheControlTypo": "x"}})
    schema = json.loads(SCHEMA_PATH.read_text())
    assert "serving" in schema["properties"]
