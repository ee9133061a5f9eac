"""The documentation and the tree agree: docs/architecture.md names what exists (and every module
of the packages it tabulates), the README's command table is the CLI's list of commands, every
link between the documents lands, and the user docs and code hold no project history."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from flows.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "architecture.md"
README = REPO / "README.md"
USER_DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
#: Where project history ("before issue 19") must not appear: user docs, code comments, help.
HISTORY_DIRS = ("flows", "tasks", "models", "synth")
HISTORY = re.compile(r"\bissues? \d+|\bbefore issue\b|same bytes as before", re.I)

CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def named_paths(text: str) -> list[str]:
    """Repository paths a document names in code spans: ``tasks/infra/``, ``flows/cli.py``, ``configs/*.yaml``."""
    paths = []
    for span in CODE.findall(text):
        for token in span.split():
            token = token.strip("(),;:")
            if "<" in token or "..." in token or "://" in token or token.startswith(("-", "$", "/", "~")):
                continue  # a placeholder, a URL, an option, an absolute path
            if token.startswith((".ci/", "bench/", "configs/", "deploy/", "docs/", "flows/", "models/", "synth/",
                                 "tasks/", "tests/")) or token in ("prefect.yaml", "Makefile", "pyproject.toml"):
                paths.append(token)
    return paths


def missing_paths(text: str, root: Path = REPO) -> list[str]:
    """The named paths that do not exist under ``root`` (a glob must match something)."""
    missing = []
    for path in named_paths(text):
        base = path.split("::")[0]
        if not (list(root.glob(base)) if "*" in base else (root / base).exists()):
            missing.append(path)
    return missing


def unresolved_names(text: str, root: Path = REPO) -> list[str]:
    """Dotted names in code spans (``tasks.infra.runners.cached``) whose module file, or whose one
    trailing name defined at that module's top level, does not exist."""
    unresolved = []
    for span in CODE.findall(text):
        for name in re.findall(r"(?<![\w./-])(?:flows|tasks|models|synth)(?:\.\w+)+", span):
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):
                base = root.joinpath(*parts[:cut])
                module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
                if module.is_file():
                    rest = parts[cut:]
                    defined = len(rest) == 0 or (len(rest) == 1 and re.search(
                        rf"^(?:def |class |async def )?{rest[0]}\b", module.read_text(), re.M))
                    if not defined:
                        unresolved.append(name)
                    break
            else:
                unresolved.append(name)
    return unresolved


def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row (header and separator rows included)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.lstrip().startswith("|")]


def module_table_mismatches(text: str, root: Path = REPO) -> list[str]:
    """For each table row ``| `pkg/` | `mod`, `mod` (+ `mod`) | ... |``: the package's modules that the row
    leaves out, and the names it lists that are not modules of the package."""
    problems = []
    for cells in table_rows(text):
        head = CODE.fullmatch(cells[0]) if cells else None
        if not head or not head.group(1).endswith("/") or len(cells) < 2:
            continue
        package = root / head.group(1)
        if not package.is_dir():
            problems.append(f"{head.group(1)}: no such package")
            continue
        listed = {name for name in CODE.findall(cells[1]) if not name.endswith("/")}
        actual = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
        problems += [f"{head.group(1)}: {name} is not listed" for name in sorted(actual - listed)]
        problems += [f"{head.group(1)}: {name} is not a module there" for name in sorted(listed - actual)]
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def broken_links(path: Path) -> list[str]:
    """Relative links of ``path`` whose file, or whose ``#anchor`` in it, does not exist."""
    broken = []
    for target in LINK.findall(path.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{path.name}: {target}: no such file")
            continue
        if anchor and linked.suffix == ".md":
            anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(), re.M)}
            if anchor not in anchors:
                broken.append(f"{path.name}: {target}: no such heading")
    return broken


def _commands() -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def readme_command_table() -> set[str]:
    """The commands in the first column of the README's command table."""
    text = README.read_text()
    section = text[text.index("## Commands"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    return {m.group(1) for cells in table_rows(section) for m in [re.fullmatch(r"`tomoflow ([a-z-]+)`", cells[0])]
            if m}


def command_options() -> dict[str, set[str]]:
    """Each ``tomoflow`` command's options (a command with actions, ``weights``, has all of theirs)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options: dict[str, set[str]] = {}
    for name, parser in sub.choices.items():
        found = {s for a in parser._actions for s in a.option_strings}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found |= {s for p in action.choices.values() for a in p._actions for s in a.option_strings}
        options[name] = found
    return options


def unknown_options(text: str, options: dict[str, set[str]]) -> list[str]:
    """``tomoflow CMD ... --x`` written in a code block or span where CMD has no ``--x`` (or no CMD exists)."""
    text = text.replace("\\\n", " ")  # a shell line continued with a backslash
    snippets = CODE.findall(text) + [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
                                     for line in block.splitlines()]
    problems = []
    for snippet in snippets:
        for match in re.finditer(r"\btomoflow ([a-z][a-z-]*)([^#`]*)", snippet.split(" # ")[0]):
            command, rest = match.groups()
            if command not in options:
                problems.append(f"tomoflow {command}: no such command")
                continue
            problems += [f"tomoflow {command} {option}: no such option" for option in
                         re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest.split("tomoflow ")[0])
                         if option not in options[command]]
    return problems


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_every_command_line_in_the_docs_uses_real_options(path: Path) -> None:
    assert unknown_options(path.read_text(), command_options()) == []


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_every_path_a_document_names_exists(path: Path) -> None:
    assert missing_paths(path.read_text()) == []


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_every_dotted_name_a_document_uses_exists(path: Path) -> None:
    assert unresolved_names(path.read_text()) == []


def test_architecture_md_names_the_tree() -> None:
    assert len(named_paths(ARCHITECTURE.read_text())) > 50, "the check found (almost) no path at all"


def test_architecture_tables_list_every_module_of_each_package_and_no_other() -> None:
    assert module_table_mismatches(ARCHITECTURE.read_text()) == []


def test_architecture_names_every_flow_and_cli_module() -> None:
    named = set(named_paths(ARCHITECTURE.read_text()))
    modules = {f"flows/{p.name}" for p in (REPO / "flows").glob("*.py") if p.stem != "__init__"}
    assert sorted(modules - named) == []


def test_every_package_of_the_tree_has_a_table_row() -> None:
    rows = {CODE.fullmatch(cells[0]).group(1) for cells in table_rows(ARCHITECTURE.read_text())
            if cells and CODE.fullmatch(cells[0])}
    packages = {f"{p.parent.relative_to(REPO)}/" for p in REPO.glob("*/*/__init__.py")
                if p.parts[-3] in ("tasks", "models")} | {"synth/", "bench/"}
    assert sorted(packages - rows) == []


def test_readme_command_table_is_the_cli_s_list_of_commands() -> None:
    assert readme_command_table() == _commands()


def test_the_readme_is_short_and_opens_with_its_two_commands_which_ci_runs() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 160, "the README's first page grew: move the detail into docs/"
    block = re.search(r"```bash\n(.*?)```", "\n".join(lines[:15]), re.S)
    assert block, "make demo and make test must be on the README's first screen"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert all(command in ci for command in commands), ".ci/run must run the README's commands"


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: p.name)
def test_every_link_between_the_documents_lands(path: Path) -> None:
    assert broken_links(path) == []


def test_no_project_history_in_user_docs_or_code() -> None:
    found = []
    files = USER_DOCS + [p for d in HISTORY_DIRS for p in sorted((REPO / d).rglob("*.py"))]
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if HISTORY.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []


def test_the_checks_find_what_they_are_for(tmp_path: Path) -> None:
    (tmp_path / "tasks" / "pkg").mkdir(parents=True)
    for name in ("__init__", "a", "b"):
        (tmp_path / "tasks" / "pkg" / f"{name}.py").write_text("")
    doc = "`tasks/pkg/a.py` and `tasks/gone.py`\n\n| package | modules |\n|---|---|\n| `tasks/pkg/` | `a`, `c` |\n"
    assert missing_paths(doc, tmp_path) == ["tasks/gone.py"]
    (tmp_path / "tasks" / "pkg" / "a.py").write_text("def here():\n    pass\n")
    assert unresolved_names("`tasks.pkg.a.here` `tasks.pkg.a.gone` `tasks.pkg.z`", tmp_path) == [
        "tasks.pkg.a.gone", "tasks.pkg.z"]
    assert module_table_mismatches(doc, tmp_path) == ["tasks/pkg/: b is not listed",
                                                      "tasks/pkg/: c is not a module there"]
    page = tmp_path / "page.md"
    page.write_text("# A `tomoflow x` title\n[ok](#a-tomoflow-x-title) [bad](#nope) [file](missing.md)\n")
    assert broken_links(page) == ["page.md: #nope: no such heading", "page.md: missing.md: no such file"]
    options = {"train": {"--out", "--weights"}}
    assert unknown_options("`tomoflow train --out R --epoch 3` and `tomoflow trian`\n```bash\n"
                           "tomoflow train --out R \\\n  --weights none --lr 1  # --anything\n```\n", options) == [
        "tomoflow train --epoch: no such option", "tomoflow trian: no such command", "tomoflow train --lr: no such option"]
    assert HISTORY.search("the same bytes as before issue 19") and not HISTORY.search("seed 19: AUC 0.8")
