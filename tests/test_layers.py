"""The import contract of the code base, read from the source with `ast` (nothing is imported).

Why: an import cycle makes start-up order matter and hides which module owns a concept; a layer
violation (the engine reaching into the HTTP layer, one route module reusing another's logic)
is how the generation logic once ended up inside a route. Every import counts, the ones inside
functions too (they run at call time and close the same cycles); only `if TYPE_CHECKING:`
imports are exempt, as they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("webui_api", "samplers")

# Cycles known today and owned by another change; each entry is one strongly connected group of
# modules that is tolerated as it stands (a new member or a new cycle still fails).
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    """Every module of the checked packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under `if TYPE_CHECKING:`."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if is_type_checking_block(node):
            stack.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def absolute_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def imported_modules(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The checked modules `module` imports: a `from pkg import name` counts as pkg.name when
    that is a module, else as pkg."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in import_nodes(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = absolute_base(module, is_package, node)
        for alias in node.names:
            candidate = f"{base}.{alias.name}" if base else alias.name
            targets.add(candidate if candidate in known else base)
    return {target for target in targets if target in known and target != module}


def import_graph() -> dict[str, set[str]]:
    known = source_modules()
    return {module: imported_modules(module, path, known) for module, path in known.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm, iterative (the graph has hundreds of nodes); groups of 2+ modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(frozenset(group))
    return groups


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(graph: dict[str, set[str]], importer: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items() if in_package(module, importer)
        for target in targets if any(in_package(target, banned) for banned in forbidden)
    )


def test_the_graph_sees_the_packages(graph):
    """Guard against a checker that silently checks nothing."""
    assert "webui_api.app" in graph and "samplers.registry" in graph
    assert "webui_api.scheduler" in graph["webui_api.app"]


def test_there_is_no_import_cycle(graph):
    cycles = [sorted(group) for group in strongly_connected(graph) if group not in KNOWN_CYCLES]
    assert cycles == []


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_function_level_and_relative_imports_are_read(tmp_path):
    source = "from . import sibling\n\ndef later():\n    from ..other import thing\n"
    tree = ast.parse(source)
    nodes = list(import_nodes(tree))
    bases = {absolute_base("pkg.sub.mod", False, node) for node in nodes}
    assert bases == {"pkg.sub", "pkg.other"}


def test_type_checking_imports_are_exempt():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from x import y\nelse:\n    import z\n"
    names = {getattr(node, "module", None) or node.names[0].name for node in import_nodes(ast.parse(source))}
    assert names == {"typing", "z"}


def test_samplers_import_no_webui_api(graph):
    assert violations(graph, "samplers", ("webui_api",)) == []


def third_party_roots(path: Path) -> set[str]:
    """The top-level names of the absolute imports of one file."""
    names: set[str] = set()
    for node in import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_jobs_import_no_framework():
    assert third_party_roots(ROOT / "webui_api" / "jobs.py") & {"torch", "fastapi", "pydantic", "starlette"} == set()


def test_engine_imports_no_http_or_generation_layer(graph):
    forbidden = ("webui_api.routes", "webui_api.app", "webui_api.serving", "webui_api.generation")
    assert violations(graph, "webui_api.engine", forbidden) == []


def test_generation_imports_no_routes(graph):
    assert violations(graph, "webui_api.generation", ("webui_api.routes", "webui_api.app")) == []


def test_generation_and_scripts_import_no_web_framework():
    """The generation layer and the scripts are called by routes and by the task runner alike."""
    found = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for package in ("generation", "builtin_scripts")
        for path in (ROOT / "webui_api" / package).rglob("*.py")
        for name in third_party_roots(path) if name in {"fastapi", "starlette"}
    )
    assert found == []


def test_no_route_module_imports_another(graph):
    """Route modules share only the package's helpers (routes/__init__)."""
    found = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items() if module.startswith("webui_api.routes.")
        for target in targets if target.startswith("webui_api.routes.") and target != module
    )
    assert found == []
