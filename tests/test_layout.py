"""The package layout (docs/architecture.md): a folder per part, and no import circle between streamd's modules."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "streamd"
FOLDERS = ("daemon", "colour", "infer", "model", "tools")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported(tree: ast.AST, name: str, modules: set[str]) -> set[str]:
    """The streamd modules `name` imports, at module level or in a function; not those only for type checking."""
    package = name if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists() else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from streamd.x import y`: an edge to streamd.x, or to streamd.x.y where y is a module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # importing streamd.a.b runs streamd.a's __init__ too
    edges = set()
    for target in found:
        parts = target.split(".")
        edges.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return {m for m in edges if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported(ast.parse(path.read_text(), str(path)), name, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_streamd_imports_form_no_circle():
    graph = import_graph()
    assert len(graph) > 30 and sum(map(len, graph.values())) > 100  # the graph found the imports
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_each_part_has_its_folder():
    graph = import_graph()
    for folder in FOLDERS:
        assert (PACKAGE / folder / "__init__.py").is_file(), folder
        assert sum(m.startswith(f"streamd.{folder}.") for m in graph) >= 2, folder


def test_imports_in_functions_count_and_those_for_type_checking_do_not():
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from streamd.b import B\n"
              "def f():\n    from streamd.c import d\n")
    modules = {"streamd.a", "streamd.b", "streamd.c", "streamd.c.d"}
    assert imported(ast.parse(source), "streamd.a", modules) == {"streamd.c", "streamd.c.d"}


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
