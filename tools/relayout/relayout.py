#!/usr/bin/env python3
"""Issue 22, point 1: move tomoflow's flat ``tasks/`` into sub-packages by stage, with ``git mv``.

Run at the root of a clean tomoflow checkout (``python3 tools/relayout/relayout.py``; ``--dry-run``
prints the plan and changes nothing). It

1. refuses to run on a dirty tree, on a tree already moved, or when a ``tasks/*.py`` module or a
   ``tests/tasks/test_*.py`` file is not in the mapping below (it lists them: add them to
   ``MODULES`` / ``TESTS`` and run again);
2. ``git mv``-es every module, the report's templates, the tests and their data, and creates the
   new packages' ``__init__.py`` files;
3. rewrites every reference in every tracked text file: ``import``/``from`` statements
   (``from tasks import j2k`` included), dotted strings (``"tasks.x:fn"``, monkeypatch targets,
   ``:mod:`` roles, ``prefect.yaml`` pull steps), paths (``tasks/x.py`` in docs, comments,
   ``bench/``, ``.ci/run``), ``Path(__file__).parents[k]`` in moved files, the jinja2 package
   loader, and ``pyproject.toml``'s packages (``packages.find``) and package data.

It commits nothing: read ``git status`` / ``git diff --cached -M``, run the golden test and the
fast tier, then commit. Nothing here needs anything but the standard library and git.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# The mapping. Key: the module's name in the flat tasks/ (tasks/<key>.py). Value: its new path
# from the repository root, without ".py". Every tasks/*.py but __init__.py must be here.
# ---------------------------------------------------------------------------------------------
MODULES: dict[str, str] = {
    # core: the domain's names and settings, shared by every stage.
    "schema": "tasks/core/schema",
    "config": "tasks/core/config",
    "presets": "tasks/core/presets",
    "io": "tasks/core/files",  # atomic writes, output-folder lock, content fingerprints
    "seeds": "tasks/core/seeds",  # issue 22 part B: the one seed hash (absent before it lands)
    # infra: how steps run, not what they compute.
    "caching": "tasks/infra/caching",
    "retry": "tasks/infra/retry",
    "runtime": "tasks/infra/runners",  # task runners, temporary API, cached(), output layout
    "lifecycle": "tasks/infra/lifecycle",
    "redaction": "tasks/infra/redaction",
    "service": "tasks/infra/environment",  # what a deployment needs from its environment
    "prefect_internals": "tasks/infra/prefect_internals",  # issue 22 part B
    "run_names": "tasks/infra/run_names",  # issue 22 part B: flow run names from the config
    "alerts": "tasks/infra/alerts",  # Prefect automations for failed, crashed or stuck runs
    "engine_logs": "tasks/infra/engine_logs",
    "output_slot": "tasks/infra/output_slot",  # one pipeline run at a time per output root
    "outputs_server": "tasks/infra/outputs_server",  # read-only server of reports and curves
    "server_output": "tasks/infra/server_output",  # the temporary server's stderr, filtered
    "service_worker": "tasks/infra/service_worker",
    # reader: one DICOM volume to 8-bit frames.
    "dicom": "tasks/reader/frames",
    "dicom_header": "tasks/reader/header",
    "dicom_decode": "tasks/reader/decode",
    "dicom_render": "tasks/reader/render",
    "dicom_geometry": "tasks/reader/geometry",
    "j2k": "tasks/reader/j2k",
    # prepare: CSVs and reports to a manifest of PNG slices.
    "bcs_csv": "tasks/prepare/bcs_csv",
    "report_filter": "tasks/prepare/radiology_reports",
    "cohorts": "tasks/prepare/cohorts",
    "accounting": "tasks/prepare/rejects",
    "paths": "tasks/prepare/locate",  # find each volume's DICOM file on disk
    "frame_rules": "tasks/prepare/frame_rules",
    "slices": "tasks/prepare/slices",
    "splits": "tasks/prepare/splits",
    "extract": "tasks/prepare/extract",
    "extract_run": "tasks/prepare/extract_run",
    "manifest": "tasks/prepare/manifest",
    "prepare_steps": "tasks/prepare/steps",
    "data_origin": "tasks/prepare/data_origin",
    "source_hash": "tasks/prepare/source_hash",
    "volume_check": "tasks/prepare/volume_check",
    # train: the Prefect steps of train-classifier (the work is in models/).
    "train_steps": "tasks/train/steps",
    # evaluate: metrics and the HTML evaluation report.
    "metrics": "tasks/evaluate/metrics",
    "metrics_point": "tasks/evaluate/metrics_point",
    "metrics_bootstrap": "tasks/evaluate/metrics_bootstrap",
    "metrics_chance": "tasks/evaluate/metrics_chance",
    "html_report": "tasks/evaluate/report",
    "report_data": "tasks/evaluate/report_data",
    "report_figures": "tasks/evaluate/report_figures",
    "report_sections": "tasks/evaluate/report_sections",
    "evaluate_steps": "tasks/evaluate/steps",
    "evaluate_lock": "tasks/evaluate/locks",
    "generalization": "tasks/evaluate/generalization",
    "report_generalization": "tasks/evaluate/report_generalization",
    "paired_bootstrap": "tasks/evaluate/paired_bootstrap",
    "trivial_scores": "tasks/evaluate/trivial_scores",
    # pipeline: the whole run and what its dashboard shows.
    "pipeline_steps": "tasks/pipeline/steps",
    "dashboard": "tasks/pipeline/dashboard",
    "preflight": "tasks/pipeline/preflight",
    "experiments": "tasks/pipeline/experiments",
    "comparison": "tasks/pipeline/comparison",
    # sweep: the training-size sweep (tomoflow experiments --train-fractions).
    "sweep": "tasks/sweep/analysis",
    "sweep_steps": "tasks/sweep/steps",
    # torchvision code that only models/ and the train steps use.
    "augment": "models/augment",
}

# Folders that move with a module (the report's jinja2 templates and style sheet).
DIRS: dict[str, str] = {
    "tasks/templates": "tasks/evaluate/templates",
}

# Tests mirror the package tree. Key: tests/tasks/<key>.py; value: the new path without ".py".
# Every tests/tasks/test_*.py must be here (tests under tests/flows, tests/models, tests/synth
# and tests/e2e already mirror their packages and stay).
TESTS: dict[str, str] = {
    "test_io": "tests/tasks/core/test_files",
    "test_presets": "tests/tasks/core/test_presets",
    "test_retry": "tests/tasks/infra/test_retry",
    "test_redaction": "tests/tasks/infra/test_redaction",
    "test_service": "tests/tasks/infra/test_environment",
    "test_prefect_internals": "tests/tasks/infra/test_prefect_internals",  # issue 22 part B
    "test_dicom": "tests/tasks/reader/test_frames",
    "test_dicom_files": "tests/tasks/reader/test_dicom_files",
    "test_j2k": "tests/tasks/reader/test_j2k",
    "test_report_filter": "tests/tasks/prepare/test_radiology_reports",
    "test_cohorts": "tests/tasks/prepare/test_cohorts",
    "test_slices": "tests/tasks/prepare/test_slices",
    "test_splits": "tests/tasks/prepare/test_splits",
    "test_extract": "tests/tasks/prepare/test_extract",
    "test_metrics": "tests/tasks/evaluate/test_metrics",
    "test_report": "tests/tasks/evaluate/test_report",
    "test_report_golden": "tests/tasks/evaluate/test_report_golden",
    "test_report_model": "tests/tasks/evaluate/test_report_model",
    "test_evaluate_steps": "tests/tasks/evaluate/test_steps",
    "test_dashboard": "tests/tasks/pipeline/test_dashboard",
    "test_augment": "tests/models/test_augment",
    "test_alerts": "tests/tasks/infra/test_alerts",
    "test_engine_logs": "tests/tasks/infra/test_engine_logs",
    "test_output_slot": "tests/tasks/infra/test_output_slot",
    "test_server_output": "tests/tasks/infra/test_server_output",
    "test_generalization": "tests/tasks/evaluate/test_generalization",
    "test_report_controls": "tests/tasks/evaluate/test_report_controls",
    "test_trivial_scores": "tests/tasks/evaluate/test_trivial_scores",
    "test_comparison": "tests/tasks/pipeline/test_comparison",
    "test_preflight": "tests/tasks/pipeline/test_preflight",
}

# Test data folders that move with their test (found by Path(__file__).with_name(...)).
TEST_DIRS: dict[str, str] = {
    "tests/tasks/report_golden": "tests/tasks/evaluate/report_golden",
}

# One-line docstrings of the new packages' __init__.py files.
PACKAGE_DOCS: dict[str, str] = {
    "tasks/core": "The domain's names, settings and file primitives, shared by every stage.",
    "tasks/infra": "How steps run: task runners, caching, retries, clean-up, redaction, Prefect internals.",
    "tasks/reader": "The DICOM reader: one tomosynthesis volume's requested frames as 8-bit images.",
    "tasks/prepare": "The prepare-data stage: CSVs and radiology reports to a manifest of PNG slices.",
    "tasks/train": "The train-classifier stage's Prefect steps (the training itself is in models/).",
    "tasks/evaluate": "The evaluate-model stage: metrics and the HTML evaluation report.",
    "tasks/pipeline": "The whole pipeline's steps, the experiments' plan and comparison, and what its dashboard shows.",
    "tasks/sweep": "The training-size sweep: nested patient subsets, its table and figure, and its Prefect steps.",
}

# Files whose text is data compared byte for byte: never rewritten.
NO_REWRITE = ("tools/relayout/", "tests/golden/", "tests/tasks/report_golden/", "tests/tasks/evaluate/report_golden/")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".txt", ".j2", ".css",
                 ".sh", ".json", ".service", ".timer", ".conf", ".env"}
TEXT_NAMES = {"Makefile", "run", "Dockerfile", ".gitignore"}


def sh(*args: str, check: bool = True) -> str:
    """Run a git command at the repository root and return its stdout."""
    out = subprocess.run(args, check=False, capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"relayout: {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def dotted(path: str) -> str:
    """``tasks/core/schema`` -> ``tasks.core.schema``."""
    return path.replace("/", ".")


def preflight() -> tuple[list[str], list[str]]:
    """Refuse to run where the move would be wrong or half done; return the modules and tests found."""
    if not Path("tasks/__init__.py").is_file() or not Path("pyproject.toml").is_file():
        sys.exit("relayout: run me at the root of a tomoflow checkout (tasks/__init__.py not found)")
    dirty = sh("git", "status", "--porcelain", "--untracked-files=normal").strip()
    if dirty:
        sys.exit("relayout: the working tree is not clean; commit or stash first:\n" + dirty)
    tracked = sh("git", "ls-files").splitlines()
    modules = sorted(Path(p).stem for p in tracked
                     if re.fullmatch(r"tasks/[A-Za-z_]\w*\.py", p) and p != "tasks/__init__.py")
    tests = sorted(Path(p).stem for p in tracked if re.fullmatch(r"tests/tasks/test_\w+\.py", p))
    if not modules:
        sys.exit("relayout: no module directly in tasks/: this tree looks already moved")
    already = sorted({str(Path(MODULES[m]).parent) for m in MODULES if Path(MODULES[m] + ".py").exists()}
                     | {d for d in DIRS.values() if Path(d).exists()})
    if already:
        sys.exit("relayout: targets already exist (already moved?): " + ", ".join(already))
    missing = [f"tasks/{m}.py" for m in modules if m not in MODULES]
    missing += [f"tests/tasks/{t}.py" for t in tests if t not in TESTS]
    if missing:
        sys.exit("relayout: not in the mapping (add them to MODULES / TESTS at the top of "
                 f"{__file__} and run again):\n  " + "\n  ".join(missing))
    pyproject = Path("pyproject.toml").read_text()
    if not re.search(r"(?m)^packages = \[[^\]]*\]\n", pyproject):
        sys.exit("relayout: pyproject.toml has no 'packages = [...]' line under [tool.setuptools]; "
                 "update rewrite_pyproject()")
    return modules, tests


def mv(src: str, dst: str, dry: bool) -> None:
    """``git mv`` one path, creating the destination's folder."""
    print(f"  git mv {src} {dst}")
    if not dry:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        sh("git", "mv", src, dst)


def move(modules: list[str], tests: list[str], dry: bool) -> dict[str, str]:
    """Move modules, folders, tests and test data; return {new file path: old file path} of moved .py."""
    moved: dict[str, str] = {}
    for m in modules:
        mv(f"tasks/{m}.py", MODULES[m] + ".py", dry)
        moved[MODULES[m] + ".py"] = f"tasks/{m}.py"
    for src, dst in DIRS.items():
        if Path(src).exists():
            mv(src, dst, dry)
    for t in tests:
        mv(f"tests/tasks/{t}.py", TESTS[t] + ".py", dry)
        moved[TESTS[t] + ".py"] = f"tests/tasks/{t}.py"
    for src, dst in TEST_DIRS.items():
        if Path(src).exists():
            mv(src, dst, dry)
    # Every new folder under tasks/ and tests/ is a package.
    new_dirs = {str(Path(p).parent) for p in moved}
    for d in sorted(new_dirs):
        parts = Path(d).parts
        for i in range(1, len(parts) + 1):
            init = Path(*parts[:i]) / "__init__.py"
            if parts[0] in ("tasks", "tests", "models") and not init.exists():
                doc = PACKAGE_DOCS.get(str(Path(*parts[:i])))
                text = f'"""{doc}"""\n' if doc else ""
                print(f"  create {init}")
                if not dry:
                    init.parent.mkdir(parents=True, exist_ok=True)
                    init.write_text(text)
                    sh("git", "add", str(init))
    return moved


def build_rewriter(modules: list[str], tests: list[str]):
    """One regex pass (no text is rewritten twice) over dotted names and paths."""
    mod_names = sorted(modules, key=len, reverse=True)
    test_names = sorted(tests, key=len, reverse=True)
    table: dict[str, str] = {}
    alts: list[str] = []
    if test_names:
        alts.append(r"(?<![\w.])(?P<tdot>tests\.tasks\.(?:" + "|".join(test_names) + r"))(?![\w])")
        alts.append(r"(?<![\w])(?P<tpath>tests/tasks/(?:" + "|".join(test_names) + r")\.py)")
        for t in test_names:
            table[f"tests.tasks.{t}"] = dotted(TESTS[t])
            table[f"tests/tasks/{t}.py"] = TESTS[t] + ".py"
    for src, dst in TEST_DIRS.items():
        table[src] = dst
    alts.append(r"(?<![\w])(?P<tdir>" + "|".join(re.escape(s) for s in TEST_DIRS) + r")(?![\w])")
    # tasks.<m> but not tests.tasks.<m> nor x.tasks.<m>; tasks/<m>.py but not tests/tasks/<m>.py.
    alts.append(r"(?<![\w.])(?<!tests/)(?P<mdot>tasks\.(?:" + "|".join(mod_names) + r"))(?![\w])")
    alts.append(r"(?<![\w])(?<!tests/)(?P<mpath>tasks/(?:" + "|".join(mod_names) + r")\.py)")
    alts.append(r"(?<![\w.])(?<!tests/)(?P<ddir>tasks[./]templates)(?![\w])")
    for m in modules:
        table[f"tasks.{m}"] = dotted(MODULES[m])
        table[f"tasks/{m}.py"] = MODULES[m] + ".py"
    for src, dst in DIRS.items():
        table[src] = dst
        table[dotted(src)] = dotted(dst)
    pattern = re.compile("|".join(alts))

    def sub(text: str) -> str:
        return pattern.sub(lambda mt: table[mt.group(0)], text)

    return sub


def rewrite_from_tasks_import(text: str, path: str) -> str:
    """``from tasks import a as b, c`` -> one ``from tasks.<pkg> import <new> as <old>`` per name.

    The local name stays what it was (an ``as`` alias where the module was renamed), so the
    code below the import is untouched.
    """
    def one(mt: re.Match[str]) -> str:
        indent, names, comment = mt.group(1), mt.group(2), mt.group(3) or ""
        if "(" in names:
            sys.exit(f"relayout: {path}: parenthesised 'from tasks import (...)' is not handled; split it")
        lines = []
        for part in names.split(","):
            bits = part.split()
            name, alias = bits[0], (bits[2] if len(bits) == 3 and bits[1] == "as" else bits[0])
            if name not in MODULES:
                sys.exit(f"relayout: {path}: 'from tasks import {name}' names no mapped module")
            pkg, new = MODULES[name].rsplit("/", 1)
            lines.append(f"{indent}from {dotted(pkg)} import {new}" + (f" as {alias}" if alias != new else ""))
        lines[-1] += comment
        return "\n".join(lines)

    return re.sub(r"(?m)^([ \t]*)from tasks import ([^#\n]+?)([ \t]*#[^\n]*)?$", one, text)


def fix_file_depth(text: str, old: str, new: str) -> str:
    """A moved file that finds the repository by ``Path(__file__)...parents[k]`` climbs further."""
    delta = len(Path(new).parts) - len(Path(old).parts)
    if not delta:
        return text

    def bump(mt: re.Match[str]) -> str:
        return f"{mt.group(1)}{int(mt.group(2)) + delta}]"

    return re.sub(r"(Path\(__file__\)\.resolve\(\)\.parents\[)(\d+)\]", bump, text)


def rewrite_pyproject(text: str) -> str:
    """Packages by discovery (new sub-packages need no edit) and the templates' new home."""
    text = re.sub(
        r"(?m)^packages = \[[^\]]*\]\n",
        "# Every package under these names (tasks.core, tasks.prepare, ...) by discovery.\n"
        "packages.find.include = [\"flows\", \"flows.*\", \"tasks\", \"tasks.*\", \"models\", \"models.*\", "
        "\"synth\", \"synth.*\"]\n",
        text,
    )
    # The templates are data of the tasks.evaluate package, not a package of their own.
    text = re.sub(r'(?m)^"tasks\.evaluate\.templates" = \["\*\.j2", "\*\.css"\]$',
                  '"tasks.evaluate" = ["templates/*.j2", "templates/*.css"]', text)
    return text


def is_text(path: str) -> bool:
    """Tracked files the rewrite reads (source, docs, configs, scripts)."""
    p = Path(path)
    return (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES) and not path.startswith(NO_REWRITE)


def rewrite(modules: list[str], tests: list[str], moved: dict[str, str], dry: bool) -> None:
    """Rewrite references in every tracked text file."""
    sub = build_rewriter(modules, tests)
    for path in sh("git", "ls-files").splitlines():
        f = Path(path)
        if not f.is_file() or f.is_symlink() or not is_text(path):
            continue
        try:
            old_text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        text = old_text
        if f.suffix == ".py":
            text = rewrite_from_tasks_import(text, path)
        text = sub(text)
        if path in moved:
            text = fix_file_depth(text, moved[path], path)
        # The report's jinja2 loader names the package that holds templates/.
        text = text.replace('PackageLoader("tasks", "templates")', 'PackageLoader("tasks.evaluate", "templates")')
        text = text.replace('/ "tasks" / "templates"', '/ "tasks" / "evaluate" / "templates"')
        if path == "pyproject.toml":
            text = rewrite_pyproject(text)
        if text != old_text:
            print(f"  rewrite {path}")
            if not dry:
                f.write_text(text, encoding="utf-8")
                sh("git", "add", path)


def check_left(dry: bool) -> int:
    """Report references to the old flat names that the rules did not rewrite (for a human to read)."""
    if dry:
        return 0
    olds = sorted(MODULES, key=len, reverse=True)
    pat = re.compile(r"(?<![\w.])(?<!tests/)tasks[./](?:" + "|".join(olds) + r")(?:\.py)?(?![\w])")
    left = 0
    for path in sh("git", "ls-files").splitlines():
        if not is_text(path) or not Path(path).is_file():
            continue
        for n, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pat.search(line):
                print(f"  left: {path}:{n}: {line.strip()}")
                left += 1
    modules_left = [p for p in sh("git", "ls-files", "tasks").splitlines()
                    if re.fullmatch(r"tasks/\w+\.py", p) and p != "tasks/__init__.py"]
    if modules_left:
        print("  still directly in tasks/: " + ", ".join(modules_left))
        left += len(modules_left)
    return left


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    args = ap.parse_args()
    modules, tests = preflight()
    print(f"relayout: {len(modules)} modules, {len(tests)} test files")
    moved = move(modules, tests, args.dry_run)
    rewrite(modules, tests, moved, args.dry_run)
    left = check_left(args.dry_run)
    if left:
        print(f"relayout: {left} reference(s) to old names left (above); fix them by hand or add a rule")
        return 1
    print("relayout: done; nothing is committed. Next: reinstall (pip install -e .), run "
          "tests/test_golden.py and make test-fast, read git diff --cached -M, commit.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
