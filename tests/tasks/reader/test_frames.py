"""Tests for the DICOM reader (tasks.reader.frames and its modules) on synthetic BCS-DBT volumes.

Bad input and real files from pydicom-data are in test_dicom_files.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import JPEG2000Lossless

from synth.layout import BREAST_TOMOSYNTHESIS_STORAGE
from tasks.reader.header import DicomReadError, read_info
from tasks.reader.decode import Frame
from tasks.reader.geometry import box_to_image, image_side, letterbox
from tasks.reader.frames import export_slices, read_frames


def reference_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Duke's window [c - w/2, c + w/2] stretched to 0..255, on a whole volume in numpy."""
    out = (values.astype(np.float64) - (center - width / 2)) / width * 255
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


def assert_close(actual: np.ndarray, expected: np.ndarray, tol: int = 1) -> None:
    assert actual.dtype == np.uint8 and actual.shape == expected.shape
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= tol, f"max difference {diff.max()}"


def images(path, frames=None, **kwargs) -> np.ndarray:
    return np.stack([f.image for f in read_frames(path, frames, **kwargs)])


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts JPEG 2000 codestreams handed to pydicom's decoding plugins."""
    calls: list[int] = []
    decoder = get_decoder(JPEG2000Lossless)
    for label, func in list(decoder._available.items()):

        def counted(src, runner, _func=func):
            calls.append(len(src))
            return _func(src, runner)

        monkeypatch.setitem(decoder._available, label, counted)
    return calls


def real(name: str) -> str:
    """A file of pydicom-data (skips the test when the package is not installed)."""
    path = get_testdata_file(name, download=False)  # never the network
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return str(path)


def edited(path: Path, out: Path, edit) -> Path:
    """A copy of a DICOM file with ``edit(dataset)`` applied."""
    ds = dcmread(path)
    edit(ds)
    ds.save_as(out, enforce_file_format=True)
    return out


# --------------------------------------------------------------------------- header


def test_read_info_reads_the_header_without_decoding(dbt_volume, decode_calls):
    path, frames = dbt_volume
    info = read_info(path)
    assert (info.n_frames, info.rows, info.columns) == frames.shape
    assert info.path == str(path)
    assert info.photometric == "MONOCHROME2"
    assert (info.bits_stored, info.pixel_representation) == (10, 0)
    assert info.transfer_syntax == JPEG2000Lossless
    assert info.sop_class_uid == BREAST_TOMOSYNTHESIS_STORAGE
    assert info.modality == "MG"
    assert decode_calls == []


# --------------------------------------------------------------------------- windowing


def test_one_frame_matches_the_whole_volume_reference(dbt_volume):
    path, frames = dbt_volume
    reference = reference_window(frames, 512.0, 600.0)  # whole volume, as Duke's reader
    (frame,) = read_frames(path, [2])
    assert frame.index == 2
    assert (frame.window_center, frame.window_width) == (512.0, 600.0)
    assert frame.window_source == "shared"
    assert_close(frame.image, reference[2])
    # The one-frame path and the whole-volume path give the same bytes.
    assert np.array_equal(images(path)[2], frame.image)


def test_top_level_window(make_dbt):
    path, frames = make_dbt(
        "top.dcm", window_center=400.0, window_width=500.0, window_location="top"
    )
    (frame,) = read_frames(path, [1])
    assert (frame.window_center, frame.window_width) == (400.0, 500.0)
    assert frame.window_source == "top-level"
    assert_close(frame.image, reference_window(frames[1], 400.0, 500.0))


def test_no_window_stretches_the_frame_range(make_dbt):
    path, frames = make_dbt("none.dcm", window_location="none")
    (frame,) = read_frames(path, [3])
    lo, hi = float(frames[3].min()), float(frames[3].max())
    assert frame.window_source == "frame-range"
    assert (frame.window_center, frame.window_width) == ((lo + hi) / 2, hi - lo)
    assert (frame.image.min(), frame.image.max()) == (0, 255)
    assert_close(frame.image, reference_window(frames[3], (lo + hi) / 2, hi - lo))


def test_per_frame_window_wins_over_shared(dbt_volume, tmp_path):
    path, frames = dbt_volume

    def add_frame_window(ds: Dataset) -> None:
        voi = Dataset()
        voi.WindowCenter = "300"
        voi.WindowWidth = "400"
        ds.PerFrameFunctionalGroupsSequence[1].FrameVOILUTSequence = DicomSequence([voi])

    out = edited(path, tmp_path / "perframe.dcm", add_frame_window)
    first, second = read_frames(out, [0, 1])
    assert (first.window_source, first.window_center) == ("shared", 512.0)
    assert second.window_source == "per-frame"
    assert (second.window_center, second.window_width) == (300.0, 400.0)
    assert_close(second.image, reference_window(frames[1], 300.0, 400.0))


def test_rescale_in_the_functional_groups_is_applied_before_the_window(dbt_volume, tmp_path):
    path, frames = dbt_volume

    def add_rescale(ds: Dataset) -> None:
        shared = ds.SharedFunctionalGroupsSequence[0]
        pvt = Dataset()
        pvt.RescaleSlope = "2"
        pvt.RescaleIntercept = "-100"
        pvt.RescaleType = "US"
        shared.PixelValueTransformationSequence = DicomSequence([pvt])
        shared.FrameVOILUTSequence[0].WindowCenter = "924"  # 512 in rescaled units
        shared.FrameVOILUTSequence[0].WindowWidth = "1200"

    out = edited(path, tmp_path / "rescaled.dcm", add_rescale)
    (frame,) = read_frames(out, [4])
    assert_close(frame.image, reference_window(frames[4] * 2.0 - 100, 924.0, 1200.0))
    # and therefore equal to the plain file's frame windowed at 512/600
    assert_close(frame.image, next(iter(read_frames(path, [4]))).image)


def test_monochrome1_is_inverted(dbt_volume, make_dbt):
    path, frames = dbt_volume
    inverted, _ = make_dbt("mono1.dcm", frames, photometric="MONOCHROME1")
    assert read_info(inverted).photometric == "MONOCHROME1"
    assert np.array_equal(images(inverted), 255 - images(path))


# --------------------------------------------------------------------------- orientation


def test_image_side_is_the_edge_sum_rule():
    frame = np.zeros((4, 3), dtype=np.uint16)
    frame[:, -1] = 5
    assert image_side(frame) == "R"
    assert image_side(frame[:, ::-1]) == "L"
    assert image_side(np.zeros((4, 3))) == "L"  # ties go to L, as in the reference


def test_orientation_rotates_a_volume_stored_the_other_way(dbt_volume, make_dbt):
    path, frames = dbt_volume
    flipped, _ = make_dbt("flipped.dcm", np.flip(frames, (1, 2)))
    native = list(read_frames(path, view="rcc"))
    assert not any(f.rotated for f in native)
    assert np.array_equal(np.stack([f.image for f in native]), images(path))

    turned = list(read_frames(flipped, view="RCC"))  # upper case accepted
    assert all(f.rotated for f in turned)
    assert np.array_equal(np.stack([f.image for f in turned]), images(path))

    as_stored = list(read_frames(flipped))  # no view: as stored, never rotated
    assert not any(f.rotated for f in as_stored)
    assert np.array_equal(np.stack([f.image for f in as_stored]), np.flip(images(path), (1, 2)))
    # The other side's view turns the correct volume round.
    assert all(f.rotated for f in read_frames(path, [0], view="lmlo"))


def test_orientation_is_decided_once_per_volume_on_its_central_frame(phantom, make_dbt):
    """Whatever frames are asked for, one rotation per volume (the central frame's)."""
    from tasks.reader.decode import reference_frame

    frames = phantom(side="R")
    n = len(frames)
    odd = 0 if reference_frame(n) != 0 else n - 1
    frames[odd] = np.flip(frames[odd], (0, 1))  # this frame alone looks like a left breast
    path, _ = make_dbt("mixed.dcm", frames)
    whole = list(read_frames(path, view="rcc"))
    assert [f.rotated for f in whole] == [False] * n  # decided on the central frame, a right breast
    (alone,) = read_frames(path, [odd], view="rcc")  # prepare's single slice: the same decision
    assert not alone.rotated
    assert np.array_equal(alone.image, whole[odd].image)
    chunks = [f for part in ([odd], list(range(1, n))) for f in read_frames(path, part, view="rcc")]
    assert {f.index: f.image.tobytes() for f in chunks} == {f.index: f.image.tobytes() for f in whole}
    # The central frame itself turned round turns the whole volume round.
    frames[reference_frame(n)] = np.flip(frames[reference_frame(n)], (0, 1))
    turned, _ = make_dbt("turned.dcm", frames)
    assert all(f.rotated for f in read_frames(turned, view="rcc"))
    assert read_frames(turned, [odd], view="rcc").__next__().rotated


@pytest.mark.parametrize("view", ["cc", "rxcc", "", "mlo", 3])
def test_invalid_view_names_the_allowed_views(dbt_volume, view):
    path, _ = dbt_volume
    with pytest.raises(DicomReadError) as err:
        read_frames(path, [0], view=view)
    message = str(err.value)
    assert str(path) in message and repr(view) in message
    assert all(v in message for v in ("lcc", "lmlo", "rcc", "rmlo"))


# --------------------------------------------------------------------------- indices, decoding


@pytest.mark.parametrize("bad", [5, -1, 99])
def test_out_of_range_index_names_file_index_and_count(dbt_volume, bad):
    path, _ = dbt_volume
    with pytest.raises(DicomReadError) as err:
        read_frames(path, [0, bad])
    message = str(err.value)
    assert str(path) in message and str(bad) in message and "5 frame" in message


def test_only_the_requested_frames_are_decoded(dbt_volume, decode_calls):
    path, _ = dbt_volume
    (frame,) = read_frames(path, [3])
    assert len(decode_calls) == 1
    decode_calls.clear()
    assert [f.index for f in read_frames(path, [4, 1, 4])] == [1, 4]
    assert len(decode_calls) == 2
    decode_calls.clear()
    assert len(list(read_frames(path))) == 5
    assert len(decode_calls) == 5
    decode_calls.clear()
    assert list(read_frames(path, [])) == []
    assert decode_calls == []


def test_frame_is_frozen(dbt_volume):
    (frame,) = read_frames(dbt_volume[0], [0])
    assert isinstance(frame, Frame)
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.index = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- letterbox


def test_letterbox_a_non_square_frame(dbt_volume):
    path, _ = dbt_volume  # 64 rows x 48 columns
    (native,) = read_frames(path, [0])
    (boxed,) = read_frames(path, [0], image_size=32, full_resolution=True)
    assert boxed.image.shape == (32, 32) and boxed.image.dtype == np.uint8
    assert (boxed.scale, boxed.pad_x, boxed.pad_y) == (0.5, 4, 0)
    assert (native.scale, native.pad_x, native.pad_y) == (1.0, 0, 0)
    assert not boxed.image[:, :4].any() and not boxed.image[:, 28:].any()
    assert np.array_equal(boxed.image, letterbox(native.image, 32)[0])


def test_letterbox_pads_top_and_bottom_of_a_wide_image():
    out, scale, pad_x, pad_y = letterbox(np.full((30, 100), 200, dtype=np.uint8), 50)
    assert out.shape == (50, 50) and (scale, pad_x, pad_y) == (0.5, 0, 17)
    assert not out[:17].any() and not out[32:].any() and (out[17:32] == 200).all()


def test_box_to_image_follows_the_pixels():
    native = np.zeros((200, 120), dtype=np.uint8)
    x, y, w, h = 40, 60, 30, 20
    native[y : y + h, x : x + w] = 255
    out, scale, pad_x, pad_y = letterbox(native, 100)
    assert (scale, pad_x, pad_y) == (0.5, 20, 0)
    mapped = box_to_image(x, y, w, h, scale=scale, pad_x=pad_x, pad_y=pad_y)
    assert mapped == (40.0, 30.0, 15.0, 10.0)
    rows, cols = np.nonzero(out > 127)
    found = (cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min())
    assert np.allclose(found, mapped, atol=1)


@pytest.mark.parametrize("size", [0, -3, 2.5])
def test_bad_image_size(dbt_volume, size):
    with pytest.raises(DicomReadError, match="image_size"):
        read_frames(dbt_volume[0], [0], image_size=size)


# --------------------------------------------------------------------------- export


def test_export_slices_writes_pngs_and_records(make_dbt, phantom, tmp_path):
    stored_rotated = np.ascontiguousarray(np.flip(phantom(side="R"), (1, 2)))
    path, _ = make_dbt("export.dcm", stored_rotated)
    records = export_slices(path, tmp_path / "out", frames=[3, 0], view="rcc", image_size=40)
    assert [r["frame"] for r in records] == [0, 3]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0000.png", "0003.png"]
    expected = {f.index: f.image for f in read_frames(path, [0, 3], view="rcc", image_size=40)}
    for record in records:
        assert {"frame", "path", "window_center", "window_width", "window_source", "rotated",
                "scale", "pad_x", "pad_y"} <= record.keys()
        assert record["rotated"] is True and record["window_source"] == "shared"
        assert record["scale"] == 40 / 64 and (record["pad_x"], record["pad_y"]) == (5, 0)
        json.dumps(record)  # plain JSON types
        with Image.open(record["path"]) as png:
            assert png.mode == "L" and png.size == (40, 40)
            assert np.array_equal(np.asarray(png), expected[record["frame"]])
    assert not list((tmp_path / "out").glob("*.tmp"))


# --------------------------------------------------------------------------- value tables


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_table_path_equals_per_pixel_path(signed: bool, photometric: str) -> None:
    """Large integer frames go through a value table; the output must not change by a bit."""
    from pydicom.dataset import Dataset

    from tasks.reader import header as dicom_header
    from tasks.reader import render as dicom_render

    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    ds.BitsStored = 12
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope = 1.5
    ds.RescaleIntercept = -100
    ds.WindowCenter = 300
    ds.WindowWidth = 900
    info = dicom_header.VolumeInfo(path="x.dcm", n_frames=1, rows=700, columns=500, photometric=photometric,
                            bits_stored=12, pixel_representation=int(signed), transfer_syntax="1.2.840.10008.1.2.1",
                            sop_class_uid="", modality="MG")
    rng = np.random.default_rng(1)
    low, high = (-2048, 2047) if signed else (0, 4095)
    raw = rng.integers(low, high + 1, (700, 500)).astype(np.int16 if signed else np.uint16)
    raw[0, :4] = [low, high, 0, 1]
    fast, center, width, source = dicom_render.render(raw, ds, 0, info)
    slow, *_ = dicom_render.render_pixels(raw, ds, 0, info)
    assert raw.size > 4 * 65536  # the table path was taken
    assert fast.dtype == np.uint8 and np.array_equal(fast, slow)
    assert (center, width, source) == (300.0, 900.0, "top-level")
