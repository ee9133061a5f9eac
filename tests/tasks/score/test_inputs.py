"""What score lists: file-paths CSVs when present, else every DICOM identified from its header."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from tasks.score.inputs import check_inputs, header_row, list_volumes


def _edit(path: Path, out: Path, change) -> Path:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_plain_folder_is_identified_from_the_header(make_dbt, tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    path, _ = make_dbt("a.dcm", view="lmlo", patient_id="P-1", study_uid="S-1")
    (folder / "a.dcm").write_bytes(path.read_bytes())

    def view_code(ds: Dataset) -> None:  # ViewCodeSequence wins over ViewPosition; no .dcm suffix
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "399162004", "SCT", "cranio-caudal"
        ds.ViewCodeSequence = DicomSequence([item])
        ds.ViewPosition = "MLO"
        ds.ImageLaterality = "R"

    _edit(path, folder / "no-suffix", view_code)
    (folder / "notes.txt").write_text("not a DICOM")
    table, source = list_volumes(folder)
    assert source == "header"
    by_file = {Path(p).name: r for p, r in zip(table["path"], table.to_dict("records"))}
    assert set(by_file) == {"a.dcm", "no-suffix"}
    assert by_file["a.dcm"]["view"] == "lmlo" and by_file["a.dcm"]["patient_id"] == "P-1"
    assert by_file["no-suffix"]["view"] == "rcc"
    assert by_file["a.dcm"]["study_uid"] == str(pydicom.dcmread(path).StudyInstanceUID)
    assert table["status"].isna().all()


def test_not_a_breast_image_and_unknown_view_get_status_rows(make_dbt, tmp_path: Path) -> None:
    path, _ = make_dbt("a.dcm")

    def ct(ds: Dataset) -> None:
        ds.Modality = "CT"

    def no_view(ds: Dataset) -> None:
        del ds.ViewPosition

    assert header_row(_edit(path, tmp_path / "ct.dcm", ct))["status"].startswith("not a breast image: Modality CT")
    assert header_row(_edit(path, tmp_path / "nov.dcm", no_view))["status"].startswith("unknown view")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 20)
    assert header_row(broken)["status"].split(":")[0] in ("unreadable", "not a breast image")


def test_a_folder_without_dicom_or_csv_stops_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(ValueError, match="no DICOM file found"):
        check_inputs(tmp_path)
    with pytest.raises(ValueError, match="no DICOM file found"):
        list_volumes(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        check_inputs(tmp_path / "missing")


def test_file_paths_csv_lists_volumes_without_labels(small_collection: Path) -> None:
    table, source = list_volumes(small_collection)
    assert source == "file-paths CSV"
    assert table["status"].isna().all() and table["path"].map(lambda p: Path(p).is_file()).all()
    assert set(table["view"]) <= {"lcc", "lmlo", "rcc", "rmlo"} and table["patient_id"].str.startswith("DBT-P").all()


@pytest.fixture
def small_collection(tmp_path: Path) -> Path:
    from synth.generate import generate_dataset

    root = tmp_path / "data"
    generate_dataset(root, patients=3, seed=5, rows=40, columns=32, frames=(3, 4), reports=False)
    for csv in root.glob("*.csv"):
        if "file-paths" not in csv.name:
            csv.unlink()
    return root
