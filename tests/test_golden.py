"""Golden regression test: every CLI command that writes data, before and after a refactoring.

A restructuring of the package changes no command, option, output file, manifest
column or number. This test runs every data-writing command of ``tomoflow`` on a
small seeded synthetic dataset (CPU, fixed seeds) and compares what it wrote with
``tests/golden/*.json``, recorded from the code before the restructuring:

* the sha256 of every file ``synth`` writes (DICOMs, CSVs, reports),
* the sha256 of every PNG and of every manifest / rejects parquet the other commands write
  (``export-slices``; ``prepare`` with each of the three strategies; ``run``),
* the numbers in ``metrics.json`` and ``history.csv`` (``train``, ``evaluate``, ``run``).

Training on the CPU with fixed seeds is bit-stable here, yet floating-point numbers are
compared with a tight relative tolerance (:data:`REL_TOL`) so that a harmless change in the
order of a reduction cannot fail the test while any real change still does.

To record the golden files again (only when a change of output is intended and explained):
``TOMOFLOW_GOLDEN_UPDATE=1 pytest tests/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TOMOFLOW_GOLDEN_UPDATE") == "1"
REL_TOL = 1e-6
ABS_TOL = 1e-9

#: The dataset: few patients, small frames, thin volumes, so the whole test stays near 3 minutes; 16 patients is the fewest with which the demo preset of `run` (single slice, 50/20/30 splits stratified by label) keeps both classes in every split and stays under its 10% reject limit.
SYNTH_ARGS = ["--patients", "16", "--seed", "1", "--rows", "64", "--columns", "48", "--frames", "6-9",
              "--positive-fraction", "0.3"]
STRATEGIES = ("all-slices", "single-slice", "lesion-slices")
#: Where prepare's, train's and run's outputs carry files whose bytes are content (not timing).
DATA_SUFFIXES = (".parquet", ".png")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hash_tree(root: Path, suffixes: tuple[str, ...] | None = None) -> dict[str, str]:
    """``{relative path: sha256}`` of the files under ``root`` (all, or those with ``suffixes``).

    Files under a ``.work`` folder are intermediates keyed by cache keys that may change
    with the code version; they are not outputs. Nor is the per-volume score cache
    (``.volume-scores``: its file names carry the checkpoint's hash, and the checkpoint holds the
    run's temporary paths); the scores it holds are compared through ``volume_frames.parquet``.
    """
    hashes = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or any(part in (".work", ".volume-scores") for part in Path(rel).parts):
            continue
        if suffixes is None or path.name.endswith(suffixes):
            hashes[rel] = _sha256(path)
    return hashes


def _numbers(value: Any) -> Any:
    """The numeric skeleton of a JSON value: numbers, booleans and None kept, string values of keys
    dropped (they hold paths of the temporary folders and times)."""
    if isinstance(value, dict):
        out = {k: _numbers(v) for k, v in sorted(value.items())}
        return {k: v for k, v in out.items() if v is not _DROP}
    if isinstance(value, list):
        # Strings inside lists are names (levels, classes), kept as they are.
        return [v if isinstance(v, str) else _numbers(v) for v in value]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return _DROP


class _Drop:
    def __repr__(self) -> str:
        return "<dropped>"


_DROP = _Drop()


def _history(path: Path) -> list[dict[str, Any]]:
    """``history.csv`` rows without wall-time columns (those change from run to run)."""
    frame = pd.read_csv(path)
    keep = [c for c in frame.columns if "time" not in c.lower() and "second" not in c.lower()]
    return json.loads(frame[keep].to_json(orient="records"))


def _close(actual: Any, expected: Any, where: str) -> list[str]:
    """Differences between two numeric skeletons, as readable lines."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        problems = []
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                problems.append(f"{where}.{key}: missing (expected {expected[key]!r})")
            elif key not in expected:
                problems.append(f"{where}.{key}: unexpected ({actual[key]!r})")
            else:
                problems += _close(actual[key], expected[key], f"{where}.{key}")
        return problems
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} items, expected {len(expected)}"]
        return [p for i, (a, e) in enumerate(zip(actual, expected)) for p in _close(a, e, f"{where}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        if math.isnan(expected) and math.isnan(actual):
            return []
        if math.isclose(actual, expected, rel_tol=REL_TOL, abs_tol=ABS_TOL):
            return []
    elif actual == expected and type(actual) is type(expected):
        return []
    return [f"{where}: {actual!r}, expected {expected!r}"]


@pytest.fixture(scope="session")
def golden_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every data-writing command once (one temporary Prefect server) and collect the results."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.cli import main

    base = tmp_path_factory.mktemp("golden")
    data = base / "data"
    results: dict[str, Any] = {}

    assert main(["synth", str(data), *SYNTH_ARGS]) == 0
    results["synth"] = _hash_tree(data)

    dicom = sorted(data.rglob("*.dcm"))[0]
    export = base / "export"
    assert main(["export-slices", str(dicom), "--out", str(export), "--view", "rcc", "--image-size", "32"]) == 0
    results["export-slices"] = _hash_tree(export)

    with prefect_test_harness(server_startup_timeout=240):
        for strategy in STRATEGIES:
            out = base / f"prepared-{strategy}"
            assert main(["prepare", "--data-root", str(data), "--out", str(out), "--strategy", strategy,
                         "--image-size", "48", "--seed", "0", "--executor", "serial",
                         "--max-reject-fraction", "1"]) == 0
            results[f"prepare-{strategy}"] = _hash_tree(out, DATA_SUFFIXES)

        run = base / "train-run"
        assert main(["train", "--manifest", str(base / "prepared-all-slices" / "manifest.parquet"),
                     "--out", str(run), "--model", "vgg16", "--weights", "none", "--epochs", "2",
                     "--batch-size", "8", "--image-size", "32", "--max-batches", "3", "--seed", "0",
                     "--num-workers", "0", "--device", "cpu"]) == 0
        results["train"] = {"history": _history(run / "history.csv")}

        assert main(["evaluate", "--run", str(run), "--bootstrap", "50", "--seed", "0",
                     "--device", "cpu"]) == 0
        metrics = sorted(run.rglob("metrics.json"))
        assert len(metrics) == 1, metrics
        results["evaluate"] = {"metrics": _numbers(json.loads(metrics[0].read_text()))}

        outputs = base / "pipeline"
        assert main(["run", "--data-root", str(data), "--out", str(outputs), "--preset", "demo"]) == 0
        pipeline_metrics = sorted(outputs.rglob("metrics.json"))
        histories = sorted(outputs.rglob("history.csv"))
        assert len(pipeline_metrics) == 1 and len(histories) == 1, (pipeline_metrics, histories)
        # Folder keys under prepared/, models/, evaluations/ hash the (temporary) data root: name files
        # by their top folder and file name.
        manifests = {f"{p.relative_to(outputs).parts[0]}/{p.name}": _sha256(p)
                     for p in sorted(outputs.rglob("*.parquet")) if not {".work", ".volume-scores"} & set(p.parts)}
        results["run"] = {
            "parquet": manifests,
            "history": _history(histories[0]),
            "metrics": _numbers(json.loads(pipeline_metrics[0].read_text())),
        }
    return results


COMMANDS = ("synth", "export-slices", *(f"prepare-{s}" for s in STRATEGIES), "train", "evaluate", "run")


@pytest.mark.parametrize("command", COMMANDS)
def test_command_output_matches_golden(golden_outputs: dict[str, Any], command: str) -> None:
    path = GOLDEN_DIR / f"{command}.json"
    actual = golden_outputs[command]
    if UPDATE:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    assert actual, f"{command} wrote nothing to compare"
    if command == "synth" or command == "export-slices" or command.startswith("prepare-"):
        assert actual == expected, _diff_hashes(actual, expected)
    else:
        problems = _close(actual, expected, command)
        assert not problems, "\n".join(problems[:20])


def _diff_hashes(actual: dict[str, str], expected: dict[str, str]) -> str:
    lines = [f"missing: {k}" for k in sorted(set(expected) - set(actual))]
    lines += [f"new: {k}" for k in sorted(set(actual) - set(expected))]
    lines += [f"changed: {k}" for k in sorted(set(actual) & set(expected)) if actual[k] != expected[k]]
    return "\n".join(lines[:30])
