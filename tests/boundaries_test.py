"""Component boundaries: product code imports other components only through the contracts.

Each component (``components/<name>``) may import its own package, ``diffpol.contracts`` and
``diffpol.v1`` (the contracts distribution), ``diffpol.diffusion`` (the diffusion core) and
``diffpol.envs`` (the envs and their success rules); the contracts and the core import no
component, and the envs import only the contracts. The end-to-end pipeline
(``components/pipeline``) is the one component that may import all the others.
Anything else is a boundary crossing, and fails
``test_no_boundary_crossing``. Tests and test helpers are exempt: they may build fixtures
from other components.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).absolute().parent.parent
COMPONENTS = ("rollout", "preprocess", "trainer", "sampler", "evaluator")
SHARED = ("contracts", "v1", "diffusion", "envs")
# Test-only modules shipped next to product code (they build reference models and fixtures).
TEST_HELPERS = {"testing.py", "conftest.py"}


def imported_diffpol_packages(path: Path) -> set[str]:
    """The second name of every ``diffpol.<name>`` module the file imports, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "diffpol" and len(parts) > 1:
                names.add(parts[1])
    return names


def product_files(component: str) -> list[Path]:
    root = REPO / "components" / component / "diffpol" / component
    return sorted(
        p
        for p in root.rglob("*.py")
        if not p.name.endswith("_test.py") and p.name not in TEST_HELPERS
    )


def crossings() -> set[tuple[str, str]]:
    found = set()
    for component in COMPONENTS:
        allowed = {component, *SHARED}
        for path in product_files(component):
            for package in imported_diffpol_packages(path) - allowed:
                found.add((str(path.relative_to(REPO)), package))
    shared_roots = {
        REPO / "proto" / "diffpol" / "contracts": {"contracts", "v1"},
        REPO / "core" / "diffpol" / "diffusion": {"contracts", "v1", "diffusion"},
        REPO / "envs" / "diffpol" / "envs": {"contracts", "v1", "envs"},
    }
    for root, allowed in shared_roots.items():
        for path in sorted(root.rglob("*.py")):
            if not path.name.endswith("_test.py"):
                for package in imported_diffpol_packages(path) - allowed:
                    found.add((str(path.relative_to(REPO)), package))
    return found


def test_every_component_is_seen():
    for component in COMPONENTS:
        assert product_files(component), f"no product files found for {component}"
    assert list((REPO / "core" / "diffpol" / "diffusion").glob("*.py")), "no diffusion core"
    assert list((REPO / "envs" / "diffpol" / "envs").glob("*.py")), "no envs package"


def test_no_boundary_crossing():
    found = sorted(crossings())
    assert not found, (
        "product code imports another component directly; go through diffpol.contracts "
        "(or move the shared piece there, or into the pipeline):\n"
        + "\n".join(f"  {path} imports diffpol.{package}" for path, package in found)
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import diffpol.sampler.runtime", {"sampler"}),
        ("from diffpol.rollout import envs", {"rollout"}),
        ("def f():\n    from diffpol.evaluator.plots import plot\n", {"evaluator"}),
        ("from . import sibling\nimport numpy", set()),
    ],
)
def test_imports_are_found_wherever_they_stand(tmp_path, source, expected):
    path = tmp_path / "module.py"
    path.write_text(source)
    assert imported_diffpol_packages(path) == expected
