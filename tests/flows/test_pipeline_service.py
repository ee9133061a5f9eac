"""The pipeline as the service runs it: wrong parameters fail at once (Failed, one line), no retries
on data errors, run names that never raise, the merged configuration stored with the run."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_unknown_preset_fails_before_any_work_listing_the_known_ones(prefect_harness, tmp_path: Path) -> None:
    from flows.pipeline import tomoflow_pipeline

    state = tomoflow_pipeline(data_root=str(tmp_path), output_root=str(tmp_path / "out"), preset="demo2",
                              return_state=True)
    assert state.is_failed() and not state.is_crashed()
    assert "\n" not in state.message
    assert "unknown preset 'demo2'" in state.message and "m1-baseline" in state.message
    assert not (tmp_path / "out").exists()


def test_missing_roots_name_the_variable(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    from flows.pipeline import tomoflow_pipeline

    monkeypatch.delenv("TOMOFLOW_DATA_ROOT", raising=False)
    monkeypatch.delenv("TOMOFLOW_OUTPUT_ROOT", raising=False)
    state = tomoflow_pipeline(preset="demo", return_state=True)
    assert state.is_failed()
    assert "TOMOFLOW_DATA_ROOT" in state.message and "export TOMOFLOW_DATA_ROOT=" in state.message

    monkeypatch.setenv("TOMOFLOW_DATA_ROOT", str(tmp_path / "nowhere"))
    state = tomoflow_pipeline(preset="demo", output_root=str(tmp_path / "out"), return_state=True)
    assert state.is_failed() and "is not a folder" in state.message and "TOMOFLOW_DATA_ROOT" in state.message

    monkeypatch.setenv("TOMOFLOW_DATA_ROOT", str(tmp_path))
    state = tomoflow_pipeline(preset="demo", return_state=True)
    assert state.is_failed() and "TOMOFLOW_OUTPUT_ROOT" in state.message


def test_preflight_fails_before_any_work_naming_the_cli_fix(prefect_harness, small_dataset: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    from flows.pipeline import tomoflow_pipeline

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    state = tomoflow_pipeline(data_root=str(small_dataset), output_root=str(tmp_path / "out"), return_state=True)
    assert state.is_failed() and "\n" not in state.message
    assert "Preflight found 1 problem before any work: ImageNet weights for vgg16" in state.message
    assert "--weights none" in state.message and "--param" not in state.message
    assert state.message.rstrip().endswith(".") and len(state.message) < 700
    assert not (tmp_path / "out" / "prepared").exists()  # nothing was prepared


def test_invalid_setting_is_one_line_naming_the_field(prefect_harness, tmp_path: Path) -> None:
    from flows.pipeline import tomoflow_pipeline

    state = tomoflow_pipeline(data_root=str(tmp_path), output_root=str(tmp_path / "out"),
                              config={"train": {"epochs": 0}}, return_state=True)
    assert state.is_failed() and "\n" not in state.message
    assert "config.train.epochs" in state.message and "(got 0)" in state.message


def test_run_name_never_raises(monkeypatch, tmp_path: Path) -> None:
    import tasks.infra.run_names
    import tasks.pipeline.steps
    from flows import evaluate, prepare, train

    # No ImageNet weights here: the demo falls back to vgg16_bn, trained on 64 px (its slices are 96 px).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    class Params:
        def __init__(self, params):
            self.parameters = params

    for params, expected in (({"preset": "demo2"}, "pipeline (unknown preset)"),
                             ({"config": {"train": {"epochs": -1}}}, "pipeline (invalid parameters)"),
                             ({"preset": "demo"}, "pipeline demo vgg16_bn 64px"),
                             ({"config": "not a mapping"}, "pipeline (invalid parameters)")):
        monkeypatch.setattr(tasks.pipeline.steps, "flow_run", Params(params))
        assert tasks.pipeline.steps.pipeline_run_name() == expected
    monkeypatch.setattr(tasks.infra.run_names, "flow_run", Params({"config": {"nope": 1}}))
    for module, name in ((train, "train (invalid config)"), (evaluate, "evaluate (invalid config)"),
                         (prepare, "prepare (invalid config)")):
        assert module._run_name() == name
    monkeypatch.setattr(tasks.infra.run_names, "flow_run", Params({"config": {"slices": {"image_size": 96}}}))
    assert prepare._run_name() == "prepare all-slices 96px"
    monkeypatch.setattr(tasks.infra.run_names, "flow_run", Params({"config": {"run_dir": "runs/a", "split": "test"}}))
    assert evaluate._run_name() == "evaluate a test"


def test_fit_model_is_not_retried_on_a_data_error(prefect_harness, tmp_path: Path, monkeypatch) -> None:
    import models.training.fit
    from flows.train import train_classifier
    from tasks.core.config import TrainConfig

    calls = []

    def fit(*args, **kwargs):
        calls.append(1)
        raise ValueError("the 'validation' split holds only label 0")

    monkeypatch.setattr(models.training.fit, "fit", fit)
    config = TrainConfig(manifest=str(tmp_path / "manifest.parquet"), run_dir=str(tmp_path / "run"),
                         model={"weights": "none"}, train={"device": "cpu", "multi_gpu": False},
                         augment={"offline_balance": False})
    state = train_classifier(config=config, return_state=True)
    assert state.is_failed()
    assert "only label 0" in state.message
    assert len(calls) == 1


def test_failed_training_deployment_reason_and_link_in_the_message(monkeypatch) -> None:
    import uuid

    import prefect.deployments
    from prefect.settings import PREFECT_UI_URL, temporary_settings
    from prefect.states import Failed

    from tasks.pipeline.steps import ChildRunFailed, run_training_deployment as _run_training_deployment
    from tasks.core.config import TrainConfig

    child_id = uuid.uuid4()

    class Child:
        id = child_id
        state = Failed(message="Flow run encountered an exception: ValueError: the 'validation' split\n"
                               "holds only label 0")

    monkeypatch.setattr(prefect.deployments, "run_deployment", lambda *a, **k: Child())
    with temporary_settings({PREFECT_UI_URL: "http://127.0.0.1:4200"}):
        with pytest.raises(ChildRunFailed) as info:
            _run_training_deployment("train-classifier/gpu-train", TrainConfig())
    message = str(info.value)
    assert "\n" not in message and "Flow run encountered" not in message
    assert "ended Failed: ValueError: the 'validation' split holds only label 0" in message
    assert f"http://127.0.0.1:4200/runs/flow-run/{child_id}" in message
