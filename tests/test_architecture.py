"""The shape of the package, read from its source with `ast` (nothing is imported or run):

* the import graph of `dgmlang` modules has no cycle -- imports inside functions and methods
  (the lazy ones) included, since a cycle hidden behind a lazy import is still a cycle;
* no module reads another module's underscore-private name (``from dgmlang.x import _y``,
  ``x._y`` on a dgmlang module imported in that file, or a private module ``dgmlang.x._y``);
* the front end (parse, check, graph, inverse, facts, the DSL, ...) never imports torch or
  Pyro at module level, itself or through the dgmlang modules it imports at module level
  (the packages above a module included: importing ``dgmlang.check`` runs
  ``dgmlang/__init__.py``), so ``dgm check`` starts without them.

Edges follow what Python runs: ``from dgmlang.x import y`` is an edge to the module
``dgmlang.x.y`` when that is a module, else to ``dgmlang.x``; a package's ``__init__.py``
is the package; relative imports are resolved. Imports under ``if TYPE_CHECKING:`` never run
and are left out.
"""
from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dgmlang"

#: The stages before the compiled layer (and every check_* module or check package module).
FRONT_END = ("ast", "parse", "check", "graph", "inverse", "facts", "ir", "source", "errors",
             "distributions", "printer", "dsl", "frontend")
HEAVY = ("torch", "pyro")


@dataclass(frozen=True)
class Edge:
    """One import of a dgmlang module: where it is and whether it runs at import time."""

    source: str
    target: str
    line: int
    lazy: bool  # inside a function or method body

    def where(self) -> str:
        return f"{module_path(self.source)}:{self.line}{' (inside a function)' if self.lazy else ''}"


@dataclass
class ModuleImports:
    """What one module imports: dgmlang edges, third-party roots, private names it reads."""

    name: str
    edges: list[Edge] = field(default_factory=list)
    external: list[tuple[str, int, bool]] = field(default_factory=list)  # (root, line, lazy)
    private_reads: list[tuple[int, str]] = field(default_factory=list)  # (line, what)


def module_path(name: str) -> str:
    return _PATHS.get(name, name)


def discover(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name; a package's __init__ is the package."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Reader(ast.NodeVisitor):
    def __init__(self, name: str, is_package: bool, known: set[str]):
        self.out = ModuleImports(name)
        self.name, self.is_package, self.known = name, is_package, known
        self.depth = 0
        self.aliases: dict[str, str] = {}  # a local name bound to a dgmlang module
        self.seen: set[tuple[str, int, str]] = set()

    # -- scopes
    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node):
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    # -- imports
    def _owner(self, dotted: str) -> str:
        """The longest prefix of `dotted` that is a module of the package."""
        parts = dotted.split(".")
        while parts and ".".join(parts) not in self.known:
            parts.pop()
        return ".".join(parts) or "dgmlang"

    def _edge(self, target: str, line: int, what: str) -> None:
        if target != self.name and (target, line, what) not in self.seen:
            self.seen.add((target, line, what))
            self.out.edges.append(Edge(self.name, target, line, self.depth > 0))
            rest = what.split(".")[1:]  # the components below "dgmlang"
            if any(_is_private(part) for part in rest):
                self.out.private_reads.append((line, f"imports {what}"))

    def visit_Import(self, node):
        for alias in node.names:
            root = alias.name.split(".")[0]
            if root == "dgmlang":
                self._edge(self._owner(alias.name), node.lineno, alias.name)
                if alias.asname:
                    self.aliases[alias.asname] = self._owner(alias.name)
                else:
                    self.aliases["dgmlang"] = "dgmlang"
            else:
                self.out.external.append((root, node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node):
        if node.level:
            parts = self.name.split(".")
            if not self.is_package:
                parts = parts[:-1]
            if node.level > 1:
                parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base.split(".")[0] != "dgmlang":
            self.out.external.append((base.split(".")[0], node.lineno, self.depth > 0))
            return
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.known:  # a submodule
                self._edge(sub, node.lineno, sub)
                self.aliases[alias.asname or alias.name] = sub
            else:
                owner = self._owner(base)
                self._edge(owner, node.lineno, base)
                if owner != self.name and _is_private(alias.name):
                    self.out.private_reads.append(
                        (node.lineno, f"from {base} import {alias.name}"))

    # -- attribute reads on modules, after every alias is known
    def module_of(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self.module_of(node.value)
            if owner is not None and f"{owner}.{node.attr}" in self.known:
                return f"{owner}.{node.attr}"
        return None

    def read_attributes(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                owner = self.module_of(node.value)
                if owner is not None and owner != self.name:
                    self.out.private_reads.append(
                        (node.lineno, f"reads {ast.unparse(node)} (module {owner})"))


def read_module(name: str, source: str, *, is_package: bool, known: set[str]) -> ModuleImports:
    """The imports of one module, from its source text."""
    tree = ast.parse(source)
    reader = _Reader(name, is_package, known)
    reader.visit(tree)
    reader.read_attributes(tree)
    return reader.out


def read_package(modules: dict[str, Path]) -> dict[str, ModuleImports]:
    known = set(modules)
    return {
        name: read_module(name, path.read_text(encoding="utf-8"),
                          is_package=path.name == "__init__.py", known=known)
        for name, path in modules.items()
    }


def import_graph(imports: dict[str, ModuleImports], *, module_level_only: bool = False) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(imports)
    for info in imports.values():
        for edge in info.edges:
            if module_level_only and edge.lazy:
                continue
            if graph.has_edge(edge.source, edge.target):
                graph.edges[edge.source, edge.target]["imports"].append(edge)
            else:
                graph.add_edge(edge.source, edge.target, imports=[edge])
    return graph


def describe_cycles(graph: nx.DiGraph) -> list[str]:
    """One cycle per strongly connected component, each edge with the line that makes it."""
    lines = []
    for component in sorted(nx.strongly_connected_components(graph), key=sorted):
        if len(component) < 2:
            continue
        cycle = nx.find_cycle(graph.subgraph(component))
        steps = [f"{a} -> {b}  [{', '.join(e.where() for e in graph.edges[a, b]['imports'])}]"
                 for a, b in cycle]
        lines.append(f"cycle through {', '.join(sorted(component))}:\n    " + "\n    ".join(steps))
    return lines


_MODULES = discover()
_PATHS = {name: str(path.relative_to(ROOT)) for name, path in _MODULES.items()}
_IMPORTS = read_package(_MODULES)


# ---------------------------------------------------------------- the package's shape


def test_no_import_cycle_lazy_imports_included():
    cycles = describe_cycles(import_graph(_IMPORTS))
    assert not cycles, "import cycles among dgmlang modules:\n" + "\n".join(cycles)


def test_no_module_reads_another_modules_private_names():
    found = [f"{module_path(name)}:{line}: {what}"
             for name, info in sorted(_IMPORTS.items()) for line, what in info.private_reads]
    assert not found, "private names read across modules:\n  " + "\n  ".join(found)


def _front_end(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and (parts[1] in FRONT_END or parts[1].startswith("check_"))


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_front_end_never_imports_torch_or_pyro():
    graph = import_graph(_IMPORTS, module_level_only=True)
    front = sorted(n for n in _MODULES if _front_end(n))
    assert {"dgmlang.parse", "dgmlang.check", "dgmlang.frontend", "dgmlang.dsl"} <= set(front)
    reached: dict[tuple[str, int, str], list[list[str]]] = {}  # heavy import -> chains to it
    for start in front:
        # breadth first over module-level imports; a module also runs its parent packages
        came_from: dict[str, str | None] = {start: None}
        queue = deque([start])
        while queue:
            current = queue.popleft()
            for nxt in [*_parents(current), *graph.successors(current)]:
                if nxt in _MODULES and nxt not in came_from:
                    came_from[nxt] = current
                    queue.append(nxt)
            for root, line, lazy in _IMPORTS[current].external:
                if root in HEAVY and not lazy:
                    chain, at = [], current
                    while at is not None:
                        chain.append(at)
                        at = came_from[at]
                    reached.setdefault((current, line, root), []).append(chain[::-1])
    problems = [
        f"{module_path(module)}:{line} imports {root} at module level, reached from "
        f"{', '.join(sorted(chain[0] for chain in chains))} "
        f"(e.g. {' -> '.join(min(chains, key=len))})"
        for (module, line, root), chains in sorted(reached.items())
    ]
    assert not problems, "the front end imports torch or pyro:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------- the reader itself


def test_the_reader_sees_lazy_relative_aliased_and_private_imports():
    known = {"dgmlang", "dgmlang.a", "dgmlang.b", "dgmlang.pkg", "dgmlang.pkg.c", "dgmlang.pkg._d"}
    sources = {
        "dgmlang.a": "import torch\ndef f():\n    from dgmlang.b import _helper\n",
        "dgmlang.b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import dgmlang.a\n"
                     "import dgmlang.pkg.c as c\nx = c._secret + c.__name__\n",
        "dgmlang.pkg.c": "from . import _d\nfrom .. import a\n",
        "dgmlang.pkg": "from dgmlang.pkg.c import value\n",
        "dgmlang.pkg._d": "",
        "dgmlang": "",
    }
    imports = {name: read_module(name, text, is_package=name in ("dgmlang", "dgmlang.pkg"),
                                 known=known) for name, text in sources.items()}
    assert [(e.target, e.lazy) for e in imports["dgmlang.a"].edges] == [("dgmlang.b", True)]
    assert imports["dgmlang.a"].external == [("torch", 1, False)]
    assert [e.target for e in imports["dgmlang.b"].edges] == ["dgmlang.pkg.c"]  # not TYPE_CHECKING
    assert [e.target for e in imports["dgmlang.pkg.c"].edges] == ["dgmlang.pkg._d", "dgmlang.a"]
    assert [what for _, what in imports["dgmlang.a"].private_reads] == ["from dgmlang.b import _helper"]
    assert [what for _, what in imports["dgmlang.b"].private_reads] == [
        "reads c._secret (module dgmlang.pkg.c)"]
    assert [what for _, what in imports["dgmlang.pkg.c"].private_reads] == ["imports dgmlang.pkg._d"]
    (cycle,) = describe_cycles(import_graph(imports))
    assert "dgmlang.a, dgmlang.b, dgmlang.pkg.c" in cycle and "(inside a function)" in cycle
