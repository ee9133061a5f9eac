"""Service environment checks: roots, the checkout pull step, links."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.infra.environment import CODE_DIR, ServiceConfigError, checkout, outputs_url, resolve_root


def test_missing_root_names_variable_and_command(monkeypatch) -> None:
    monkeypatch.delenv("TOMOFLOW_OUTPUT_ROOT", raising=False)
    with pytest.raises(ServiceConfigError, match=r"TOMOFLOW_OUTPUT_ROOT is not set.*export TOMOFLOW_OUTPUT_ROOT="):
        resolve_root(None, "TOMOFLOW_OUTPUT_ROOT", "output_root", "output root", must_exist=False, deployment=True)


def test_deployment_runs_never_write_into_the_checkout(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOMOFLOW_HOME", str(CODE_DIR))
    with pytest.raises(ServiceConfigError, match="relative path"):
        resolve_root("output", "X", "output_root", "output root", must_exist=False, deployment=True)
    with pytest.raises(ServiceConfigError, match="inside the code checkout"):
        resolve_root(str(CODE_DIR / "output"), "X", "output_root", "output root", must_exist=False, deployment=True)
    assert resolve_root(str(tmp_path), "X", "output_root", "output root", must_exist=True,
                        deployment=True) == str(tmp_path)


def test_checkout_step_names_the_variable(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TOMOFLOW_HOME", raising=False)
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    with pytest.raises(RuntimeError, match=r"TOMOFLOW_HOME is not set.*export TOMOFLOW_HOME="):
        checkout()
    monkeypatch.setenv("TOMOFLOW_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="not a tomoflow checkout"):
        checkout()


def test_outputs_url(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TOMOFLOW_OUTPUTS_URL", raising=False)
    assert outputs_url(tmp_path / "evaluations" / "k" / "report.html", tmp_path) is None
    monkeypatch.setenv("TOMOFLOW_OUTPUTS_URL", "http://127.0.0.1:8080/")
    assert (outputs_url(tmp_path / "runs" / "pipeline demo" / "a.png", tmp_path)
            == "http://127.0.0.1:8080/runs/pipeline%20demo/a.png")
