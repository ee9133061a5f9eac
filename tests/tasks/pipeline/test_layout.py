"""Tests for tasks.pipeline.layout: the pipeline's keyed step folders and the run folder's links."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.core.presets import pipeline_config
from tasks.pipeline.layout import evaluate_config, link_outputs, prepare_config, prepared_dir, slug, train_config


def test_slug_is_one_folder_name() -> None:
    assert slug("demo run / vgg16 64px") == "demo-run-vgg16-64px"
    assert slug("///") == "run"


def test_prepared_folder_keys_on_what_changes_the_data_only(tmp_path: Path) -> None:
    cfg = pipeline_config(data_root=str(tmp_path / "data"), output_root=str(tmp_path / "out"))
    more_workers = cfg.model_copy(update={"slices": cfg.slices.model_copy(update={"workers": 7})})
    other_size = cfg.model_copy(update={"slices": cfg.slices.model_copy(update={"image_size": 96})})
    root = tmp_path / "out"
    assert prepared_dir(root, cfg) == prepared_dir(root, more_workers)
    assert prepared_dir(root, cfg) != prepared_dir(root, other_size)
    assert prepared_dir(root, other_size).name.startswith(f"{cfg.slices.strategy}-96px-")


def test_run_folder_links_to_the_three_keyed_folders(tmp_path: Path) -> None:
    cfg = pipeline_config(data_root=str(tmp_path / "data"), output_root=str(tmp_path / "out"))
    manifest = tmp_path / "manifest.parquet"
    manifest.write_bytes(b"not read as parquet: only fingerprinted")
    prepare = prepare_config(cfg)
    evaluate = evaluate_config(cfg, train_config(cfg, str(manifest)))
    run_dir = tmp_path / "out" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    link_outputs(run_dir, cfg, evaluate)
    link_outputs(run_dir, cfg, evaluate)  # again: the links are replaced, not doubled
    links = {p.name: p for p in run_dir.iterdir()}
    assert sorted(links) == ["evaluation", "model", "prepared"]
    assert all(p.is_symlink() and not os.path.isabs(os.readlink(p)) for p in links.values())
    assert (run_dir / "prepared").resolve() == Path(prepare.data.output_dir).resolve()
    assert (run_dir / "model").resolve() == Path(evaluate.run_dir).resolve()
