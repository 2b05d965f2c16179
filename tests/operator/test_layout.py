"""The operator folder must never become the package ``operator`` (it would shadow the stdlib)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_operator_folder_is_not_a_package() -> None:
    assert not (REPO / "operator" / "__init__.py").exists(), (
        "operator/__init__.py shadows the standard library module 'operator'; delete it"
    )


def test_stdlib_operator_still_importable_next_to_our_package() -> None:
    code = "import operator, edgefill_operator.main; print(operator.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "edgefill_operator" not in out.stdout
    assert out.stdout.strip().endswith("operator.py")
