"""The package's shape, read from its source: no module-level import cycle, dependencies pointing one way, and
method names compared only inside the methods package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "quantlab"

# Lower layers never import higher ones, at module level or inside a function: dependencies point down this list.
LAYERS = [
    ("errors", "statistics", "store.keys", "plugins", "registry"),
    ("formats", "models", "methods", "store", "chat"),
    ("recipe", "plan", "presets", "calibration", "export", "runtimes"),
    ("stages", "bench"),
    ("pipeline",),
    ("cli", "__main__", "__init__"),
    ("zoo",),  # a plugin: it may use everything; nothing imports it (plugins.BUILTIN names it as data)
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("quantlab",) + (parts[:-1] if parts[-1] == "__init__" else parts))
        modules[name] = path
    return modules


def _imports(path: Path, modules: dict[str, Path], module_level: bool) -> set[str]:
    """The quantlab modules a file imports (``module_level``: only statements run at import time)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("quantlab")}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantlab") and node.level == 0
        ):
            for alias in node.names:  # `from quantlab.x import y`: y may be a submodule
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {name for name in found if name in modules}


def _layer(module: str) -> int:
    short = module.removeprefix("quantlab").lstrip(".") or "__init__"
    best = None
    for level, names in enumerate(LAYERS):
        for name in names:
            if short == name or short.startswith(name + "."):
                if best is None or len(name) > best[1]:
                    best = (level, len(name))
    assert best is not None, f"{module} is in no layer of tests/test_structure.py: place it"
    return best[0]


def test_no_module_level_import_cycle():
    modules = _modules()
    graph = {name: _imports(path, modules, module_level=True) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("module-level import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert len(graph) > 60  # the walk saw the whole package


def test_dependencies_point_one_way():
    modules = _modules()
    upward = []
    for name, path in sorted(modules.items()):
        for target in sorted(_imports(path, modules, module_level=False)):
            if _layer(target) > _layer(name):
                upward.append(f"{name} imports {target}")
    assert not upward, (
        "imports against the layering (core -> quant -> recipe -> runtimes -> stages -> cli):\n" + "\n".join(upward)
    )


def test_nothing_outside_the_zoo_imports_it():
    modules = _modules()
    importers = sorted(
        f"{name} imports {target}"
        for name, path in modules.items()
        if not name.startswith("quantlab.zoo")
        for target in _imports(path, modules, module_level=False)
        if target.startswith("quantlab.zoo")
    )
    assert not importers, (
        "the embedded model is a plugin (quantlab.plugins); the core must not import it:\n" + "\n".join(importers)
    )


def test_method_names_are_compared_only_in_the_methods_package():
    pattern = re.compile(
        r"""(==|!=|\bin\b)\s*\(?["'](rtn|lowrank|gptq|imatrix)["']|["'](rtn|lowrank|gptq|imatrix)["']\s*(==|!=)"""
    )
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "methods":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, "method names compared outside quantlab/methods:\n" + "\n".join(offenders)


def test_the_layering_check_sees_an_upward_import(tmp_path):
    """The check itself: a function-level import of a stage from the store would be reported."""
    modules = _modules()
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from quantlab.stages.build import build\n")
    assert "quantlab.stages.build" in _imports(fake, modules, module_level=False)
    assert not _imports(fake, modules, module_level=True)
    assert _layer("quantlab.store.artifacts") < _layer("quantlab.stages.build")
