"""The pipeline's first step: problems found in seconds, as whole sentences naming the right fix."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.pipeline.preflight import (MESSAGE_LIMIT, SCRATCH_PARAM, fit_sentences, output_root_problem, preflight_message,
                             preflight_problems, training_pool_problem)
from tasks.core.presets import pipeline_config


def _cfg(data: Path, out: Path, **base):
    return pipeline_config(data_root=str(data), output_root=str(out), base=base)


def test_fit_sentences_never_cuts_a_sentence() -> None:
    sentences = [f"Problem {i} is described by this rather long sentence with several words in it." for i in range(20)]
    text = fit_sentences(sentences, limit=300)
    assert len(text) <= 300
    assert text.endswith("more problems in the run's log.")
    kept = text.split(". ")
    # Every kept sentence is whole: it is one of the inputs (without its full stop) or the count.
    for part in kept[:-1]:
        assert part + "." in sentences
    assert fit_sentences(sentences[:2], limit=300) == " ".join(sentences[:2])
    huge = fit_sentences(["word " * 200 + "end."], limit=100)
    assert len(huge) <= 100 and huge.endswith("word (...).")


def test_missing_weights_names_the_deployment_parameter_or_the_cli_flag(tmp_path: Path, monkeypatch,
                                                                        small_csv_root: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = _cfg(small_csv_root, tmp_path / "out")
    assert cfg.model.weights == "imagenet"
    [deployed] = preflight_problems(cfg, "deployment")
    assert SCRATCH_PARAM in deployed and "--weights" not in deployed
    assert "vgg16-397923af.pth" in deployed and str(tmp_path / "torch") in deployed
    [cli] = preflight_problems(cfg, "cli")
    assert "--weights none" in cli and "--param" not in cli
    message = preflight_message([deployed])
    assert message.startswith("Preflight found 1 problem before any work: ImageNet weights for vgg16")
    assert len(message) <= MESSAGE_LIMIT and message.endswith(".") and "\n" not in message

    assert preflight_problems(_cfg(small_csv_root, tmp_path / "out", model={"weights": "none"}), "deployment") == []


def test_data_and_output_roots(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    empty = tmp_path / "empty"
    empty.mkdir()
    problems = preflight_problems(_cfg(empty, tmp_path / "out", model={"weights": "none"}), "deployment")
    assert len(problems) == 1 and "holds no BCS-DBT file-paths CSV" in problems[0] and "TOMOFLOW_DATA_ROOT" in problems[0]
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").iterdir())  # the probe file is gone

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    problem = output_root_problem(str(blocked / "out"))
    assert problem and "cannot be written" in problem and str(blocked / "out") in problem


def test_training_pool_must_have_a_worker_online() -> None:
    from prefect.exceptions import ObjectNotFound

    pools = {"gpu-pool": SimpleNamespace(status="NOT_READY", is_paused=False)}

    class Client:
        def read_deployment_by_name(self, name):
            if name != "train-classifier/gpu-train":
                raise ObjectNotFound(http_exc=Exception("404"))
            return SimpleNamespace(work_pool_name="gpu-pool")

        def read_work_pool(self, name):
            return pools[name]

    offline = training_pool_problem("train-classifier/gpu-train", Client())
    assert offline and "No worker of the work pool gpu-pool is online" in offline
    assert "tomoflow-worker@gpu-pool" in offline
    pools["gpu-pool"] = SimpleNamespace(status="READY", is_paused=False)
    assert training_pool_problem("train-classifier/gpu-train", Client()) is None
    pools["gpu-pool"] = SimpleNamespace(status="PAUSED", is_paused=True)
    assert "paused" in training_pool_problem("train-classifier/gpu-train", Client())
    missing = training_pool_problem("train-classifier/nope", Client())
    assert missing and "does not exist" in missing and "prefect --no-prompt deploy --all" in missing


@pytest.fixture
def small_csv_root(tmp_path: Path) -> Path:
    """A folder with a BCS-DBT file-paths CSV (preflight only looks for it)."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "BCS-DBT file-paths-train-v2.csv").write_text("PatientID,StudyUID,View,descriptive_path,classic_path\n")
    return root
