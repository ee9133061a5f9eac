"""Each name is imported from the module that defines it: no re-export shims, no old homes.

A module *defines* a name when a statement at its top level (or inside a top-level ``if``,
``try`` or ``with`` block, e.g. ``if TYPE_CHECKING:`` or an ``ImportError`` fall-back) binds
it by ``def``, ``async def``, ``class``, an assignment (plain, annotated, augmented, or a
``for``/walrus target) or ``global`` in a function. A name bound only by an ``import`` is
*not* defined there: importing it from that module is importing a re-export. Importing a
sub-module from its package (``from tasks import j2k``) is fine: the file defines it.
The same holds for attribute reads through a module (``import tasks.evaluate.metrics as m; m.name``),
except a name a test replaces with ``monkeypatch.setattr(module, "name", ...)`` (patched where
it is used). Only tomoflow's own packages are checked; third-party and standard-library
imports are not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "models", "synth", "tests", "bench")


def _module_file(module: str) -> Path | None:
    """The file of a first-party module (``tasks.core.files`` -> tasks/core/files.py), or None when it is not one."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _targets(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def defined_names(tree: ast.Module) -> set[str]:
    """Names a module defines, by the rules in this file's docstring."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
            names |= _targets(node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                              else node)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            pending += [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            for handler in getattr(node, "handlers", []):
                pending += handler.body
        elif isinstance(node, ast.Expr):
            names |= {n.target.id for n in ast.walk(node) if isinstance(n, ast.NamedExpr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            names |= set(node.names)
    return names


def _absolute(module: str | None, level: int, path: Path) -> str:
    """The absolute name of a (possibly relative) ``from`` import in ``path``."""
    if not level:
        return module or ""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    base = list(package[: len(package) - level + 1])
    return ".".join([*base, *([module] if module else [])])


def _project_trees() -> Iterator[tuple[Path, ast.Module]]:
    """Every Python file of the checked packages with its syntax tree."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def reexport_imports() -> list[str]:
    """Every ``from M import name`` in the project where M does not define ``name``."""
    cache: dict[Path, set[str]] = {}
    problems = []
    for path, tree in _project_trees():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = _absolute(node.module, node.level, path)
            source = _module_file(module)
            if source is None:
                continue
            if source not in cache:
                cache[source] = defined_names(ast.parse(source.read_text(encoding="utf-8")))
            for alias in node.names:
                if alias.name in cache[source] or _module_file(f"{module}.{alias.name}") is not None:
                    continue
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name} from {module}, "
                                "which does not define it")
    return problems


def _dotted(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"], or None when the chain does not start at a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def reexport_attributes() -> list[str]:
    """Every ``module.name`` (``import tasks.x as m; m.name``) where the module does not define ``name``."""
    cache: dict[Path, set[str]] = {}
    problems = []
    for path, tree in _project_trees():
        aliases: dict[str, str] = {}  # local name -> first-party module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    aliases[local] = alias.name if alias.asname else local
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(node.module, node.level, path)
                for alias in node.names:
                    if _module_file(f"{module}.{alias.name}") is not None:
                        aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
        # A test may replace the name a module uses (monkeypatch.setattr(module, "name", ...))
        # and read it first to wrap it: that reads the module's own binding, not a re-export.
        patched = {(".".join(aliases.get(c[0], c[0]).split(".") + c[1:]), node.args[1].value)
                   for node in ast.walk(tree)
                   if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                   and node.func.attr == "setattr" and len(node.args) >= 2
                   and isinstance(node.args[1], ast.Constant) and (c := _dotted(node.args[0]))}
        seen = set(patched)
        for node in ast.walk(tree):
            chain = _dotted(node) if isinstance(node, ast.Attribute) else None
            if not chain or chain[0] not in aliases:
                continue
            names = [*aliases[chain[0]].split("."), *chain[1:]]
            # The longest prefix that is a first-party module; the next part must be defined there.
            for cut in range(len(names) - 1, 0, -1):
                source = _module_file(".".join(names[:cut]))
                if source is None:
                    continue
                if source not in cache:
                    cache[source] = defined_names(ast.parse(source.read_text(encoding="utf-8")))
                name = names[cut]
                key = (".".join(names[:cut]), name)
                submodule = _module_file(f"{key[0]}.{name}") is not None
                if not (name in cache[source] or submodule or name.startswith("__") or key in seen):
                    seen.add(key)
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {key[0]}.{name}, "
                                    "which that module does not define")
                break
    return problems


def test_every_name_is_imported_from_the_module_that_defines_it() -> None:
    problems = reexport_imports()
    assert not problems, "import these from their defining module:\n" + "\n".join(problems)


def test_every_module_attribute_is_defined_by_that_module() -> None:
    problems = reexport_attributes()
    assert not problems, "use the module that defines each of these:\n" + "\n".join(problems)


def test_the_rules_see_a_reexport_and_accept_a_definition() -> None:
    shim = ast.parse("from tasks.core.files import atomic_write\nimport json\nX = 1\nif True:\n    def f(): ...\n"
                     "try:\n    import yaml\nexcept ImportError:\n    yaml = None\nclass C: ...\n")
    assert defined_names(shim) == {"X", "f", "yaml", "C"}
    assert _module_file("tasks.core.files") is not None and _module_file("numpy") is None
