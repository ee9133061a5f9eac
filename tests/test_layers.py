"""Layers import downward only: a module never imports a layer above its own.

The layers, bottom up (docs/architecture.md):

* ``tasks/core`` (the domain's names, the configuration, atomic files): imports no other
  tomoflow package;
* ``tasks/infra`` (runners, caching, retries, lifecycle, Prefect's internals): ``tasks/core`` only;
* ``models/`` (PyTorch, no Prefect) and ``synth/`` (the synthetic collection): ``tasks/core``
  only, and never Prefect;
* the stage packages ``tasks/<stage>/`` (reader, prepare, train, evaluate, score, pipeline,
  sweep): ``tasks/core``, ``tasks/infra``, ``models`` and each other, never ``flows/``;
* ``flows/`` (the flows and the command line): anything below, and ``synth/`` for the
  ``synth`` and ``demo`` commands;
* ``bench/``: anything; nothing imports it.

Every import counts, at the top of a module or inside a function. Checked over the files
on disk, by their ``import`` statements (no module is imported to check it).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: What each layer may import (its own layer always), by layer name (see :func:`layer_of`).
ALLOWED: dict[str, frozenset[str]] = {
    "tasks.core": frozenset(),
    "tasks.infra": frozenset({"tasks.core"}),
    "models": frozenset({"tasks.core"}),
    "synth": frozenset({"tasks.core"}),
    "tasks.stage": frozenset({"tasks.core", "tasks.infra", "tasks.stage", "models"}),
    "flows": frozenset({"tasks.core", "tasks.infra", "tasks.stage", "models", "synth"}),
    "bench": frozenset({"tasks.core", "tasks.infra", "tasks.stage", "models", "synth", "flows"}),
}
#: Third-party packages a layer must not import, whatever the layer above it does.
FORBIDDEN_LIBRARIES: dict[str, frozenset[str]] = {"models": frozenset({"prefect"}), "synth": frozenset({"prefect"})}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name (``tasks.prepare.steps`` -> ``tasks.stage``), None outside tomoflow."""
    parts = module.split(".")
    if parts[0] == "tasks":
        if len(parts) == 1:
            return "tasks.core"  # the package itself holds nothing
        return f"tasks.{parts[1]}" if parts[1] in ("core", "infra") else "tasks.stage"
    return parts[0] if parts[0] in ALLOWED else None


def _imports(tree: ast.AST, module: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in ``tree``, relative ones resolved against ``module``."""
    package = module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, target
            for alias in node.names:  # "from tasks import prepare" imports the sub-package
                yield node.lineno, f"{target}.{alias.name}"


def upward_imports(root: Path) -> list[str]:
    """``path:line: <layer> imports <module> (<its layer>)`` for every import the layers forbid under ``root``."""
    problems = []
    for path in sorted(root.glob("**/*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] not in ("flows", "tasks", "models", "synth", "bench"):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        layer = layer_of(module)
        if layer is None:
            continue
        seen: set[tuple[int, str]] = set()
        for line, imported in _imports(ast.parse(path.read_text(encoding="utf-8")), module):
            target = layer_of(imported)
            top = imported.split(".")[0]
            bad = (target is not None and target != layer and target not in ALLOWED[layer]) or \
                top in FORBIDDEN_LIBRARIES.get(layer, frozenset())
            if bad and (line, top if target is None else target) not in seen:
                seen.add((line, top if target is None else target))
                problems.append(f"{rel}:{line}: {layer} imports {imported} ({target or 'a library it must not use'})")
    return problems


def test_no_module_imports_a_layer_above_its_own() -> None:
    problems = upward_imports(ROOT)
    assert problems == [], "imports against the layers (move the shared code down, or let the flow call):\n" + \
        "\n".join(problems)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_each_upward_import_is_reported(tmp_path: Path) -> None:
    # The check can fail: a tree with one upward import of each kind, and allowed imports beside them.
    _write(tmp_path, {
        "tasks/core/files.py": "import pandas\n",
        "tasks/infra/lifecycle.py": "def f():\n    from tasks.prepare.extract import x\n",
        "tasks/prepare/extract.py": "from tasks.core import files\nfrom models.nets import backbones\n",
        "tasks/evaluate/steps.py": "def g():\n    from flows.prepare import prepare_data\n",
        "models/training/audit.py": "from tasks.prepare.splits import assert_disjoint\nfrom tasks.core.schema import VIEWS\n",
        "models/nets/heads.py": "from prefect import task\n",
        "synth/generate.py": "from tasks import prepare\n",
        "flows/cli.py": "import synth.generate\nimport bench.decode\n",
    })
    found = sorted(line.split(": ", 1)[0] for line in upward_imports(tmp_path))
    assert found == ["flows/cli.py:2", "models/nets/heads.py:1", "models/training/audit.py:1",
                     "synth/generate.py:1", "tasks/evaluate/steps.py:2", "tasks/infra/lifecycle.py:2"]
