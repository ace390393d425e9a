"""The package's shape, read from its source: no module-level import cycle, dependencies pointing one way, and
method names compared only inside the methods package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "quantlab"

# One written order, lowest first: a module imports only what comes before it here, or its own entry (a package's
# modules among themselves, where the cycle check below still applies), at module level or inside a function.
# The longest matching entry places a module, so "runtimes.llama_cpp" (the one place llama.cpp is loaded
# in-process) sits below the presets that ask it for llama-quantize's choices, and "runtimes" (the runtimes'
# interface) above them.
ORDER = [
    # core: no quantlab imports but each other
    "errors",
    "registry",
    "statistics",
    "token_statistics",
    "content_keys",
    "store.atomic",
    "store.json_records",
    "plugins",
    # quantization and models
    "formats",
    "models",
    "methods",
    "chat",
    # the store: variants, records, the one cache
    "store",
    # recipes, exports and the runtimes that run them
    "calibration",
    "runtimes.llama_cpp",
    "export",
    "presets",
    "recipe",
    "plan",
    "runtimes",
    # what users run
    "stages",
    "bench",
    "pipeline",
    "api",  # the public API's functions (quantlab.__init__ loads it on first use)
    "cli.render",  # what the commands print
    "cli.options",  # what several commands share
    "cli.commands",  # the commands, one module per family
    "cli",  # the app that registers them, and its entry point
    "__main__",
    "__init__",
    "zoo",  # a plugin: it may use everything; nothing imports it (plugins.BUILTIN names it as data)
]

# Internal imports inside functions must say why (a comment on the line or the one above); their number may only go
# down. The CLI has none: its commands are listed from their source and imported when they run (quantlab.cli.lazy).
# Left: the public API's one lazy hop (import quantlab stays cheap), the zoo's model card (the plugin registry is
# built at every start), and sessions' two lm-eval clients (measure and the audit open sessions without lm-eval).
FUNCTION_LEVEL_IMPORTS_AT_MOST = 4


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("quantlab",) + (parts[:-1] if parts[-1] == "__init__" else parts))
        modules[name] = path
    return modules


def _import_statements(path: Path, modules: dict[str, Path]) -> list[tuple[ast.stmt, set[str], bool]]:
    """Each import statement of quantlab modules in a file: the node, the modules it names, and whether it runs at
    import time (the module's body, or an ``if``/``try`` there) rather than inside a function or class."""
    tree = ast.parse(path.read_text())
    at_import_time: set[int] = set()

    def mark(statements) -> None:
        for statement in statements:
            at_import_time.add(id(statement))
            if isinstance(statement, (ast.If, ast.Try)):
                mark(statement.body)
                mark(statement.orelse)
                mark(getattr(statement, "finalbody", []))
                for handler in getattr(statement, "handlers", []):
                    mark(handler.body)

    mark(tree.body)
    found = []
    for node in ast.walk(tree):
        named: set[str] = set()
        if isinstance(node, ast.Import):
            named = {alias.name for alias in node.names if alias.name.startswith("quantlab")}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantlab") and node.level == 0
        ):
            for alias in node.names:  # `from quantlab.x import y`: y may be a submodule
                sub = f"{node.module}.{alias.name}"
                named.add(sub if sub in modules else node.module)
        named = {name for name in named if name in modules}
        if named:
            found.append((node, named, id(node) in at_import_time))
    return found


def _imports(path: Path, modules: dict[str, Path], module_level: bool, packages: bool = False) -> set[str]:
    """The quantlab modules a file imports (``module_level``: only statements run at import time; ``packages``:
    with every package above each that the file is not itself inside, whose ``__init__`` Python runs first: a
    package's own modules are imported by its ``__init__`` while it is already initialising, which is safe)."""
    found: set[str] = set()
    for _, named, at_import_time in _import_statements(path, modules):
        if at_import_time or not module_level:
            found |= named
    if packages:
        own = path.relative_to(PACKAGE).with_suffix("").parts
        inside = {".".join(("quantlab",) + own[:i]) for i in range(len(own) + 1)}
        parents = {".".join(name.split(".")[:i]) for name in found for i in range(2, name.count(".") + 1)}
        found |= parents - inside
    return {name for name in found if name in modules}


def _position(module: str) -> int:
    short = module.removeprefix("quantlab").lstrip(".") or "__init__"
    best = None
    for position, name in enumerate(ORDER):
        if short == name or short.startswith(name + "."):
            if best is None or len(name) > len(ORDER[best]):
                best = position
    assert best is not None, f"{module} is in no entry of tests/test_structure.py's ORDER: place it"
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle (Tarjan's strongly connected components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
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

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Who imports whom, at any level, with the packages Python initialises on the way."""
    return {name: _imports(path, modules, module_level=False, packages=True) - {name} for name, path in modules.items()}


def test_no_import_cycle_at_any_level():
    """Not at module level, not through a function-level import, not through a package's ``__init__``: a circle
    hidden in a function is still a circle (it only fails later, on the call that closes it)."""
    modules = _modules()
    assert len(modules) > 60  # the walk saw the whole package
    cycles = _cycles(_graph(modules))
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(cycle) for cycle in cycles)


def test_dependencies_follow_the_written_order():
    modules = _modules()
    upward = []
    for name, path in sorted(modules.items()):
        for target in sorted(_imports(path, modules, module_level=False)):
            if _position(target) > _position(name):
                upward.append(f"{name} ({ORDER[_position(name)]}) imports {target} ({ORDER[_position(target)]})")
    assert not upward, "imports against tests/test_structure.py's ORDER:\n" + "\n".join(upward)


def _function_level_imports() -> list[str]:
    """Each internal import inside a function, as ``path:line``, marked where no comment says why (on its line, or
    above the run of import statements it belongs to)."""
    modules = _modules()
    out = []
    for _name, path in sorted(modules.items()):
        lines = path.read_text().splitlines()
        first_of_run: dict[int, int] = {}  # an import statement's line -> the first line of its run of imports
        for block in (getattr(n, f, None) for n in ast.walk(ast.parse(path.read_text())) for f in ("body", "orelse")):
            if isinstance(block, list):
                start = None
                for statement in block:
                    if isinstance(statement, (ast.Import, ast.ImportFrom)):
                        start = statement.lineno if start is None else start
                        first_of_run[statement.lineno] = start
                    else:
                        start = None
        for node, _, at_import_time in _import_statements(path, modules):
            if not at_import_time:
                run_start = first_of_run.get(node.lineno, node.lineno)
                run = lines[max(0, run_start - 2) : node.lineno]  # the line above the run, through this one
                why = any(line.strip().startswith("#") for line in run) or "#" in lines[node.lineno - 1]
                out.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}{'' if why else ' (no reason given)'}")
    return out


def test_function_level_imports_only_go_down():
    found = _function_level_imports()
    assert len(found) <= FUNCTION_LEVEL_IMPORTS_AT_MOST, (
        f"{len(found)} function-level internal imports (at most {FUNCTION_LEVEL_IMPORTS_AT_MOST}): import at "
        "module level, or lower the count's reason in this file\n" + "\n".join(found)
    )


MODULE_LINES_AT_MOST = 600  # a module a newcomer reads in one sitting (issue 24)


def test_no_module_is_over_600_lines():
    long = sorted(
        f"{path.relative_to(PACKAGE.parent)}: {lines} lines"
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MODULE_LINES_AT_MOST
    )
    assert not long, f"modules over {MODULE_LINES_AT_MOST} lines; split each by what its parts do:\n" + "\n".join(long)


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


# The names each registry owns, compared only by their owner: a stage asks the registered object what it can do.
OWNED_NAMES = {
    "runtimes": ("hf", "llama.cpp", "endpoint", "served", "vllm"),  # backends and engines
    "export": ("gguf", "native", "compressed-tensors"),
}


def _compares_a_name(line: str, names: tuple[str, ...]) -> bool:
    """Whether a line compares a value with one of ``names``: ``== "x"`` either way round, ``"x" in ...`` (or
    ``not in``), or ``in (..., "x")``; iterating over a tuple of them (``for k in ("x", ...)``) compares nothing."""
    alternatives = "|".join(re.escape(name) for name in names)
    quoted = rf"""["']({alternatives})["']"""
    pattern = rf"(==|!=)\s*{quoted}|{quoted}\s*(==|!=|in\b|not in\b)|\bin\s*\((.*,\s*)?{quoted}"
    return re.search(pattern, re.sub(r"\bfor\s+[\w, ]+\s+in\s*\([^)]*\)", "", line)) is not None


def test_backend_engine_and_export_names_are_compared_only_by_their_owners():
    offenders = []
    for owner, names in OWNED_NAMES.items():
        for path in sorted(PACKAGE.rglob("*.py")):
            if path.relative_to(PACKAGE).parts[0] in (owner, "zoo"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if _compares_a_name(line, names):
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, "registered names compared outside their owner:\n" + "\n".join(offenders)


def test_the_name_check_sees_each_way_of_comparing_and_not_iteration():
    names = OWNED_NAMES["export"]
    for line in (
        'if backend == "gguf":',
        'if "gguf" != kind:',
        'runtime = "gguf" in recipe.exports',
        'elif "gguf" not in recipe.exports:',
        'if load not in ("auto", "native"):',
        "ok = kind in ('hf', 'compressed-tensors')",
    ):
        assert _compares_a_name(line, names), line
    for line in ('for package in ("quantlab", "gguf"):', 'label = "gguf"', 'exports: [gguf]  # "gguf" alone'):
        assert not _compares_a_name(line, names), line


def test_the_layering_check_sees_an_upward_import(tmp_path):
    """The check itself: a function-level import of a stage from the store would be reported."""
    modules = _modules()
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from quantlab.stages.build import build\n")
    assert "quantlab.stages.build" in _imports(fake, modules, module_level=False)
    assert not _imports(fake, modules, module_level=True)
    assert _position("quantlab.store.artifacts") < _position("quantlab.stages.build")
    assert _position("quantlab.runtimes.llama_cpp") < _position("quantlab.export.gguf") < _position("quantlab.runtimes")
    # and a circle closed only inside a function, or only through a package's __init__, is found
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
