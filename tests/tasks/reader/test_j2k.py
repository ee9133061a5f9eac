"""Reduced-resolution JPEG 2000 decoding (tasks/reader/j2k.py) and the reader's reduced path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.pixels import iter_pixels
from pydicom.uid import JPEG2000TransferSyntaxes

from tasks.reader import j2k
from tasks.reader.decode import MAX_DECODE_LEVEL, decode_level
from tasks.reader.geometry import letterbox
from tasks.reader.frames import read_frames

pytestmark = pytest.mark.skipif(not j2k.available()[0], reason="libopenjp2 not reachable through ctypes")


def _pydicom_j2k_files() -> list[Path]:
    """The monochrome JPEG 2000 files of pydicom's test files and of pydicom-data."""
    from pydicom.data import get_testdata_file

    names = ["693_J2KR.dcm", "693_J2KI.dcm", "MR2_J2KR.dcm", "MR2_J2KI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm",
             "RG3_J2KR.dcm", "RG3_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "MR_small_jp2klossless.dcm",
             "JPEG2000.dcm", "emri_small_jpeg_2k_lossless.dcm"]
    found = []
    for name in names:
        try:
            path = get_testdata_file(name, download=False)
        except TypeError:  # older pydicom without the download argument
            path = get_testdata_file(name)
        if path:
            found.append(Path(path))
    return found


PYDICOM_J2K = _pydicom_j2k_files()


def _codestreams(path: Path) -> tuple[object, list[bytes]]:
    ds = dcmread(path)
    n = int(ds.get("NumberOfFrames", 1))
    return ds, [bytes(f) for f in generate_frames(ds.PixelData, number_of_frames=n)]


def test_pydicom_data_has_the_files_the_tests_need():
    # pydicom-data is a dependency of the test environment; without it the equality
    # and quality tests below would run on nothing.
    names = {p.name for p in PYDICOM_J2K}
    assert {"RG1_J2KR.dcm", "MR2_J2KR.dcm", "J2K_pixelrep_mismatch.dcm"} <= names


@pytest.mark.parametrize("path", PYDICOM_J2K, ids=lambda p: p.name)
def test_full_resolution_equals_pydicoms_own_decode(path):
    """Level 0 through ctypes + to_stored is exactly what pydicom returns (dtype, sign, values)."""
    ds, streams = _codestreams(path)
    assert ds.file_meta.TransferSyntaxUID in JPEG2000TransferSyntaxes
    for index, reference in enumerate(iter_pixels(path, indices=[0, len(streams) - 1])):
        stream = streams[0 if index == 0 else -1]
        values, precision, signed = j2k.decode(stream)
        ours = j2k.to_stored(values, precision, signed, int(ds.PixelRepresentation))
        assert ours.dtype == reference.dtype
        assert np.array_equal(ours, reference)


def test_pixel_representation_mismatch_is_sign_corrected_like_pydicom():
    path = next(p for p in PYDICOM_J2K if p.name == "J2K_pixelrep_mismatch.dcm")
    ds, streams = _codestreams(path)
    info = j2k.codestream_info(streams[0])
    assert ds.PixelRepresentation == 1 and info["signed"] == 0  # the mismatch this file carries
    values, precision, signed = j2k.decode(streams[0])
    stored = j2k.to_stored(values, precision, signed, 1)
    assert values.min() >= 0 and stored.min() < 0  # negative values recovered


@pytest.mark.parametrize("path", PYDICOM_J2K[:6], ids=lambda p: p.name)
def test_each_level_has_the_size_the_standard_gives(path):
    _, streams = _codestreams(path)
    info = j2k.codestream_info(streams[0])
    assert info["levels"] >= 1
    for level in range(1, info["levels"] + 1):
        values, _, _ = j2k.decode(streams[0], level=level)
        assert values.shape == j2k.reduced_shape(info["rows"], info["columns"], level)
    with pytest.raises(j2k.J2KError, match="resolutions"):
        j2k.decode(streams[0], level=info["levels"] + 1)


def test_reduced_shape_rounds_up():
    assert j2k.reduced_shape(2457, 1890, 2) == (615, 473)
    assert j2k.reduced_shape(2457, 1890, 1) == (1229, 945)
    assert j2k.reduced_shape(2457, 1890, 3) == (308, 237)


def test_codestream_info_rejects_what_is_not_a_codestream():
    with pytest.raises(j2k.J2KError, match="SOC"):
        j2k.codestream_info(b"\x00" * 64)


def test_decode_area_gives_the_full_resolution_column(dbt_volume):
    path, stored = dbt_volume
    _, streams = _codestreams(path)
    rows, cols = stored.shape[1:]
    values, _, _ = j2k.decode(streams[0], area=(cols - 1, 0, cols, rows))
    assert np.array_equal(values[:, 0], stored[0][:, -1])


# ------------------------------------------------------------------------- level rule


def test_level_rule_takes_the_coarsest_level_that_covers_the_output():
    assert decode_level(2457, 1890, 5, 224) == 2  # 615 >= 224; 3 levels would be allowed by size alone
    assert decode_level(2457, 1890, 5, 500) == 2  # 615 >= 500
    assert decode_level(2457, 1890, 5, 700) == 1  # 615 < 700 <= 1229
    assert decode_level(2457, 1890, 5, 1500) == 0
    assert decode_level(2457, 1890, 1, 224) == 1  # never more than the codestream has
    assert decode_level(64, 48, 5, 32) == 1 and decode_level(64, 48, 5, 33) == 0
    assert MAX_DECODE_LEVEL == 2


# ------------------------------------------------------------------------- quality


def _breast_mask(reference: np.ndarray, margin: int = 2) -> np.ndarray:
    """Tissue inside the breast: neither background nor window-clipped, ``margin`` px from its edge."""
    mask = (reference > 8) & (reference < 247)
    for _ in range(margin):
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        mask = inner
    return mask


def _difference(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))[mask]
    return float(d.mean()), float(np.percentile(d, 99.9))


@pytest.fixture(scope="module")
def full_size_frame(tmp_path_factory) -> Path:
    """One full-size (2457 x 1890) synthetic DBT frame, as `tomoflow synth --full-size` writes."""
    from synth.generate import generate_dataset

    root = tmp_path_factory.mktemp("full-size")
    generate_dataset(root, patients=1, seed=5, full_size=True, frames=(1, 1), reports=False)
    return sorted(root.rglob("*.dcm"))[0]


@pytest.mark.parametrize("size", [224, 299, 500])
@pytest.mark.parametrize("view", ["rcc", "lcc"])  # one of them rotates the frame
def test_reduced_decode_quality_on_a_full_size_frame(full_size_frame, size, view):
    (reduced,) = read_frames(full_size_frame, [0], view=view, image_size=size)
    (full,) = read_frames(full_size_frame, [0], view=view, image_size=size, full_resolution=True)
    assert reduced.decode_level == 2 and full.decode_level == 0 and reduced.decode_note is None
    # Window, orientation and geometry are those of the full decode, exactly.
    for field in ("window_center", "window_width", "window_source", "rotated", "scale", "pad_x", "pad_y"):
        assert getattr(reduced, field) == getattr(full, field), field
    mask = _breast_mask(full.image)
    assert mask.mean() > 0.15
    mean, p999 = _difference(reduced.image, full.image, mask)
    assert mean <= 1.0 and p999 <= 4.0, (size, view, mean, p999)


def test_one_level_coarser_breaks_the_bound_at_224(full_size_frame):
    """Why MAX_DECODE_LEVEL is 2: 3 levels (308 x 237, still >= 224) exceed the bound."""
    from pydicom.encaps import get_frame

    from tasks.reader.header import read_header
    from tasks.reader.render import render

    header = read_header(full_size_frame)
    info = header.info
    with open(full_size_frame, "rb") as fh:
        fh.seek(header.pixels_at)
        stream = get_frame(fh, 0, number_of_frames=info.n_frames)
    (full,) = read_frames(full_size_frame, [0], image_size=224, full_resolution=True)
    raw = j2k.to_stored(*j2k.decode(stream, level=3), info.pixel_representation)
    image = render(raw, header.ds, 0, info)[0]
    out = letterbox(image, 224, native_shape=(info.rows, info.columns), level=3)[0]
    mean, p999 = _difference(out, full.image, _breast_mask(full.image))
    assert mean > 1.0 or p999 > 4.0


@pytest.mark.parametrize("path", [p for p in PYDICOM_J2K if p.name.startswith(("RG", "MR2", "693"))
                                  and p.name.endswith("R.dcm")], ids=lambda p: p.name)
def test_pydicom_data_images_are_decoded_in_full_and_say_why(path):
    """pydicom-data's JPEG 2000 images are no breast images (CR chest and leg, MR, CT).

    On them one discarded level already breaks the bound (sharp edges under narrow
    windows), so the reader keeps the reduced decode to MG and decodes these in full:
    the output is the full decode's, byte for byte, and the lineage says why.
    """
    (native,) = read_frames(path, [0])
    for size in (224, 299, 500):
        (auto,) = read_frames(path, [0], image_size=size)
        assert auto.decode_level == 0 and "MG" in (auto.decode_note or "")
        assert np.array_equal(auto.image, letterbox(native.image, size)[0])


def test_reduced_path_on_a_pydicom_image_marked_mg_keeps_geometry(tmp_path):
    """The reduced path on a real (non-synthetic) codestream: letterbox geometry stays the full one's."""
    path = next(p for p in PYDICOM_J2K if p.name == "RG1_J2KR.dcm")
    ds = dcmread(path)
    ds.Modality = "MG"
    marked = tmp_path / "rg1-mg.dcm"
    ds.save_as(marked)
    (reduced,) = read_frames(marked, [0], image_size=224)
    (full,) = read_frames(marked, [0], image_size=224, full_resolution=True)
    assert reduced.decode_level == 2
    assert (reduced.scale, reduced.pad_x, reduced.pad_y) == (full.scale, full.pad_x, full.pad_y)
    assert (reduced.window_center, reduced.window_width) == (full.window_center, full.window_width)
    mean, _ = _difference(reduced.image, full.image, _breast_mask(full.image))
    assert mean <= 1.0


# ------------------------------------------------------------------------- fallbacks


def test_without_libopenjp2_the_reader_decodes_in_full_and_says_so(dbt_volume, monkeypatch):
    path, _ = dbt_volume
    (expected,) = read_frames(path, [0], image_size=32, full_resolution=True)
    monkeypatch.setattr(j2k, "_library", lambda: (None, "pylibjpeg-openjpeg is not installed"))
    (frame,) = read_frames(path, [0], image_size=32)
    assert frame.decode_level == 0
    assert "unavailable" in frame.decode_note and "pylibjpeg-openjpeg" in frame.decode_note
    assert np.array_equal(frame.image, expected.image)


def test_frame_range_window_needs_the_full_frame(make_dbt):
    path, _ = make_dbt("nowindow.dcm", window_location="none")
    (frame,) = read_frames(path, [0], image_size=32)
    assert frame.decode_level == 0 and "window" in frame.decode_note


def test_other_transfer_syntaxes_decode_in_full_without_a_note(make_dbt):
    from pydicom.uid import ExplicitVRLittleEndian

    path, _ = make_dbt("native.dcm", transfer_syntax=ExplicitVRLittleEndian)
    (frame,) = read_frames(path, [0], image_size=32)
    assert frame.decode_level == 0 and frame.decode_note is None


def test_small_volume_uses_level_one_and_matches_geometry(dbt_volume):
    path, _ = dbt_volume  # 64 x 48: 32 px output allows one level (32 x 24)
    frames = list(read_frames(path, [0, 3], view="lcc", image_size=32))  # lcc: rotated
    full = list(read_frames(path, [0, 3], view="lcc", image_size=32, full_resolution=True))
    for a, b in zip(frames, full):
        assert a.decode_level == 1 and a.rotated and b.rotated
        assert (a.scale, a.pad_x, a.pad_y) == (b.scale, b.pad_x, b.pad_y)
        assert a.image.shape == b.image.shape == (32, 32)
        # letterbox padding is where the full path has it
        assert not a.image[:, : a.pad_x].any() and not a.image[:, 32 - a.pad_x:].any()
