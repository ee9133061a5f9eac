"""Tests for the DICOM reader on bad input and on real files from pydicom-data."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from tasks.reader.header import DicomReadError, read_info
from tasks.reader.frames import read_frames
from tests.tasks.reader.test_frames import assert_close, images, real


# --------------------------------------------------------------------------- bad input


def test_not_a_dicom_file(tmp_path):
    bogus = tmp_path / "notes.dcm"
    bogus.write_text("this is not DICOM\n" * 20)
    with pytest.raises(DicomReadError, match="not a DICOM file") as err:
        read_info(bogus)
    assert str(bogus) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(DicomReadError, match="not found") as err:
        read_frames(tmp_path / "absent.dcm")
    assert "absent.dcm" in str(err.value)


def test_truncated_dbt_file(dbt_volume, tmp_path):
    path, _ = dbt_volume
    data = path.read_bytes()
    half = tmp_path / "half.dcm"
    half.write_bytes(data[: len(data) // 2])
    for call in (lambda: read_info(half), lambda: list(read_frames(half)),
                 lambda: list(read_frames(half, [0]))):
        with pytest.raises(DicomReadError, match="truncated") as err:
            call()
        assert str(half) in str(err.value)
    header_only = tmp_path / "cut.dcm"
    header_only.write_bytes(data[:400])
    with pytest.raises(DicomReadError) as err:
        read_info(header_only)
    assert str(header_only) in str(err.value)


def test_file_without_pixel_data(dbt_volume, tmp_path):
    path, _ = dbt_volume
    empty = tmp_path / "nopixels.dcm"
    dcmread(path, stop_before_pixels=True).save_as(empty, enforce_file_format=True)
    with pytest.raises(DicomReadError, match=r"no \(7FE0,0010\) Pixel Data") as err:
        read_frames(empty, [0])
    assert str(empty) in str(err.value)


@pytest.mark.parametrize(
    "uid, package, fixture_file",
    [
        (JPEG2000Lossless, "pylibjpeg-openjpeg", None),
        (JPEGLSLossless, "pylibjpeg-libjpeg", "MR_small_jpeg_ls_lossless.dcm"),
        (RLELossless, "pylibjpeg-rle", "MR_small_RLE.dcm"),
    ],
)
def test_missing_decoder_plugin_says_what_to_install(
    monkeypatch, dbt_volume, uid, package, fixture_file
):
    path = dbt_volume[0] if fixture_file is None else real(fixture_file)
    decoder = get_decoder(uid)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", package)})
    with pytest.raises(NotImplementedError) as err:
        read_frames(path, [0])
    message = str(err.value)
    assert str(path) in message and f"pip install pylibjpeg {package}" in message
    assert read_info(path).n_frames >= 1  # the header alone still reads


# --------------------------------------------------------------------------- real files


# name, (rows, columns), frames. Covers: CT/MR single frame, signed pixels, implicit and
# big endian, deflated, RLE, JPEG 2000 (lossless and lossy), JPEG-LS (lossless and near),
# JPEG lossless (process 14 and SV1) and extended, multi-frame MR in five encodings,
# CR MONOCHROME1 (no MG/DX file ships), enhanced CT (window and rescale in functional
# groups), Modality and VOI LUT Sequences, 32-bit RT dose, 1-bit segmentation.
REAL_FILES = [
    ("CT_small.dcm", (128, 128), 1),
    ("MR_small.dcm", (64, 64), 1),
    ("MR_small_implicit.dcm", (64, 64), 1),
    ("MR_small_bigendian.dcm", (64, 64), 1),
    ("image_dfl.dcm", (512, 512), 1),
    ("MR_small_RLE.dcm", (64, 64), 1),
    ("MR_small_jp2klossless.dcm", (64, 64), 1),
    ("MR_small_jpeg_ls_lossless.dcm", (64, 64), 1),
    ("693_J2KR.dcm", (512, 512), 1),
    ("693_J2KI.dcm", (512, 512), 1),
    ("MR2_J2KR.dcm", (1024, 1024), 1),
    ("J2K_pixelrep_mismatch.dcm", (512, 512), 1),
    ("JPEGLSNearLossless_16.dcm", (50, 10), 1),
    ("JPEG-LL.dcm", (1024, 256), 1),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", (768, 1024), 1),
    ("JPGExtended.dcm", (1024, 256), 1),
    ("emri_small.dcm", (64, 64), 10),
    ("emri_small_RLE.dcm", (64, 64), 10),
    ("emri_small_big_endian.dcm", (64, 64), 10),
    ("emri_small_jpeg_2k_lossless.dcm", (64, 64), 10),
    ("emri_small_jpeg_ls_lossless.dcm", (64, 64), 10),
    ("RG3_J2KR.dcm", (1760, 1760), 1),
    ("RG1_UNCR.dcm", (1955, 1841), 1),
    ("eCT_Supplemental.dcm", (512, 512), 2),
    ("mlut_18.dcm", (512, 512), 1),
    ("vlut_04.dcm", (512, 512), 1),
    ("rtdose.dcm", (10, 10), 15),
    ("liver.dcm", (512, 512), 3),
]


@pytest.mark.parametrize("name, shape, n_frames", REAL_FILES)
def test_real_files_decode(name, shape, n_frames):
    path = real(name)
    info = read_info(path)
    assert (info.n_frames, (info.rows, info.columns)) == (n_frames, shape)
    frames = list(read_frames(path))
    assert [f.index for f in frames] == list(range(n_frames))
    volume = np.stack([f.image for f in frames])
    assert volume.dtype == np.uint8 and volume.shape == (n_frames, *shape)
    assert volume.max() > volume.min()
    # one frame alone equals the same frame of the whole volume
    (last,) = read_frames(path, [n_frames - 1])
    assert np.array_equal(last.image, volume[-1])


TWINS = [
    ("MR_small.dcm", "MR_small_RLE.dcm"),
    ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
    ("MR_small.dcm", "MR_small_bigendian.dcm"),
    ("MR_small.dcm", "MR_small_implicit.dcm"),
    ("emri_small.dcm", "emri_small_RLE.dcm"),
    ("emri_small.dcm", "emri_small_big_endian.dcm"),
    ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"),
    ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm"),
    ("693_UNCR.dcm", "693_J2KR.dcm"),  # Bits Stored 14 vs 16: same picture regardless
    ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),
    ("RG3_UNCR.dcm", "RG3_J2KR.dcm"),
    ("JPEG2000_UNC.dcm", "JPEG2000.dcm"),
    ("rtdose.dcm", "rtdose_rle.dcm"),
]


@pytest.mark.parametrize("plain, encoded", TWINS)
def test_lossless_twins_give_identical_output(plain, encoded):
    assert np.array_equal(images(real(plain)), images(real(encoded)))


def test_real_monochrome1_cr_is_inverted_pydicom_window():
    path = real("RG3_UNCR.dcm")
    ds = dcmread(path)
    windowed = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    stretched = np.rint(windowed / (2**ds.BitsStored - 1) * 255).astype(np.uint8)
    (frame,) = read_frames(path)
    assert frame.window_source == "top-level" and frame.window_center == float(ds.WindowCenter)
    assert_close(frame.image, 255 - stretched)


def test_real_enhanced_ct_window_and_rescale_from_functional_groups():
    path = real("eCT_Supplemental.dcm")
    ds = dcmread(path)
    hu = ds.pixel_array[1].astype(np.float64) - 1024  # shared Pixel Value Transformation
    (frame,) = read_frames(path, [1])
    assert (frame.window_source, frame.window_center, frame.window_width) == ("shared", 49.0, 102.0)
    # pydicom's LINEAR window: (x - (c - 0.5)) / (w - 1) + 0.5
    expected = np.rint(np.clip(((hu - 48.5) / 101 + 0.5) * 255, 0, 255)).astype(np.uint8)
    assert_close(frame.image, expected)


@pytest.mark.parametrize("name", ["MR-SIEMENS-DICOM-WithOverlays.dcm", "J2K_pixelrep_mismatch.dcm"])
def test_real_multi_valued_window_uses_the_first(name):
    path = real(name)
    ds = dcmread(path, stop_before_pixels=True)
    assert ds["WindowCenter"].VM > 1
    (frame,) = read_frames(path)
    expected = (float(ds.WindowCenter[0]), float(ds.WindowWidth[0]))
    assert (frame.window_center, frame.window_width) == expected


def test_real_voi_lut_sequence():
    (frame,) = read_frames(real("vlut_04.dcm"))
    assert frame.window_source == "top-level" and frame.window_center is None


@pytest.mark.parametrize(
    "name, photometric",
    [("SC_rgb.dcm", "RGB"), ("US1_J2KR.dcm", "YBR_RCT"), ("SC_rgb_rle.dcm", "RGB"),
     ("examples_palette.dcm", "PALETTE COLOR")],
)
def test_real_colour_is_not_implemented(name, photometric):
    path = real(name)
    with pytest.raises(NotImplementedError) as err:
        read_frames(path)
    # The file and the tag are named; the header value itself never is.
    assert path in str(err.value) and "(0028,0004)" in str(err.value)
    assert repr(photometric) not in str(err.value)


@pytest.mark.parametrize(
    "name, fault",
    [
        ("MR_truncated.dcm", "truncated"),
        ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated"),
        ("JPEG-lossy.dcm", "frame 0 of 1 could not be decoded"),  # no installed plugin copes
        ("rtplan.dcm", "no image"),
        ("no_meta.dcm", "not a DICOM file"),
        ("meta_missing_tsyntax.dcm", "Transfer Syntax UID"),
    ],
)
def test_real_bad_files(name, fault):
    path = real(name)
    with pytest.raises(DicomReadError, match=fault) as err:
        list(read_frames(path))
    assert path in str(err.value)
