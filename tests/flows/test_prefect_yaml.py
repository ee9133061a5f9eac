"""prefect.yaml: pools defined once, the deployments the users run, pull steps that work."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def test_pools_defined_once_and_used(spec: dict) -> None:
    pools = spec["definitions"]["work_pools"]
    assert {p["name"] for p in pools.values()} == {"cpu-pool", "gpu-pool"}
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert by_name["gpu-train"]["work_pool"]["name"] == "gpu-pool"
    assert "CUDA_VISIBLE_DEVICES" in by_name["gpu-train"]["work_pool"]["job_variables"]["env"]
    assert all(d["work_pool"]["name"] == "cpu-pool" for n, d in by_name.items() if n not in ("gpu-train", "score-new"))


def test_score_new_is_scheduled_in_the_training_pool_and_queues_per_output_root(spec: dict) -> None:
    """score-new runs the score-studies flow on a schedule, where training runs, one at a time."""
    from flows.score import score_studies

    by_name = {d["name"]: d for d in spec["deployments"]}
    score = by_name["score-new"]
    module, func = score["entrypoint"].split(":")
    assert (module, func) == ("flows/score.py", "score_studies") and score_studies.name == "score-studies"
    assert score["schedules"] and score["schedules"][0]["active"] is True and score["schedules"][0]["cron"]
    gpu = spec["definitions"]["gpu_training"].get("train_deployment")
    expected = by_name[gpu.split("/")[1]]["work_pool"]["name"] if gpu else "cpu-pool"
    assert score["work_pool"]["name"] == expected == "gpu-pool"
    assert score["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert "tomoflow" in score["tags"]


def test_deployments_cover_schedule_adhoc_and_every_preset(spec: dict) -> None:
    from tasks.core.presets import STUDY_PRESETS

    by_name = {d["name"]: d for d in spec["deployments"]}
    assert by_name["nightly"]["schedules"][0]["cron"] == "0 2 * * *"
    assert "schedules" not in by_name["adhoc-retrain"]
    for preset in STUDY_PRESETS:
        assert by_name[preset]["parameters"]["preset"] == preset
    for name, deployment in by_name.items():
        module, func = deployment["entrypoint"].split(":")
        assert (REPO / module).is_file() and f"def {func}(" in (REPO / module).read_text()


def _run_pull_steps(steps: list, env: dict[str, str], cwd: Path) -> dict:
    from prefect.deployments.steps.core import run_steps

    old_env, old_cwd = dict(os.environ), Path.cwd()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        return asyncio.run(run_steps(steps))
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)


def test_pull_from_checkout(prefect_harness, spec: dict, tmp_path: Path) -> None:
    steps = spec["pull"]
    out = _run_pull_steps(steps, {"TOMOFLOW_HOME": str(REPO)}, tmp_path)
    assert Path(out["directory"]) == REPO


def test_pull_from_git_clone(prefect_harness, spec: dict, tmp_path: Path) -> None:
    import subprocess

    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    if not branch or branch == "HEAD":
        pytest.skip("the checkout is not on a branch, nothing to clone by name")
    steps = spec["definitions"]["pull_steps"]["from_git"]
    out = _run_pull_steps(steps, {"TOMOFLOW_GIT_URL": f"file://{REPO}", "TOMOFLOW_GIT_BRANCH": branch}, tmp_path)
    cloned = Path(out["directory"])
    assert cloned.is_relative_to(tmp_path)
    assert (cloned / "flows" / "pipeline.py").is_file() and (cloned / "prefect.yaml").is_file()


def test_run_form_puts_the_operator_fields_first_without_misleading_defaults() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import tomoflow_pipeline
    from tasks.core.presets import list_presets

    schema = parameter_schema(tomoflow_pipeline.fn).model_dump()
    props = schema["properties"]
    assert sorted(props, key=lambda name: props[name]["position"])[:3] == ["data_root", "output_root", "preset"]
    assert all(props[name]["default"] is None for name in props)
    choices = next(option["enum"] for option in props["preset"]["anyOf"] if "enum" in option)
    assert choices == list_presets()
    # config is one JSON field (settings over the preset), not ~90 fields with path defaults.
    assert "definitions" not in schema or not schema["definitions"]


def test_checkout_pull_step_and_gpu_handoff(spec: dict) -> None:
    assert spec["pull"] == [{"tasks.infra.environment.checkout": {}}]
    by_name = {d["name"]: d for d in spec["deployments"]}
    for name, deployment in by_name.items():
        if deployment["entrypoint"].startswith("flows/pipeline.py"):
            assert deployment["parameters"]["config"]["train_deployment"] == "train-classifier/gpu-train", name


def test_every_deployment_is_tagged_for_alerts_and_overlaps_queue(spec: dict) -> None:
    # deploy/automations.yaml matches runs by the tag "tomoflow": every deployment carries it.
    assert all("tomoflow" in d["tags"] for d in spec["deployments"])
    by_name = {d["name"]: d for d in spec["deployments"]}
    for name in ("nightly", "gpu-train"):
        limit = by_name[name]["concurrency_limit"]
        assert limit == {"limit": 1, "collision_strategy": "ENQUEUE"}, name


def test_form_help_is_plain_text_and_says_what_no_preset_runs() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import tomoflow_pipeline

    props = parameter_schema(tomoflow_pipeline.fn).model_dump()["properties"]
    assert all(":class:" not in (p.get("description") or "") and ":func:" not in (p.get("description") or "")
               for p in props.values())
    assert "None" in props["preset"]["description"] and "defaults" in props["preset"]["description"]
    assert '{"model": {"weights": "none"}}' in props["config"]["description"]
