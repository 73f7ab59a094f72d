"""The package's layers (docs/design.md section 2): imports point down, never up; the training
engine never imports a task. Read from the source (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import structkd

PACKAGE = Path(structkd.__file__).parent
RANK = {
    "structures": 0,
    "serve": 1,
    "distill": 1,
    "data": 1,
    "models": 2,
    "train": 3,
    "tasks": 4,
    "api": 5,
    "experiment": 6,
    "demo": 7,
    "cli": 8,
}
"""A module of layer ``a`` may import one of layer ``b`` only when ``RANK[b] < RANK[a]`` or
``a == b``; ``serve``, ``distill`` and ``data`` are independent of each other."""


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "structkd" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


MODULES = sorted(
    p
    for p in PACKAGE.rglob("*.py")
    if p.relative_to(PACKAGE).parts[0] in {*(f"{name}.py" for name in RANK), *RANK}
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    for module in _imports(path):
        layer = _layer(module)
        if layer is None or layer not in RANK or layer == own:
            continue
        assert RANK[layer] < RANK[own], f"{path.relative_to(PACKAGE)} imports {module} (up)"


def test_every_layer_is_known() -> None:
    top = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()}
    top -= {"__init__", "__main__", "__pycache__"}
    assert top <= set(RANK), f"unranked modules: {sorted(top - set(RANK))}"
