"""The layer order of docs/ARCHITECTURE.md is true to the code: no upward import, no import cycle (function-level
imports included), render/ pure, no module in diffx/ over 400 lines."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffx"
MAX_LINES = 400
RENDER_MAY_IMPORT_LAYERS = ("base", "render")
RENDER_MAY_IMPORT_MODULES = ("diffx.sampling.schedules",)  # the log-SNR it plots: pure math


def _layers() -> list[tuple[str, list[str]]]:
    """(layer name, module patterns) from the ```layers block of docs/ARCHITECTURE.md, bottom first."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = re.search(r"```layers\n(.*?)```", text, re.S).group(1)
    return [(name.strip(), patterns.split()) for name, patterns in
            (line.split(":", 1) for line in block.strip().splitlines())]


def _modules() -> dict[str, Path]:
    """Every module under diffx/, by dotted name (a package by its own name)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The diffx modules `path` imports anywhere in its body (`from diffx import views` counts as diffx.views)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def _layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int:
    short = "diffx" if module == "diffx" else module.removeprefix("diffx.")
    for index, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            if short == pattern or (pattern.endswith(".*") and (short == pattern[:-2] or
                                                               short.startswith(pattern[:-1]))):
                return index
    raise AssertionError(f"{module} is in no layer of docs/ARCHITECTURE.md; add it there")


def test_every_import_points_down_the_layers():
    layers, modules = _layers(), _modules()
    upward = []
    for module, path in modules.items():
        own = _layer_of(module, layers)
        for imported in _imports(path, modules):
            if _layer_of(imported, layers) > own:
                upward.append(f"{module} ({layers[own][0]}) imports {imported} "
                              f"({layers[_layer_of(imported, layers)][0]})")
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_render_is_pure():
    layers, modules = _layers(), _modules()
    allowed = {index for index, (name, _) in enumerate(layers) if name in RENDER_MAY_IMPORT_LAYERS}
    impure = [f"{module} imports {imported}" for module, path in modules.items() if module.startswith("diffx.render")
              for imported in _imports(path, modules)
              if _layer_of(imported, layers) not in allowed and imported not in RENDER_MAY_IMPORT_MODULES]
    assert not impure, "render/ must stay pure:\n" + "\n".join(impure)


def test_no_import_cycles():
    modules = _modules()
    graph = {module: _imports(path, modules) - {module} for module, path in modules.items()}
    # A package's __init__ importing its own submodules is how a package re-exports; that is not a cycle.
    graph = {m: {i for i in deps if not (m.startswith(i + ".") and i in modules)} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycles.append(" -> ".join(stack[stack.index(imported):] + [imported]))
            elif imported not in state:
                visit(imported, stack + [imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_is_too_long():
    long = {str(path.relative_to(ROOT)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_layer_test_sees_an_upward_import(tmp_path):
    """The checker itself works: a module in a low layer importing a high one is found."""
    layers = _layers()
    assert _layer_of("diffx.pipeline", layers) < _layer_of("diffx.trace", layers)
    assert _layer_of("diffx.render.io", layers) > _layer_of("diffx.sampling.schedules", layers)
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from diffx.trace.tracer import Trace\n")
    assert _imports(probe, {"diffx.trace.tracer": probe}) == {"diffx.trace.tracer"}
