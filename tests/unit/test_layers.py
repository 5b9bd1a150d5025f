"""The layout tells the architecture (docs/architecture.md, "Layers"): checked on the source with ``ast``.

(a) The layers below the server never import ``sluice.server``: the stages, routing, resilience,
    observability, auth, the admin API, providers, state, store, upstream, config, ``_native``,
    ``context.py`` and ``errors.py`` are written against ``sluice.context``, and the server faces adapt
    to it.
(b) No two packages import each other, directly or round a longer circle.  A package is the first
    name under ``sluice`` (``sluice.pipeline.auth`` is "pipeline"); a top-level module
    (``context.py``, ``errors.py``, ``cli.py``, ``runner.py``) is a node of its own.

Every import counts: at module level, inside functions (the lazy ones that load a part only when
it is configured), and under ``if TYPE_CHECKING:`` (a circle for mypy is a circle in the design).

The tree had import circles between packages when these checks were written.  They are listed
below (``KNOWN_CIRCLES``), each with its reason; a test marked ``xfail(strict=True)`` stands for
each, so that the suite fails both when a new circle appears (``test_no_import_circle``) and when a
known one is fixed (its strict xfail then passes: take the entry out of the list).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "sluice"

# The layers below the server: a module here never imports sluice.server (check (a)).
LOWER = ("pipeline", "routing", "resilience", "auth", "admin", "observability", "providers", "state", "store",
         "upstream", "config", "_native", "context", "errors")

# (b) Known circles between two packages: (package, package it should not import) -> why.  The first
# package imports the second "upwards" (against the layering); the test of (b) leaves those edges out and
# requires what is left to have no circle at all.
KNOWN_CIRCLES: dict[tuple[str, str], str] = {}

# Circles that were broken, checked by name like the known ones (without xfail): the permission vocabulary is
# the config's (config.permissions), RBAC, IP rules and the credential are auth's, the admin API and its manager
# are admin's, the provider kinds and capabilities a config names are config.vocabulary's, the traceparent parser
# that the tracer and the pure log-line twin share is a bottom-floor module (sluice.traceparent).
FIXED_CIRCLES = (("auth", "pipeline"), ("config", "pipeline"), ("config", "providers"), ("_native", "observability"))


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. sluice.pipeline.auth
    imported: str  # the module it names (the longest prefix that is a module of the tree)
    line: int
    where: str  # "module", "function" or "TYPE_CHECKING"

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} (line {self.line}, {self.where})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def package_of(module: str) -> str:
    """sluice.pipeline.auth -> "pipeline"; sluice.context -> "context"; sluice (its __init__) -> "sluice"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sluice"


def _resolve(name: str) -> str:
    """The longest prefix of ``name`` that is a module of the tree (``from .x import Y``: Y may be a class)."""
    known = modules()
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, where: str) -> Iterator[tuple[ast.AST, str]]:
    """Every node under ``node`` with where it runs: at import, in a function, or only for the type checker."""
    for child in ast.iter_child_nodes(node):
        here = where
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and where == "module":
            here = "function"
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            yield child.test, where
            for stmt in child.body:
                yield stmt, "TYPE_CHECKING"
                yield from _walk(stmt, "TYPE_CHECKING")
            for stmt in child.orelse:
                yield stmt, where
                yield from _walk(stmt, where)
            continue
        yield child, here
        yield from _walk(child, here)


def imports_of(module: str) -> list[Import]:
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[Import] = []
    for node, where in _walk(ast.parse(path.read_text(), str(path)), "module"):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            names = [f"{source}.{alias.name}" for alias in node.names]
        for name in names:
            if name == "sluice" or name.startswith("sluice."):
                found.append(Import(module, _resolve(name), node.lineno, where))  # type: ignore[attr-defined]
    return found


@cache
def all_imports() -> tuple[Import, ...]:
    """Every import of a sluice module in the tree, once per (importer, imported, line)."""
    return tuple(dict.fromkeys(imp for module in modules() for imp in imports_of(module)))


def package_graph(imports: Iterable[Import]) -> dict[tuple[str, str], list[Import]]:
    """(package, package) -> the imports that make the edge."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in imports:
        a, b = package_of(imp.importer), package_of(imp.imported)
        if a != b:
            edges[a, b].append(imp)
    return dict(edges)


def find_cycle(edges: Iterable[tuple[str, str]]) -> list[str] | None:
    """A circle of the graph as [a, b, ..., a], or None (depth-first search, deterministic order)."""
    graph: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(edges):
        graph[a].append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def explain(cycle: list[str], edges: dict[tuple[str, str], list[Import]]) -> str:
    lines = [" -> ".join(cycle)]
    for a, b in pairwise(cycle):
        lines.append(f"  {a} -> {b}:")
        lines.extend(f"    {imp}" for imp in edges[a, b])
    return "\n".join(lines)


# -- the scanner itself ----------------------------------------------------------------------------

def test_the_scanner_sees_every_kind_of_import() -> None:
    found = {(i.importer, i.imported, i.where) for i in all_imports()}
    assert ("sluice.context", "sluice._native", "module") in found  # from ._native import ...
    assert ("sluice.server.app", "sluice.observability.tracing", "function") in found  # loaded when tracing is on
    assert ("sluice.server.routes", "sluice.server.app", "TYPE_CHECKING") in found
    assert ("sluice.server.routes", "sluice.pipeline.stage", "module") in found  # a class resolved to its module
    assert len(modules()) > 50


def test_find_cycle() -> None:
    assert find_cycle([("a", "b"), ("b", "c")]) is None
    assert find_cycle([("a", "b"), ("b", "c"), ("c", "a")]) == ["a", "b", "c", "a"]
    assert find_cycle([("x", "y"), ("y", "x"), ("a", "x")]) == ["x", "y", "x"]


# -- (a) nothing below the server imports it ----------------------------------------------------------

def server_imports_from_below() -> list[Import]:
    return [imp for imp in all_imports()
            if package_of(imp.importer) in LOWER and package_of(imp.imported) == "server"]


def test_lower_layers_do_not_import_server() -> None:
    found = [str(imp) for imp in server_imports_from_below()]
    assert not found, ("a layer below the server imports sluice.server (take what it needs from sluice.context, or "
                       "move it down):\n  " + "\n  ".join(found))


# -- (b) no circle between packages -----------------------------------------------------------------

def test_no_import_circle() -> None:
    edges = package_graph(all_imports())
    left = {edge: imps for edge, imps in edges.items() if edge not in KNOWN_CIRCLES}
    cycle = find_cycle(left)
    assert cycle is None, "an import circle between packages:\n" + explain(cycle, left)


@pytest.mark.parametrize(("upward", "downward"), [
    *(pytest.param(a, b, id=f"{a}<->{b}", marks=pytest.mark.xfail(strict=True, reason=reason))
      for (a, b), reason in KNOWN_CIRCLES.items()),
    *(pytest.param(a, b, id=f"{a}<->{b}") for a, b in FIXED_CIRCLES)])
def test_known_circle_gone(upward: str, downward: str) -> None:
    edges = package_graph(all_imports())
    mutual = (upward, downward) in edges and (downward, upward) in edges
    assert not mutual, f"{upward} and {downward} import each other:\n" + explain([upward, downward, upward], edges)


# -- the picture of docs/architecture.md -------------------------------------------------------------------

def test_the_picture_is_current() -> None:
    """docs/architecture.svg is what docs/draw_architecture.py draws from the route table today."""
    import importlib.util

    script = SRC.parents[1] / "docs" / "draw_architecture.py"
    spec = importlib.util.spec_from_file_location("draw_architecture", script)
    assert spec is not None and spec.loader is not None
    draw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(draw)
    committed = (SRC.parents[1] / "docs" / "architecture.svg").read_text()
    assert draw.render() == committed, "docs/architecture.svg is out of date: run .venv/bin/python " \
                                       "docs/draw_architecture.py and commit the picture"
