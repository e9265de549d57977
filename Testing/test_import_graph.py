"""The library's import graph, read statically (``ast``): no import cycles, no ``_private`` names
imported from another module.

Every ``import``/``from ... import`` of a ``polypsam`` module counts, at module level or inside a
function (a function-level import still ties the two modules together); imports under
``if TYPE_CHECKING:`` are annotations only and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "PolypSAMLib"
PACKAGE = LIBRARY / "polypsam"


def _modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (path, is a package)}`` of every module of the library."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(LIBRARY).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, package)
    return out


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: Path, package: bool, modules: dict) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for every polypsam import of a module."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_blocks(tree)
    here = name.split(".") if package else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "polypsam":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, "", node.lineno))
                else:
                    found.append((target, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "polypsam"]
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, (path, package) in modules.items():
        graph[name] = {target for target, _, _ in _imports(name, path, package, modules)
                       if target in modules and target != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_library_has_no_import_cycles():
    graph = _graph()
    assert "polypsam.mrml.operations" in graph and graph["polypsam.mrml.operations"], "graph read"
    assert _cycles(graph) == []


def test_a_cycle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_from_another_module():
    """A ``_name`` belongs to its module; the ``polypsam.mrml`` package's public API is what the
    Slicer module uses (and its modules use one another's public names only)."""
    modules = _modules()
    private = []
    for name, (path, package) in modules.items():
        for target, imported, line in _imports(name, path, package, modules):
            if imported.startswith("_") and not imported.startswith("__"):
                private.append(f"{path.relative_to(REPO)}:{line} imports {imported} from {target}")
    assert private == []
