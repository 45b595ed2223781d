"""The house's contract, checked over the source (tests/architecture.py reads it with ``ast``).

- Layers import one way: the plugin SDK (``sdk``, ``model``, ``ops``, ``runtimes``) imports
  nothing above it; hardware knowledge imports the SDK; the engine imports both; conformance
  imports the engine; the front-ends (``cli``, ``serving``) import anything.
- A plugin imports the SDK only, never another plugin.
- No import cycle, counting imports inside functions.

Imports under ``if TYPE_CHECKING:`` never run: they name a type for an annotation, and
count for neither rule.
- No module reaches into another's private (underscore) names.
- No Python file over 600 lines.

Each rule has a list of the exceptions that still stand, each with the reason. The list can
only shrink: a new exception fails, and so does one that no longer occurs (remove it).
"""

from __future__ import annotations

import pytest

from tests import architecture as arch

#: Layer of a module: the longest matching prefix.
LAYERS = {
    "backplane.sdk": "sdk", "backplane.model": "sdk", "backplane.ops": "sdk",
    "backplane.runtimes": "sdk", "backplane.hwdb": "sdk", "backplane.kernels": "sdk",
    "backplane.hardware": "hardware",
    "backplane.engine": "engine",
    "backplane.conformance": "conformance",
    "backplane.cli": "frontend", "backplane.serving": "frontend",
    "backplane.pytorch": "frontend",
    "backplane.__main__": "frontend",
    "backplane.plugins": "plugins",
    "backplane": "facade",
}
#: What each layer may import. The facade (``backplane/__init__.py``) re-exports the public
#: API; plugins may take from it only what the SDK defines (checked by name below).
ALLOWED = {
    "sdk": {"sdk"},
    "plugins": {"sdk", "facade"},
    "hardware": {"sdk", "hardware"},
    "engine": {"sdk", "hardware", "engine", "facade"},
    "conformance": {"sdk", "hardware", "engine", "conformance", "facade"},
    "frontend": {"sdk", "hardware", "engine", "conformance", "frontend", "facade", "plugins"},
    "facade": {"sdk", "engine"},
}

#: Exceptions still standing: (importer, imported) -> why. Issue 19 removes them.
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {}
#: Import cycles still standing (each a set of modules).
CYCLE_EXCEPTIONS: list[frozenset[str]] = []
#: ``module: text`` of private names still reached across modules.
PRIVATE_EXCEPTIONS: set[str] = set()
#: Files still over 600 lines.
LONG_FILE_EXCEPTIONS: set[str] = set()
#: Names of private attributes that belong to other libraries' documented APIs.
FOREIGN_PRIVATE = {"_exit", "_run", "_NodeTestCases", "_fields", "_replace", "_asdict",
                   "_getframe", "_current_frames",
                   "_version"}  # torch.Tensor's version counter: how in-place writes are seen


@pytest.fixture(scope="module")
def modules():
    return arch.modules()


def layer_of(name: str) -> str:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def facade_sdk_names(modules) -> set[str]:
    """Names ``backplane/__init__.py`` takes from SDK modules (what plugins may import)."""
    return {name for imp in modules["backplane"].imports if layer_of(imp.target) == "sdk"
            for name in imp.names} | {"__version__"}


def layer_violations(modules) -> set[tuple[str, str]]:
    sdk_names = facade_sdk_names(modules)
    found = set()
    for module in modules.values():
        source = layer_of(module.name)
        for imp in module.imports:
            if imp.type_only:  # an annotation's import never runs
                continue
            target = layer_of(imp.target)
            if source == "plugins" and target == "plugins":
                if arch.plugin_of(imp.source) != arch.plugin_of(imp.target):
                    found.add((imp.source, imp.target))
                continue
            if source == target and source != "facade":
                continue
            if target not in ALLOWED[source]:
                found.add((imp.source, imp.target))
            elif source == "plugins" and target == "facade" and set(imp.names) - sdk_names:
                found.add((imp.source, f"backplane:{','.join(sorted(set(imp.names) - sdk_names))}"))
    return found


def private_uses(modules) -> set[str]:
    uses = {f"{imp.source}: from {imp.target} import "
            + ", ".join(n for n in imp.names if n.startswith("_") and not n.startswith("__"))
            for imp in arch.private_imports(modules)}
    uses |= {f"{name}: {text}" for name, _, text in arch.private_attribute_uses(modules)
             if text.rpartition(".")[2] not in FOREIGN_PRIVATE}
    return uses


def check(found: set, allowed: set, what: str) -> None:
    new = sorted(found - allowed)
    stale = sorted(allowed - found)
    assert not new, f"new {what} (fix it; the contract is in tests/test_architecture.py): {new}"
    assert not stale, f"{what} no longer found: remove from the exceptions: {stale}"


def test_every_module_is_in_a_layer(modules):
    for name in modules:
        assert layer_of(name) in ALLOWED


def test_layers_import_one_way_and_plugins_only_the_sdk(modules):
    check(layer_violations(modules), set(LAYER_EXCEPTIONS), "layer violations")


def test_no_plugin_imports_another(modules):
    assert arch.cross_plugin_imports(modules) == []


def test_no_import_cycles(modules):
    check({frozenset(c) for c in arch.cycles(modules)}, set(CYCLE_EXCEPTIONS), "import cycles")


def test_no_module_reaches_into_anothers_private_names(modules):
    check(private_uses(modules), PRIVATE_EXCEPTIONS, "private accesses across modules")


def test_no_python_file_is_over_600_lines(modules):
    check({name for name, _ in arch.long_files(modules)}, LONG_FILE_EXCEPTIONS,
          "files over 600 lines")


def test_a_function_local_import_says_why_it_waits(modules):
    """An import inside a function defers a cost (a vendor runtime, the hwdb's pydantic,
    what discovery or a CLI command must not load); a comment on it or just above its
    group says which. One that defers nothing belongs at module level."""
    import ast

    silent = []
    for module in modules.values():
        lines = module.path.read_text().splitlines()
        spans = {n: (n.lineno, n.end_lineno) for n in ast.walk(module.tree)
                 if isinstance(n, (ast.Import, ast.ImportFrom))}
        in_import = {i for a, b in spans.values() for i in range(a, b + 1)}
        for imp in module.imports:
            if not imp.local or imp.type_only or "#" in lines[imp.line - 1]:
                continue
            above = imp.line - 1
            while above in in_import or (above > 0 and not lines[above - 1].strip()
                                         and above - 1 in in_import):
                above -= 1
            if not (above > 0 and lines[above - 1].strip().startswith("#")):
                silent.append(f"{module.name}:{imp.line} imports {imp.target}")
    assert not silent, f"function-local imports with no reason given: {silent}"


def test_the_checker_sees_function_local_imports_and_cycles(tmp_path, monkeypatch):
    """The checker itself: a cycle made only by a function-local import is found."""
    pkg = tmp_path / "core"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from backplane import b\n")
    (pkg / "b.py").write_text("def f():\n    from backplane.a import _x\n")
    monkeypatch.setattr(arch, "ROOT", tmp_path)
    monkeypatch.setattr(arch, "PACKAGE_DIRS", {"backplane": "core"})
    found = arch.modules()
    assert [imp.local for imp in found["backplane.b"].imports] == [True]
    assert arch.cycles(found) == [["backplane.a", "backplane.b"]]
    assert [imp.names for imp in arch.private_imports(found)] == [("_x",)]
