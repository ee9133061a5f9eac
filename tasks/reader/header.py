"""The header checks of the DICOM reader: is this a monochrome image file we can read?

:func:`read_info` reads the header (``stop_before_pixels``) and checks the file's
structure without decoding: transfer syntax, the Image Pixel module, and that the pixel
data is there and complete. The completeness check seeks over the pixel data element
(its declared length, or the encapsulated fragments via pydicom's ``parse_fragments``)
rather than decoding, because a header-only read must reject a truncated file before any
frame is decoded, and pydicom's decode errors only appear when a frame is decoded; its
messages name the file and say how much is missing. Every error names the file.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length, get_nr_frames
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

#: (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data.
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_PIXEL_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN")
_ITEM_TAG = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER_TAG = (0xFFFE, 0xE0DD)
_UNDEFINED_LENGTH = 0xFFFFFFFF


class DicomReadError(ValueError):
    """A file that cannot be read as a monochrome DICOM image; the message names the file."""


@dataclass(frozen=True)
class VolumeInfo:
    """Header facts about one DICOM image file (no pixel data decoded).

    Attributes:
        path: The file.
        n_frames: Number of frames (1 for a single-frame image).
        rows: Rows per frame as stored.
        columns: Columns per frame as stored.
        photometric: Photometric Interpretation (``MONOCHROME2`` in BCS-DBT).
        bits_stored: Bits Stored (10 in BCS-DBT).
        pixel_representation: 0 unsigned, 1 signed.
        transfer_syntax: Transfer Syntax UID.
        sop_class_uid: SOP Class UID (Breast Tomosynthesis Image Storage in BCS-DBT).
        modality: Modality (``MG`` in BCS-DBT); empty when absent.
    """

    path: str
    n_frames: int
    rows: int
    columns: int
    photometric: str
    bits_stored: int
    pixel_representation: int
    transfer_syntax: str
    sop_class_uid: str
    modality: str


@dataclass(frozen=True)
class DicomHeader:
    """The parsed header of one file, read once per call."""

    path: str
    ds: Dataset
    info: VolumeInfo
    #: File offset of the pixel data's value (its first item when encapsulated); None
    #: for deflated files, which are read through an inflated copy.
    pixels_at: int | None = None


def read_info(path: str | os.PathLike[str]) -> VolumeInfo:
    """Read the header of a DICOM image file; no pixel data is decoded.

    The file's structure is checked too (seeking over the pixel data, not reading it),
    so a truncated file or one without pixel data is rejected here already.

    Args:
        path: The DICOM file.

    Returns:
        The file's :class:`VolumeInfo`.

    Raises:
        DicomReadError: The file is missing, not DICOM, has no image or pixel data, or
            is truncated.
    """
    return read_header(path).info


def read_header(path: str | os.PathLike[str]) -> DicomHeader:
    """:func:`read_info` with the dataset and the pixel data's offset, for the decoders."""
    name = os.fspath(path)
    if not Path(name).is_file():
        raise DicomReadError(f"{name}: file not found (or not a regular file); check the path")
    try:
        with open(name, "rb") as fh:
            try:
                ds = dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError as exc:
                raise DicomReadError(
                    f"{name}: not a DICOM file (no 'DICM' marker after the 128-byte preamble): "
                    f"{exc}. Pass a DICOM Part 10 file; a raw dataset without File Meta can be "
                    "rewritten with pydicom (dcmread(path, force=True).save_as(out, "
                    "enforce_file_format=True))"
                ) from exc
            tsyntax = _transfer_syntax(ds, name)
            _check_image_module(ds, name)
            # dcmread leaves the file at the pixel data element it stopped before; a
            # deflated file is read through an inflated copy, so there the decoder checks.
            pixels_at = None
            if tsyntax != DeflatedExplicitVRLittleEndian:
                pixels_at = _check_pixel_data(fh, ds, tsyntax, name)
    except (DicomReadError, NotImplementedError, MemoryError):
        raise
    except Exception as exc:  # pydicom raises many types on corrupt headers
        raise DicomReadError(
            f"{name}: could not parse the DICOM header ({type(exc).__name__}: {exc}); "
            "the file is corrupt or truncated"
        ) from exc

    info = VolumeInfo(
        path=name,
        n_frames=get_nr_frames(ds, warn=False),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        photometric=str(ds.get("PhotometricInterpretation", "")).strip(),
        # Float Pixel Data has no Bits Stored; all allocated bits are then in use.
        bits_stored=int(ds.get("BitsStored", ds.BitsAllocated)),
        pixel_representation=int(ds.get("PixelRepresentation", 0)),
        transfer_syntax=str(tsyntax),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        modality=str(ds.get("Modality", "")),
    )
    return DicomHeader(path=name, ds=ds, info=info, pixels_at=pixels_at)


def _check_image_module(ds: Dataset, name: str) -> None:
    missing = [kw for kw in ("Rows", "Columns", "BitsAllocated") if kw not in ds]
    if missing:
        sop = ds.get("SOPClassUID", None)
        what = f"SOP class {sop.name!r}" if isinstance(sop, UID) else "no SOP class"
        raise DicomReadError(
            f"{name}: no image: the Image Pixel module's {', '.join(missing)} (0028,xxxx) "
            f"missing ({what}); the file holds no image or its header is truncated"
        )


def _transfer_syntax(ds: Dataset, name: str) -> UID:
    tsyntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", None)
    if not tsyntax:
        raise DicomReadError(
            f"{name}: the File Meta Information has no (0002,0010) Transfer Syntax UID, so the "
            "pixel data cannot be interpreted; rewrite the file with a transfer syntax"
        )
    return UID(tsyntax)


def _check_pixel_data(fh: Any, ds: Dataset, tsyntax: UID, name: str) -> int:
    """Check that pixel data follows the header and is complete, seeking rather than reading.

    Returns:
        The file offset of the pixel data element's value.
    """
    endian = "<" if tsyntax.is_little_endian else ">"
    head = fh.read(8)
    tag = struct.unpack(f"{endian}HH", head[:4]) if len(head) == 8 else None
    if tag not in _PIXEL_TAGS:
        raise DicomReadError(
            f"{name}: no (7FE0,0010) Pixel Data element: the file holds no image data "
            "(or is truncated before it)"
        )
    # Some writers store the pixel data element in implicit VR form inside an explicit VR
    # file (pydicom copes), so in explicit VR look for a VR rather than assume one.
    if not tsyntax.is_implicit_VR and head[4:6] in _PIXEL_VRS:
        length = struct.unpack(f"{endian}L", fh.read(4))[0]
    else:
        length = struct.unpack(f"{endian}L", head[4:8])[0]
    value_start = fh.tell()
    size = os.fstat(fh.fileno()).st_size
    n_frames = get_nr_frames(ds, warn=False)

    if length != _UNDEFINED_LENGTH:
        expected = None
        try:
            if tag == (0x7FE0, 0x0010):
                expected = get_expected_length(ds, "bytes")
        except (AttributeError, KeyError, TypeError, ValueError):
            expected = None  # the decoder will name what is missing
        if value_start + length > size:
            raise DicomReadError(
                f"{name}: truncated: the pixel data declares {length} bytes but the file ends "
                f"after {size - value_start}; re-download or re-copy the file"
            )
        if expected is not None and length < expected:
            raise DicomReadError(
                f"{name}: the pixel data holds {length} bytes but {n_frames} frame(s) of "
                f"{ds.Rows} x {ds.Columns} at {ds.BitsAllocated} bits need {expected}; "
                "the file is truncated or its header is wrong"
            )
        return value_start

    # Encapsulated: item (Basic Offset Table), then one item per fragment, then a
    # sequence delimiter. Encapsulation is always little endian.
    def truncated(detail: str) -> DicomReadError:
        return DicomReadError(
            f"{name}: truncated or corrupt encapsulated pixel data ({detail}; file size "
            f"{size} bytes); re-download or re-copy the file"
        )

    bot = fh.read(8)
    if len(bot) != 8 or struct.unpack("<HH", bot[:4]) != _ITEM_TAG:
        raise truncated("no Basic Offset Table item")
    fh.seek(struct.unpack("<L", bot[4:])[0], os.SEEK_CUR)
    try:
        nr_fragments, offsets = parse_fragments(fh)
    except ValueError as exc:
        raise truncated(str(exc)) from exc
    if nr_fragments < n_frames:
        raise truncated(f"{nr_fragments} fragment(s) for {n_frames} frame(s)")
    fh.seek(offsets[-1] + 4)
    end = offsets[-1] + 8 + struct.unpack("<L", fh.read(4))[0]
    if end > size:
        raise truncated(f"the last fragment needs {end} bytes")
    fh.seek(end)
    tail = fh.read(4)
    if len(tail) != 4 or struct.unpack("<HH", tail) != _SEQUENCE_DELIMITER_TAG:
        raise truncated("no sequence delimiter after the last fragment")
    return value_start
