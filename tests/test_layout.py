"""The package's house rules, read from the code's own imports: one folder per concern, layers
that import only downward (two named exceptions, docs/design.md), no circle, nothing imports the
CLI, and only errors.py loose at the top of dfbk/."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "dfbk"
# Lowest first (docs/design.md, "Layout"); a module belongs to its longest matching prefix.
LAYERS = [
    ["dfbk", "dfbk.errors", "dfbk.plan.schema"],  # the schema: every default, read once
    ["dfbk.data", "dfbk.data.io", "dfbk.data.normalise"],
    ["dfbk.knowledge"],
    ["dfbk.data.sources", "dfbk.data.datasets", "dfbk.data.phantom"],
    ["dfbk.data.slices"],
    ["dfbk.networks", "dfbk.diffusion"],
    ["dfbk.methods", "dfbk.baselines"],
    ["dfbk.evaluation"],
    ["dfbk.training"],
    ["dfbk.inference"],
    ["dfbk.reporting"],
    ["dfbk.tracking"],
    ["dfbk.plan"],
    ["dfbk.cli"],
]
CLIMBING = {
    ("dfbk.training.validation", "dfbk.inference.sliding_window"),
    ("dfbk.evaluation.segmentation", "dfbk.reporting.tables"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the dfbk modules it imports at run time (TYPE_CHECKING blocks left out)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges[name] |= {t for t in targets if t in modules and t != name}
    return edges


def layer(module: str) -> int:
    best = max(
        (len(prefix), index)
        for index, group in enumerate(LAYERS)
        for prefix in group
        if module == prefix or module.startswith(prefix + ".")
    )
    return best[1]


def test_only_errors_py_is_loose_at_the_top():
    loose = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py"}
    assert loose == {"errors.py"}


def test_imports_go_down_the_layers_but_for_the_named_two():
    climbing = {(a, b) for a, targets in imports().items() for b in targets if layer(b) > layer(a)}
    assert climbing == CLIMBING


def test_no_module_imports_the_cli():
    users = {a for a, targets in imports().items() for b in targets if b.startswith("dfbk.cli")}
    assert users <= {m for m in users if m.startswith("dfbk.cli")}


def test_no_import_circle():
    edges = imports()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            assert state.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in list(edges):
        if node not in state:
            visit(node, [])
