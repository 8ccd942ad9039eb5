"""Imports point down the layers (ARCHITECTURE.md), also through imports inside functions.

Each module gets a rank; a module may import only modules of lower rank (or of its own package).
Utilities that import nothing of qdit's upper layers sit at rank 0. The known violations still to be
undone (issue 14) are listed by name, so that no new one can creep in unnoticed, and each listed one
must still exist (a fixed one is removed from the list).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# (module prefix, rank): the longest matching prefix decides
RANKS = [
    ("qdit.errors", 0), ("qdit.cachedir", 0),
    ("qdit.data", 1), ("qdit.viz", 1),
    ("qdit.io.atomic", 1), ("qdit.io.integrity", 1), ("qdit.io.memory", 1), ("qdit.io.safetensors_reader", 1),
    ("qdit.quant", 2),
    ("qdit.recipe", 3), ("qdit.kernels", 3),
    ("qdit.nn", 4),
    ("qdit.models", 5),
    ("qdit.diffusion", 6), ("qdit.eval", 6),
    ("qdit.calib", 7), ("qdit.io", 7), ("qdit.train", 7),
    ("qdit.search", 8),
    ("qdit.api", 9),
    ("qdit.commands", 10), ("qdit.cli", 10), ("qdit", 10),
    ("qdit.__main__", 11),
]  # fmt: skip

KNOWN: set[tuple[str, str]] = set()  # importer -> imported: upward imports still to be undone (none left)


def rank(module: str) -> int:
    best = max((p for p, _ in RANKS if module == p or module.startswith(p + ".")), key=len)
    return dict(RANKS)[best]


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def qdit_imports() -> list[tuple[str, str]]:
    edges = []
    for path in sorted((SRC / "qdit").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] if node.module.startswith("qdit.") else []
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("qdit.")]
            else:
                continue
            edges += [(module, name) for name in names]
    return edges


def test_imports_point_down() -> None:
    edges = qdit_imports()
    assert len(edges) > 100  # the scan sees the package
    bad = sorted(
        (a, b) for a, b in edges if package(a) != package(b) and rank(b) >= rank(a) and (a, b) not in KNOWN
    )
    assert not bad, "imports against the layer order: " + ", ".join(f"{a} -> {b}" for a, b in bad)


def test_known_exceptions_still_exist() -> None:
    edges = set(qdit_imports())
    gone = sorted(KNOWN - edges)
    assert not gone, f"fixed, remove from KNOWN: {gone}"


def test_the_rule_catches_an_upward_import() -> None:
    assert rank("qdit.nn.swap") < rank("qdit.calib.capture")  # nn must not import calib
    assert rank("qdit.kernels.linear") < rank("qdit.nn.quant_linear")
    assert rank("qdit.io.atomic") < rank("qdit.recipe") and rank("qdit.io.checkpoint") > rank("qdit.models.adapter")
