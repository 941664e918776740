"""The structure the next capabilities build on: no import cycle in product code (lazy imports included), no file
of product code over 400 lines, and no dependency's private module imported outside tasks/compat.py."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import PROJECT

PACKAGES = ("agentbox", "flows", "tasks", "deployments")
MAX_LINES = 400
COMPAT = "tasks/compat.py"


def product_files() -> dict[str, Path]:
    """Module name -> file, for every module of product code."""
    files = {}
    for package in PACKAGES:
        for path in sorted((PROJECT / package).rglob("*.py")):
            parts = path.relative_to(PROJECT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def runtime_imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names) of every import that can run: at the top, in functions, in `if __name__ == "__main__"`
    blocks; not those under `if TYPE_CHECKING:`."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, []) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, [alias.name for alias in child.names]))
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports, counting a package's __init__ for every module imported in it."""
    files = product_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for module, names in runtime_imports(ast.parse(path.read_text())):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in files] or [module]
            for target in targets:
                parts = target.split(".")
                for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                    prefix = ".".join(parts[:depth])
                    if prefix in files and prefix != name and not name.startswith(prefix + "."):
                        graph[name].add(prefix)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_product_code_has_no_import_cycle():
    graph = import_graph()
    assert "agentbox.sandboxes.registry" in graph["agentbox.settings"]  # the graph sees imports at all
    assert "flows.commands.notion_to_github" in graph["flows.notion_to_github"]  # the __main__ block's too
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_file_of_product_code_is_over_400_lines():
    long = {str(path.relative_to(PROJECT)): n for path in product_files().values()
            if "rehearsal" not in path.parts and (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_private_modules_of_dependencies_are_imported_only_by_the_compat_module():
    private = []
    for path in product_files().values():
        for module, _ in runtime_imports(ast.parse(path.read_text())):
            if module.split(".")[0] not in PACKAGES and any(p.startswith("_") and not p.endswith("__") for p in module.split(".")):
                private.append(f"{path.relative_to(PROJECT)}: {module}")
    assert [p for p in private if not p.startswith(COMPAT)] == []
