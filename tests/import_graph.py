"""potwatch's imports among its own modules, read from the source with `ast` (nothing is imported).

Modules are found through pyproject.toml's package-dir (potwatch.compression is compression/ and so on).
An edge records where the import sits: at module level (runs when the module loads) or inside a function
(runs when the function is called). Importing one's own enclosing package is not an edge: Python has
loaded it before the module's first line runs, so it can close no circle."""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = "in a function" if self.in_function else "at module level"
        return f"{self.importer} -> {self.imported} (line {self.line}, {where})"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every potwatch module name and its file."""
    mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules = {}
    for package, folder in mapping.items():
        for path in sorted((root / folder).glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _imports(tree: ast.AST, in_function: bool = False):
    """(node, in_function) for every import statement, walking into functions and classes."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _imports(node, inner)


def _targets(node: ast.Import | ast.ImportFrom, package: str, modules: dict[str, Path]) -> list[str]:
    """The potwatch modules an import statement loads (the deepest named one of each dotted name)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    base = node.module or ""
    if node.level:  # relative: from . import x / from ..y import z
        parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    if not found and base in modules:
        found = [base]
    return found


def import_edges(root: Path = ROOT) -> list[Edge]:
    modules = module_files(root)
    edges = []
    for name, path in modules.items():
        package = name if path.stem == "__init__" else name.rpartition(".")[0]
        enclosing = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for node, in_function in _imports(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, package, modules):
                if target != name and target not in enclosing:
                    edges.append(Edge(name, target, node.lineno, in_function))
    return edges


def find_circle(edges: list[Edge]) -> list[Edge] | None:
    """One circle of imports (its edges in order), or None when there is none."""
    out: dict[str, list[Edge]] = {}
    for edge in edges:
        out.setdefault(edge.importer, []).append(edge)
    state: dict[str, str] = {}  # "open" while on the path, "done" once fully explored
    path: list[Edge] = []

    def visit(module: str) -> list[Edge] | None:
        state[module] = "open"
        for edge in out.get(module, []):
            if state.get(edge.imported) == "open":
                start = next(i for i, e in enumerate(path) if e.importer == edge.imported) if path else 0
                return path[start:] + [edge]
            if edge.imported not in state:
                path.append(edge)
                circle = visit(edge.imported)
                if circle:
                    return circle
                path.pop()
        state[module] = "done"
        return None

    for module in sorted(out):
        if module not in state:
            circle = visit(module)
            if circle:
                return circle
    return None
