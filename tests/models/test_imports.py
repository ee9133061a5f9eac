"""models/ imports without loops: no module closes one with an import inside a function.

The loop backbones -> weights -> transfer -> checkpoint -> classifier -> backbones was closed by
imports inside functions; the run folder's names now live in a leaf module
(:mod:`tasks.core.run_folder`) and every ``from models...`` import sits at the top of its module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "models").rglob("*.py")
)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, inside a function)`` for every ``models`` import of a file."""
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            if name.split(".")[0] == "models":
                if isinstance(node, ast.ImportFrom):  # `from models.training import distributed`
                    for alias in node.names:
                        if f"{name}.{alias.name}" in MODULES:
                            name = f"{name}.{alias.name}"
                found.append((name, id(node) in local))
    return found


def _graph() -> dict[str, set[str]]:
    return {m: {name for name, _ in _imports(ROOT / (m.replace(".", "/") + ".py"))
                if name in MODULES and name != m}
            for m in MODULES if (ROOT / (m.replace(".", "/") + ".py")).is_file()}


def test_no_models_module_imports_models_inside_a_function() -> None:
    offenders = [f"{p.relative_to(ROOT)}: {name}" for p in sorted((ROOT / "models").rglob("*.py"))
                 for name, local in _imports(p) if local]
    assert offenders == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A loop in ``graph`` (as the modules in order), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_models_import_graph_has_no_loop() -> None:
    graph = _graph()
    assert graph["models.nets.classifier"] >= {"models.nets.backbones", "models.weights.transfer"}  # the graph is read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_loop_finder_finds_the_old_loop() -> None:
    """The control: the edges the issue names, with the one closed inside a function, form a loop it reports."""
    old = {"models.nets.backbones": {"models.weights.resolve"}, "models.weights.resolve": {"models.weights.transfer"},
           "models.weights.transfer": {"models.training.checkpoint"},
           "models.training.checkpoint": {"models.nets.classifier"},
           "models.nets.classifier": {"models.nets.backbones"}}
    assert _cycle(old) == ["models.nets.backbones", "models.weights.resolve", "models.weights.transfer",
                           "models.training.checkpoint", "models.nets.classifier", "models.nets.backbones"]


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
