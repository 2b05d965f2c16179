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


def test_entry_point_runs_kopf_in_module_mode() -> None:
    from edgefill_operator.__main__ import kopf_args

    args = kopf_args([])
    assert args[:3] == ["run", "-m", "edgefill_operator.main"]
    assert "--all-namespaces" in args
    assert any(a.startswith("--liveness=") for a in args)
    scoped = kopf_args(["--namespace=edge", "--standalone"])
    assert "--all-namespaces" not in scoped
    assert scoped[-2:] == ["--namespace=edge", "--standalone"]
    assert not any(a.endswith(".py") for a in args), "never file mode"
