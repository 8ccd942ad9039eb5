"""Imports point down the layers (ARCHITECTURE.md, docs/architecture.md) and form no cycle, also through
imports inside functions.

Each module gets a rank; a module may import only modules of lower rank (or of its own package).
Utilities that import nothing of qdit's upper layers sit at rank 0 or 1. docs/architecture.md shows the
same table; a test below keeps the two in agreement.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "architecture.md"

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


def rank(module: str) -> int:
    best = max((p for p, _ in RANKS if module == p or module.startswith(p + ".")), key=len)
    return dict(RANKS)[best]


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "qdit").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _never_imported(tree: ast.AST) -> set[int]:
    """Line numbers of the imports that never run when the module is imported: under ``if TYPE_CHECKING:``
    and under ``if __name__ == "__main__":`` (there the file runs as a program, a module of its own)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            "TYPE_CHECKING" in ast.unparse(node.test) or "__main__" in ast.unparse(node.test)
        ):
            lines |= {
                n.lineno
                for b in node.body
                for n in ast.walk(b)
                if isinstance(n, (ast.Import, ast.ImportFrom))
            }
    return lines


def qdit_imports(runtime_only: bool = False) -> list[tuple[str, str]]:
    """``(importer, imported)`` for every import of a qdit module, at module level or inside a function;
    ``runtime_only`` leaves out the imports that never run on import (see :func:`_never_imported`).
    ``from qdit.a import b`` with a submodule ``b`` counts as an import of ``qdit.a.b``."""
    modules = _modules()
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _never_imported(tree) if runtime_only else set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if not node.module.startswith("qdit."):
                    continue
                names = [node.module] + [
                    f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules
                ]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("qdit.")]
            else:
                continue
            edges += [(module, name) for name in names]
    return edges


def import_graph() -> dict[str, set[str]]:
    """Who runs whose code at import time or later: each import of ``qdit.a.b.c`` also runs the
    ``__init__`` of ``qdit.a`` and ``qdit.a.b`` (unless the importer is inside them, where Python has
    already started them)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in qdit_imports(runtime_only=True):
        parts = b.split(".")
        for k in range(2, len(parts) + 1):
            target = ".".join(parts[:k])
            if target != a and not a.startswith(target + "."):
                graph[a].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_point_down() -> None:
    edges = qdit_imports()
    assert len(edges) > 100  # the scan sees the package
    bad = sorted({(a, b) for a, b in edges if package(a) != package(b) and rank(b) >= rank(a)})
    assert not bad, "imports against the layer order: " + ", ".join(f"{a} -> {b}" for a, b in bad)


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (late imports included): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_the_rule_catches_an_upward_import() -> None:
    assert rank("qdit.nn.swap") < rank("qdit.calib.capture")  # nn must not import calib
    assert rank("qdit.kernels.linear") < rank("qdit.nn.quant_linear")
    assert rank("qdit.io.atomic") < rank("qdit.recipe") and rank("qdit.io.checkpoint") > rank(
        "qdit.models.adapter"
    )
    assert rank("qdit.quant.rules") < rank(
        "qdit.recipe"
    )  # the recipe checks specs with the quantizer's rules
    assert rank("qdit.diffusion.sampler") < rank("qdit.calib.capture")  # calibration drives the sampler


def doc_ranks() -> list[tuple[str, int]]:
    """The ``| rank | modules | ...`` table of docs/architecture.md as ``(module prefix, rank)``."""
    rows = []
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            rows += [(name, int(m.group(1))) for name in re.findall(r"`(qdit[\w.]*)`", m.group(2))]
    return rows


def test_the_architecture_doc_shows_these_ranks() -> None:
    assert sorted(doc_ranks()) == sorted(RANKS), "docs/architecture.md's layer table and RANKS differ"
