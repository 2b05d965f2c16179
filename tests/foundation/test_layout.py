"""The repository keeps the shape the design fixes.

``operator/`` must never become an importable package: a stray
``operator/__init__.py`` would shadow the standard library's ``operator``
module that asyncio, aiohttp and kopf import.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_operator_folder_is_not_a_package() -> None:
    assert (REPO / "operator" / "edgefill_operator" / "__init__.py").is_file()
    assert not (REPO / "operator" / "__init__.py").exists(), (
        "operator/__init__.py shadows the stdlib 'operator' module; remove it"
    )


@pytest.mark.parametrize("extra_path", ["", "operator"])
def test_import_operator_is_the_standard_library(extra_path: str) -> None:
    """From the repository root (and with operator/ on the path) `operator` is stdlib."""
    code = "import operator, sys; print(operator.__file__)"
    env_path = str(REPO / extra_path) if extra_path else str(REPO)
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {env_path!r}); {code}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(out).resolve().parent == stdlib, f"'operator' resolved to {out}"


@pytest.mark.parametrize("module", ["edgefill_operator", "cache_node", "edgefill_devenv"])
def test_packages_import_with_asyncio(module: str) -> None:
    subprocess.run([sys.executable, "-c", f"import asyncio, {module}"], cwd=REPO, check=True)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "operator",
        "cache_node",
        "charts",
        "crds",
        "tests",
        "kind-config.yaml",
        "Makefile",
        "docs",
        "examples",
        "bench",
        ".ci/run",
    ],
)
def test_top_level_layout(path: str) -> None:
    assert (REPO / path).exists(), f"{path} is part of the fixed layout"


def test_make_without_target_prints_help() -> None:
    out = subprocess.run(["make", "-s"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "make test" in out.stdout or "test" in out.stdout
    assert "cluster-up" in out.stdout
    assert "demo" in out.stdout


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme
    assert any(line.strip() == "make test" for line in ci.splitlines())
