"""What the outputs server serves: the sweep's page inside a sweep folder only."""

from __future__ import annotations

from pathlib import Path

from tasks.infra.outputs_server import servable


def test_sweep_page_is_served_only_inside_a_sweep_folder(tmp_path: Path) -> None:
    for rel in ("out/sweep/index.html", "out/other/index.html", "out/prepared/sweep/index.html"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("<html></html>")
    assert servable(tmp_path, "/out/sweep/index.html") == (tmp_path / "out/sweep/index.html").resolve()
    assert servable(tmp_path, "/out/other/index.html") is None  # an index.html elsewhere is not the sweep's page
    assert servable(tmp_path, "/out/prepared/sweep/index.html") is None  # never under prepared/
