"""The import graph of backplane's own modules, read from the source with ``ast``.

tests/test_architecture.py holds the contract (layers, no cycles, no plugin importing
another, no private member reached across modules, no file over 600 lines). Run this file
to print the figures: ``python tests/architecture.py``.

Every import counts, at module level or inside a function: a function-local import defers
the cost, not the dependency.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Source folders and the package each one installs as (pyproject's package-dir).
PACKAGE_DIRS = {"backplane": "core", "backplane.plugins": "plugins", "backplane.hwdb": "hwdb",
                "backplane.kernels": "kernels", "backplane.conformance": "conformance"}
MAX_LINES = 600


@dataclass
class Import:
    source: str          # the importing module
    target: str          # the most specific backplane module the statement names
    names: tuple[str, ...]  # names taken from it (``from m import a, b``), else ()
    line: int
    local: bool          # inside a function (deferred), not at module level
    type_only: bool = False  # under ``if TYPE_CHECKING:``: never runs


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    imports: list[Import] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return len(self.path.read_text().splitlines())


def _module_name(path: Path) -> str | None:
    for package, folder in sorted(PACKAGE_DIRS.items(), key=lambda kv: -len(kv[1])):
        base = ROOT / folder
        if path.is_relative_to(base):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([package, *parts])
    return None


def modules() -> dict[str, Module]:
    """Every backplane module, by its installed name."""
    found: dict[str, Module] = {}
    for folder in PACKAGE_DIRS.values():
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = _module_name(path)
            if name is None or name in found:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            found[name] = Module(name, path, path.name == "__init__.py", tree)
    for module in found.values():
        module.imports = list(_imports(module, found))
    return found


def _resolve(module: Module, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def _function_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.walk(node):
                if child is not node:
                    inside.add(id(child))
    return inside


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                inside.update(id(child) for child in ast.walk(stmt))
    return inside


def _imports(module: Module, known: dict[str, Module]):
    local = _function_nodes(module.tree)
    typing_only = _type_checking_nodes(module.tree)
    for node in ast.walk(module.tree):
        typed = id(node) in typing_only
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known_prefix(alias.name, known)
                if target:
                    yield Import(module.name, target, (), node.lineno, id(node) in local,
                                 typed)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module)
            if not (base == "backplane" or base.startswith("backplane.")):
                continue
            plain = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:   # ``from package import submodule``
                    yield Import(module.name, sub, (), node.lineno, id(node) in local, typed)
                else:
                    plain.append(alias.name)
            if plain or not node.names:
                target = _known_prefix(base, known)
                if target:
                    yield Import(module.name, target, tuple(plain), node.lineno,
                                 id(node) in local, typed)


def _known_prefix(name: str, known: dict[str, Module]) -> str | None:
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def plugin_of(name: str) -> str | None:
    """``backplane.plugins.ort.x`` -> ``ort``."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["backplane", "plugins"] else None


def cross_plugin_imports(found: dict[str, Module]) -> list[Import]:
    return [imp for module in found.values() for imp in module.imports
            if plugin_of(imp.source) and plugin_of(imp.target)
            and plugin_of(imp.source) != plugin_of(imp.target)]


def cycles(found: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative), over
    the imports that run: module-level and function-local, not those only for typing."""
    graph = {name: sorted({imp.target for imp in module.imports
                           if imp.target != name and not imp.type_only})
             for name, module in found.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        result.append(sorted(component))
    return result


def private_imports(found: dict[str, Module]) -> list[Import]:
    """``from other_module import _private``: a module reaching into another's privates."""
    return [imp for module in found.values() for imp in module.imports
            if any(n.startswith("_") and not n.startswith("__") for n in imp.names)]


def private_attribute_uses(found: dict[str, Module]) -> list[tuple[str, int, str]]:
    """``obj._member`` where obj is not ``self`` or ``cls``: reaching into another object.

    A heuristic over names: a class may use the privates it defines on any of its
    instances (``other._x`` inside the class that sets ``self._x``); any other use of an
    underscore member through something else than ``self``/``cls`` counts.
    """
    uses = []
    for module in found.values():
        classes = {node.name for node in ast.walk(module.tree) if isinstance(node, ast.ClassDef)}
        own: dict[int, set[str]] = {}  # id(attribute node) -> privates its class defines
        for cls in (n for n in ast.walk(module.tree) if isinstance(n, ast.ClassDef)):
            defined = {t.attr for t in ast.walk(cls) if isinstance(t, ast.Attribute)
                       and isinstance(t.ctx, ast.Store) and isinstance(t.value, ast.Name)
                       and t.value.id == "self"}
            defined |= {f.name for f in cls.body
                        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for t in ast.walk(cls):
                if isinstance(t, ast.Attribute):
                    own.setdefault(id(t), set()).update(defined)
        for node in ast.walk(module.tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and (owner.id in ("self", "cls") or owner.id in classes):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) \
                    and owner.func.id == "super":
                continue
            if node.attr in own.get(id(node), ()):
                continue
            uses.append((module.name, node.lineno, f"{ast.unparse(owner)}.{node.attr}"))
    return uses


def long_files(found: dict[str, Module]) -> list[tuple[str, int]]:
    return sorted(((m.name, m.lines) for m in found.values() if m.lines > MAX_LINES),
                  key=lambda item: -item[1])


def line_counts(found: dict[str, Module]) -> dict[str, int]:
    """Lines per package (a module counts towards its parent package)."""
    counts: dict[str, int] = {}
    for module in found.values():
        package = module.name if module.is_package else module.name.rpartition(".")[0]
        counts[package] = counts.get(package, 0) + module.lines
    return dict(sorted(counts.items()))


def main() -> int:
    found = modules()
    local = sum(imp.local for m in found.values() for imp in m.imports)
    total = sum(len(m.imports) for m in found.values())
    print(f"modules: {len(found)}; backplane imports: {total}, function-local: {local}")
    cross = cross_plugin_imports(found)
    print(f"cross-plugin imports: {len(cross)}")
    for imp in cross:
        print(f"  {imp.source}:{imp.line} -> {imp.target} {', '.join(imp.names)}")
    for component in cycles(found):
        print(f"cycle ({len(component)}): {' '.join(component)}")
    privates = private_imports(found)
    print(f"private names imported across modules: {len(privates)}")
    uses = private_attribute_uses(found)
    print(f"private attributes used through another object: {len(uses)}")
    if "-v" in sys.argv:
        for imp in privates:
            print(f"  {imp.source}:{imp.line} from {imp.target} import {', '.join(imp.names)}")
        for name, line, text in uses:
            print(f"  {name}:{line} {text}")
    print("files over 600 lines:")
    for name, lines in long_files(found):
        print(f"  {lines:5d} {name}")
    print("lines per package:")
    for package, lines in line_counts(found).items():
        print(f"  {lines:6d} {package}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
