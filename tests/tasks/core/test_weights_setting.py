"""What ``--weights`` means, decided once (tasks/core/weights_setting.py), and every reader agreeing on it."""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from flows.train import _describe
from models.weights.resolve import imagenet_weights_file, resolve_weights
from models.weights.transfer import weights_source
from tasks.core.config import ModelConfig, TrainConfig
from tasks.core.weights_setting import WEIGHTS_CHOICES, WeightsSetting
from tasks.evaluate.report_sections import training
from tasks.infra.caching import content_key
from tasks.sweep.analysis import parse_weights, start_label, weights_label
from tasks.train.steps import _weights_file

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """One setting of each kind, each naming something that exists (ImageNet's cache file too)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cache = imagenet_weights_file("vgg16")
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"stand-in")
    run = tmp_path / "source-run"
    run.mkdir()
    torch.save({"model": {}, "model_config": {"model": "vgg16"}, "epoch": 3}, run / "best.pt")
    (run / "config.json").write_text("{}")
    state = tmp_path / "mine.pth"
    torch.save(torch.nn.Linear(2, 1).state_dict(), state)
    return {"imagenet": "imagenet", "none": "none", "file": str(state), "run": str(run),
            "run-checkpoint": str(run / "best.pt")}


def test_each_kind_is_recognised(starts: dict[str, str], tmp_path: Path) -> None:
    kinds = {name: WeightsSetting.verify(text).kind for name, text in starts.items()}
    assert kinds == {"imagenet": "imagenet", "none": "none", "file": "file", "run": "run", "run-checkpoint": "run"}
    assert WeightsSetting.verify(None).kind == "none"  # torchvision's weights=None
    assert WeightsSetting.verify(tmp_path / "source-run").kind == "run"  # an os.PathLike
    missing = WeightsSetting.verify(str(tmp_path / "not-yet.pth"))
    assert missing.kind == "file" and missing.path == tmp_path / "not-yet.pth"
    # A file with a training run's config.json beside it is a checkpoint of that run, whatever its name.
    other = tmp_path / "source-run" / "epoch3.pt"
    other.write_bytes(b"x")
    assert WeightsSetting.verify(str(other)).kind == "run"


@pytest.mark.parametrize("text, says", [
    ("scratch", "pass none to train from scratch"),
    ("Scratch", "pass none to train from scratch"),
    ("None", "write none"),
    ("ImageNet", "write imagenet"),
    (" imagenet", "write imagenet"),
    ("", "is empty"),
    ("   ", "is empty"),
])
def test_bad_values_are_refused_naming_the_value_and_the_choices(text: str, says: str) -> None:
    with pytest.raises(ValueError) as caught:
        WeightsSetting.verify(text)
    message = str(caught.value)
    assert repr(text) in message and says in message and WEIGHTS_CHOICES in message and "\n" not in message
    with pytest.raises(ValidationError) as invalid:
        ModelConfig(weights=text)
    assert says in str(invalid.value)
    if text and text.strip() == text:  # the sweep's list strips its items; the others are refused, naming the option
        with pytest.raises(ValueError, match=f"--weights 'none,{text}': weights '{text}'"):
            parse_weights(f"none,{text}")


def test_scratch_is_refused_everywhere_never_keyed_as_a_path() -> None:
    """``scratch`` was a keyword to the loader and a path to the cache key; now every reader refuses it."""
    for read in (lambda: ModelConfig(weights="scratch"), lambda: resolve_weights("vgg16", "scratch"),
                 lambda: start_label("scratch"), lambda: weights_source("vgg16", "scratch"),
                 lambda: parse_weights("none,scratch")):
        with pytest.raises(ValueError, match="'scratch' is not a choice"):
            read()


def test_the_setting_serialises_as_the_text_given(starts: dict[str, str]) -> None:
    """config.json and cache keys hold exactly the text: the same as when the field was a plain str."""
    for text in starts.values():
        cfg = TrainConfig(model=ModelConfig(weights=text))
        dumped = cfg.model_dump()["model"]["weights"]
        assert type(dumped) is str and dumped == text
        assert json.loads(cfg.model_dump_json())["model"]["weights"] == text
        plain = {**cfg.model.model_dump(mode="json"), "weights": text}
        assert content_key({"model": cfg.model}) == content_key({"model": plain})
        assert pickle.loads(pickle.dumps(cfg)).model.weights.kind == cfg.model.weights.kind
    assert ModelConfig.model_json_schema()["properties"]["weights"]["type"] == "string"
    assert ModelConfig().weights.kind == "imagenet"  # the default is parsed too


def test_every_reader_reads_the_same_kind(starts: dict[str, str]) -> None:
    """The sweep's label, the report's start, the run name, the cache key, the loader and the checkpoint
    record all follow the one parsed kind, for the same input."""
    expected = {  # kind: (sweep label prefix, report start, run-name suffix, weights_source kind)
        "imagenet": ("imagenet", "imagenet", "", "imagenet"),
        "none": ("scratch", "scratch", " scratch", "none"),
        "file": ("from-", "file", " custom-weights", "file"),
        "run": ("from-source-run", "file", " custom-weights", "tomoflow"),
    }
    for name, text in starts.items():
        cfg = TrainConfig(model=ModelConfig(weights=text))
        kind = cfg.model.weights.kind
        label, start, suffix, source = expected[kind]
        assert weights_label(text).startswith(label) and start_label(text).startswith(label), name
        assert training({"model": {"model": "vgg16", "weights": text}})["start"] == start, name
        assert _describe(cfg) == f"vgg16 sgd{suffix}", name
        assert weights_source("vgg16", text)["kind"] == source, name
        resolved = resolve_weights("vgg16", text)
        keyed = _weights_file(cfg)
        if kind in ("imagenet", "none"):
            assert keyed is None, name  # keyed by the setting itself, not by a file
        else:
            assert keyed is not None and Path(keyed) == resolved, name  # the file the loader reads is the one keyed
        assert (resolved is None) == (kind == "none"), name
    assert weights_label(starts["run"]) != weights_label(starts["file"])


def _keyword_comparisons(path: Path, root: Path = ROOT) -> list[str]:
    """Comparisons of something with ``imagenet``/``none``/``scratch``/``None`` text, unless the something
    is a parsed ``kind``."""
    src = path.read_text()
    found = []
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        texts = {c.value for side in sides for c in ast.walk(side)
                 if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        reads_kind = any(isinstance(s, ast.Attribute) and s.attr == "kind" or isinstance(s, ast.Name) and s.id == "kind"
                         for s in sides)
        if texts & {"imagenet", "none", "scratch", "None"} and not reads_kind:
            found.append(f"{path.relative_to(root)}: {ast.get_source_segment(src, node)}")
    return found


#: ``tomoflow experiments --weights preset|none``: another option (each preset's weights, or none), not a setting.
_EXPERIMENTS_OPTION = {"tasks/pipeline/experiments.py: weights == \"none\"",
                       "flows/cli_experiments.py: weights not in (\"preset\", \"none\")"}


def test_no_module_decides_the_weights_keywords_again() -> None:
    found = [f for package in ("models", "tasks", "flows") for p in sorted((ROOT / package).rglob("*.py"))
             if p.name != "weights_setting.py" for f in _keyword_comparisons(p)]
    assert sorted(set(found) - _EXPERIMENTS_OPTION) == []


def test_the_keyword_check_sees_a_string_comparison(tmp_path: Path) -> None:
    """The control: the comparisons the issue found (flows/train.py's, the cache key's) are reported."""
    probe = tmp_path / "probe.py"
    probe.write_text('def f(cfg):\n    return cfg.model.weights in ("none", "None") or cfg.kind == "none"\n')
    assert _keyword_comparisons(probe, tmp_path) == ['probe.py: cfg.model.weights in ("none", "None")']
