"""Which package may import which (docs/architecture.md, "Packages").

Every module's imports are read with ``ast``; nothing is executed. An import
under ``if TYPE_CHECKING:`` is left out everywhere (it never runs). An import
inside a function is counted for the drivers' rule and for cycles, but not
for the uplink's rule, which is about what the uplink loads by importing its
modules (a function of a shared module may reach further on the station).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Our packages: the ones the distribution installs (a new one is checked too).
PACKAGES = tuple(name.rstrip("*") for name in tomllib.loads(
    (ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"][
    "find"]["include"])


@dataclass(frozen=True)
class Import:
    target: str      # the project module imported
    lazy: bool       # inside a function: runs when called, not when imported
    line: int


def _module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _module_files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(body: list[ast.stmt], lazy: bool = False
                  ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, lazy
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _import_nodes(node.orelse, lazy)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _import_nodes(node.body, True)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    yield from _import_nodes(
                        [c if isinstance(c, ast.stmt) else _as_block(c) for c in children],
                        lazy)


def _as_block(node: ast.AST) -> ast.stmt:
    # An ``except`` handler or a ``case``: its body as an ``if True:`` block.
    return ast.If(test=ast.Constant(True), body=getattr(node, "body", []), orelse=[])


def _project_module(name: str) -> str | None:
    """The project module ``name`` loads (``a.b.c`` → ``a.b`` when ``c`` is a name in it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    for node, lazy in _import_nodes(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            target = _project_module(name)
            if target is not None and target != module:
                found.append(Import(target, lazy, node.lineno))
    return found


IMPORTS = {module: _imports_of(module) for module in MODULES}


def _package(module: str) -> str:
    return module.partition(".")[0]


def test_the_analysis_sees_every_package_and_its_imports() -> None:
    assert {"firmware_py", "drivers", "camera", "center"} <= set(PACKAGES)
    assert {_package(m) for m in MODULES} == set(PACKAGES)
    assert "firmware_py.runtime" in {i.target for i in IMPORTS["firmware_py.uplink"]
                                     if not i.lazy}
    assert "camera.daemon" in {i.target for i in IMPORTS["firmware_py.components"] if i.lazy}


def test_drivers_import_nothing_of_the_unit_camera_or_centre() -> None:
    wrong = [f"{m}:{i.line} imports {i.target}"
             for m, imports in IMPORTS.items() if _package(m) == "drivers"
             for i in imports if _package(i.target) != "drivers"]
    assert wrong == []


#: The camera's modules that need only frames, files and plain values: no unit code.
CAMERA_STANDALONE = ("camera", "camera.exc", "camera.capture", "camera.motion", "camera.tamper",
                     "camera.avi", "camera.files")


def test_the_cameras_plain_modules_import_nothing_of_the_unit() -> None:
    wrong = [f"{m}:{i.line} imports {i.target}" for m in CAMERA_STANDALONE
             for i in IMPORTS[m] if _package(i.target) != "camera"]
    assert wrong == []


def test_the_uplinks_modules_import_nothing_from_drivers_or_camera() -> None:
    """Invariant 4: the network process has no hardware code."""
    seen: dict[str, str] = {}   # module -> the module that imports it
    todo = ["firmware_py.uplink"]
    seen["firmware_py.uplink"] = ""
    while todo:
        module = todo.pop()
        for i in IMPORTS[module]:
            if not i.lazy and i.target not in seen:
                seen[i.target] = f"{module}:{i.line}"
                todo.append(i.target)
    wrong = [f"{m} (from {via})" for m, via in seen.items()
             if _package(m) in ("drivers", "camera")]
    assert wrong == []
    assert "firmware_py.journal" in seen and "firmware_py.commands" in seen


def test_the_centre_reaches_no_daemon() -> None:
    """The centre's tools share the wire code, never a component (all of which
    derive from the runtime's), not even through an import inside a function."""
    reached = {m for m in MODULES if _package(m) == "center"}
    todo = list(reached)
    while todo:
        for i in IMPORTS[todo.pop()]:
            if i.target not in reached:
                reached.add(i.target)
                todo.append(i.target)
    daemons = [m for m in reached
               if m in ("firmware_py.runtime", "firmware_py.components") or
               _package(m) == "camera"]
    assert daemons == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in {i.target for i in IMPORTS[v]}:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in MODULES:
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles_not_even_through_an_import_inside_a_function() -> None:
    assert _cycles() == []


def test_one_start_up_table_names_the_components_and_the_runtime_imports_none() -> None:
    from firmware_py import components, runtime

    assert components.COMPONENT_NAMES == ("station", "camera", "uplink")
    assert {i.target for i in IMPORTS["firmware_py.runtime"]}.isdisjoint(
        {"firmware_py.components", "firmware_py.station", "firmware_py.uplink",
         "camera.daemon"})
    assert not hasattr(runtime, "COMPONENT_NAMES")


def test_the_cli_registers_every_subcommand_of_its_table() -> None:
    from firmware_py import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert commands is not None
    for name, module in cli.SUBCOMMANDS:
        assert name in commands, f"{module.__name__} did not add {name!r}"
    # The table is real imports: the CLI's module names no module by a string.
    text = MODULES["firmware_py.cli"].read_text(encoding="utf-8")
    assert "import_module" not in text and "__import__" not in text
