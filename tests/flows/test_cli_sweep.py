"""``tomoflow experiments --train-fractions`` (flows/cli_sweep.py): wrong options stop before the sweep's
flow starts, each with one message naming the option."""

from __future__ import annotations

from pathlib import Path

import pytest

import flows.sweep
from flows.cli import build_parser
from flows.cli_experiments import cmd_experiments


@pytest.fixture
def no_flow(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The sweep's flow replaced by a recorder: a test that reaches it gets its arguments back."""
    calls: list[dict] = []
    monkeypatch.setattr(flows.sweep, "run_sweep", lambda **kwargs: calls.append(kwargs) or {"ok": True})
    return calls


def _sweep(tmp_path: Path, *options: str) -> int:
    args = build_parser().parse_args(["experiments", "--data-root", str(tmp_path / "data"), "--out",
                                      str(tmp_path / "out"), *options])
    return cmd_experiments(args)


@pytest.mark.parametrize("options, message", [
    (("--train-fractions", "0.5,1.5"), "--train-fractions '0.5,1.5'"),
    (("--train-fractions", "0.5", "--repeats", "0"), "--repeats 0: expected 1 or more"),
    (("--train-fractions", "0.5", "--weights", "none,none"), "--weights 'none,none'"),
])
def test_a_wrong_sweep_option_stops_before_the_flow(tmp_path: Path, no_flow: list[dict], options, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        _sweep(tmp_path, *options)
    assert no_flow == [] and not (tmp_path / "out").exists()


def test_an_out_that_cannot_be_written_stops_before_the_flow(tmp_path: Path, no_flow: list[dict]) -> None:
    (tmp_path / "out").write_text("a file, not a folder")
    with pytest.raises(ValueError, match="--out"):
        _sweep(tmp_path, "--train-fractions", "0.5,1")
    assert no_flow == []


def test_the_sweep_gets_its_options_and_the_shared_caps(tmp_path: Path, no_flow: list[dict], capsys) -> None:
    assert _sweep(tmp_path, "--train-fractions", "0.25,1", "--repeats", "2", "--epochs", "3",
                  "--set", "train.lr=0.01", "--preset", "cpu-scratch") == 0
    [call] = no_flow
    assert call["fractions"] == [0.25, 1.0] and call["repeats"] == 2 and call["preset"] == "cpu-scratch"
    assert call["overrides"]["train"] == {"lr": 0.01, "epochs": 3}
    first, second = call["weights"]  # none,imagenet by default
    assert "none" in str(first).lower() and "imagenet" in str(second).lower()
    assert '"ok": true' in capsys.readouterr().out
