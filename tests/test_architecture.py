"""The import-layer contract and module sizes, read from the source (no import-linter needed).

Layers, lowest first; a module may import torchmf modules of its own layer
package and of lower layers only. Packages sharing a layer are independent of
each other. ``torchmf/__init__.py`` and ``__main__.py`` assemble the public API
and sit on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "torchmf"

LAYERS: list[set[str]] = [
    {"errors", "device", "version"},
    {"data"},
    {"checks", "datasets", "split"},
    {"nn"},
    {"solvers", "retrieval", "metrics"},
    {"training"},
    {"estimator"},
    {"evaluation"},
    {"distributed"},
    {"serve"},
    {"cli"},
]
TOP = {"__init__", "__main__"}
MAX_LINES = 400


def _unit(path: Path) -> str:
    """The first name under torchmf/ (package or module) that ``path`` belongs to."""
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _layer(unit: str) -> int:
    for i, names in enumerate(LAYERS):
        if unit in names:
            return i
    raise AssertionError(f"torchmf/{unit} is in no layer: add it to LAYERS in {__file__}")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, torchmf unit) of every import of a torchmf module, lazy ones inside functions included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "torchmf" and node.level == 0:
            # `from torchmf import x`: a submodule, or else a name of the package root
            names = [f"torchmf.{a.name}" if _exists(a.name) else "torchmf.__init__" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "torchmf" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def _exists(name: str) -> bool:
    return (SRC / name).is_dir() or (SRC / f"{name}.py").is_file()


SOURCES = sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    unit = _unit(path)
    if unit in TOP:
        return
    mine = _layer(unit)
    for line, target in _imports(path):
        if target == unit or target in TOP:
            assert target != "__init__" or unit == "__init__", f"{path}:{line} imports the package root"
            continue
        theirs = _layer(target)
        assert theirs < mine, (
            f"{path.relative_to(SRC)}:{line} imports torchmf.{target} (layer {theirs}) from torchmf.{unit} "
            f"(layer {mine}): imports must point to lower layers"
        )


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_modules_stay_small(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(SRC)} has {n} lines; split it (limit {MAX_LINES})"


def test_every_unit_has_a_layer() -> None:
    for path in SOURCES:
        unit = _unit(path)
        if unit not in TOP:
            _layer(unit)
