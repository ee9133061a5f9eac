#!/usr/bin/env python3
"""Rewrite ``from M import name`` so each name comes from the module that defines it.

Run at the root of a tomoflow checkout that has ``tests/test_no_reexports.py`` (its rules say
what "defines" means). For every import that test reports, it follows the chain of re-exports
(``M`` imports ``name`` from ``M2``, which imports it from ``M3`` ...) to the defining module and
rewrites the import statement, keeping the local name (``as`` alias where the chain renamed
it). It does not remove the re-exporting imports themselves: do that by hand afterwards (they
are then unused, or only listed in ``__all__``). Re-run it after merging other branches.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path.cwd()
spec = importlib.util.spec_from_file_location("no_reexports", ROOT / "tests" / "test_no_reexports.py")
rules = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rules)  # type: ignore[union-attr]


def origin(module: str, name: str, seen: int = 0) -> tuple[str, str]:
    """(defining module, name there) of ``name`` as importable from ``module``."""
    source = rules._module_file(module)
    if source is None or seen > 20:
        return module, name
    tree = ast.parse(source.read_text(encoding="utf-8"))
    if name in rules.defined_names(tree) or rules._module_file(f"{module}.{name}") is not None:
        return module, name
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return origin(rules._absolute(node.module, node.level, source), alias.name, seen + 1)
    sys.exit(f"fix_reexports: cannot find where {module}.{name} comes from")


def render(indent: str, module: str, names: list[str], comment: str) -> str:
    """One ``from module import ...`` statement, wrapped in parentheses past 110 characters."""
    line = f"{indent}from {module} import {', '.join(names)}{comment}"
    if len(line) <= 110:
        return line
    body = "".join(f"{indent}    {n},\n" for n in names)
    return f"{indent}from {module} import ({comment}\n{body}{indent})"


def fix_file(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = rules._absolute(node.module, node.level, path)
        if rules._module_file(module) is None:
            continue
        groups: dict[str, list[str]] = defaultdict(list)
        changed = False
        for alias in node.names:
            local = alias.asname or alias.name
            target, real = origin(module, alias.name)
            changed |= (target, real) != (module, alias.name)
            groups[target].append(real if real == local else f"{real} as {local}")
        if not changed:
            continue
        first = lines[node.lineno - 1]
        indent = first[: len(first) - len(first.lstrip())]
        last = lines[node.end_lineno - 1].rstrip("\n")
        comment = ""
        if "#" in last and "re-export" not in last and "noqa: F401" not in last:
            comment = "  " + last[last.index("#"):]
        new = "\n".join(render(indent, m, ns, comment if i == 0 else "")
                        for i, (m, ns) in enumerate(groups.items())) + "\n"
        edits.append((node.lineno - 1, node.end_lineno, new))
    for start, end, new in sorted(edits, reverse=True):
        lines[start:end] = [new]
    if edits:
        path.write_text("".join(lines), encoding="utf-8")
        print(f"  fixed {path.relative_to(ROOT)} ({len(edits)} statement(s))")
    return bool(edits)


def main() -> int:
    files = sorted({p.split(":")[0] for p in rules.reexport_imports()})
    for f in files:
        fix_file(ROOT / f)
    left = rules.reexport_imports()
    print("\n".join(left) if left else "fix_reexports: every name now comes from its defining module")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
