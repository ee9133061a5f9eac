"""Read monochrome DICOM images, BCS-DBT tomosynthesis volumes first, as 8-bit frames.

The reader decodes only the frames it is asked for (``pydicom.pixels.iter_pixels`` with
``indices``), so one slice of a 95-frame JPEG 2000 volume costs one codestream, not 95.
Pixel handling is pydicom's own (DESIGN.md, convention 5):

1. decode the stored values (``iter_pixels``);
2. the Modality LUT / rescale (``apply_modality_lut``), taken from the frame's functional
   groups (Pixel Value Transformation) when the file is an enhanced multi-frame one;
3. the VOI window (``apply_windowing``) or VOI LUT (``apply_voi``). pydicom only looks at
   the top level, but tomosynthesis keeps the window in the functional groups, so the
   window is looked up per frame, then shared, then top level, and handed to pydicom on a
   small dataset. Without any window the frame's own min..max is used;
4. the windowed output range is mapped to 0..255, MONOCHROME1 is inverted (bright = dense);
5. optionally the frames are oriented like Duke's reference reader (180-degree rotation
   when the breast is on the other side than the view says) and letterboxed.

Errors: bad input raises :class:`DicomReadError` (a ``ValueError``), valid but unsupported
input (colour, missing decoder plugin) raises ``NotImplementedError``; every message names
the file.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import index as as_index
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, iter_pixels
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import get_expected_length, get_nr_frames
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
)

__all__ = [
    "VIEWS",
    "DicomReadError",
    "Frame",
    "VolumeInfo",
    "MAX_DECODE_LEVEL",
    "box_to_image",
    "decode_level",
    "export_slices",
    "image_side",
    "letterbox",
    "read_frames",
    "read_info",
]

#: The views of the BCS-DBT file-path CSV; the first letter is the breast side.
VIEWS: tuple[str, ...] = ("lcc", "lmlo", "rcc", "rmlo")

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")

#: Most JPEG 2000 resolution levels the reader discards. Measured on the full-size
#: synthetic frame (tests/tasks/test_dicom.py, docs/scaling.md): discarding 2 levels keeps
#: the 8-bit output within 1 grey level on average and 4 at the 99.9th percentile of the
#: full decode + the same resize inside the breast at 224, 299 and 500 px; discarding 3
#: breaks it (mean 1.1, p99.9 5 at 224 px), so the rule stops at 2.
MAX_DECODE_LEVEL = 2

#: Modalities the reduced decode is validated on. Radiographs, MR and CT with sharp edges
#: and narrow windows (pydicom-data's RG3, MR2, 693) break the bound already at 1 level.
_REDUCED_MODALITIES = ("MG",)

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


# eq=False: the generated __eq__/__hash__ would compare/hash the ndarray and fail.
@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded, windowed, 8-bit frame.

    Attributes:
        index: 0-based frame index in the file.
        image: 2-D ``uint8`` image, bright = dense; oriented and letterboxed when asked.
        window_center: Centre of the VOI window applied (of the frame's range for
            ``frame-range``); ``None`` when a VOI LUT Sequence was applied instead.
        window_width: Width of that window; ``None`` with a VOI LUT Sequence.
        window_source: Where the window came from: ``per-frame`` / ``shared`` (functional
            groups), ``top-level`` (Window Center/Width or VOI LUT Sequence) or
            ``frame-range`` (no window in the file: the frame's own min..max).
        rotated: True when the frame was rotated by 180 degrees to match the view.
        scale: Letterbox scale (output pixels per native pixel); 1.0 without letterbox.
        pad_x: Left padding of the letterbox in output pixels.
        pad_y: Top padding of the letterbox in output pixels.
        decode_level: JPEG 2000 resolution levels discarded when decoding (0: the full
            frame was decoded; 2: a quarter of each side).
        decode_note: Why the frame was decoded in full although a reduced decode was
            allowed (``None`` when the level rule was followed or not asked for).
    """

    index: int
    image: np.ndarray
    window_center: float | None
    window_width: float | None
    window_source: str
    rotated: bool
    scale: float
    pad_x: int
    pad_y: int
    decode_level: int = 0
    decode_note: str | None = None


@dataclass(frozen=True)
class _Header:
    """The parsed header of one file, read once per call."""

    path: str
    ds: Dataset
    info: VolumeInfo
    #: File offset of the pixel data's value (its first item when encapsulated); None
    #: for deflated files, which are read through an inflated copy.
    pixels_at: int | None = None


# ---------------------------------------------------------------------------------------
# Header


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
    return _read_header(path).info


def _read_header(path: str | os.PathLike[str]) -> _Header:
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
    return _Header(path=name, ds=ds, info=info, pixels_at=pixels_at)


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


# ---------------------------------------------------------------------------------------
# Frames


def read_frames(
    path: str | os.PathLike[str],
    frames: Sequence[int] | None = None,
    *,
    view: str | None = None,
    image_size: int | None = None,
    full_resolution: bool = False,
) -> Iterator[Frame]:
    """Decode, window and (optionally) orient and letterbox the frames asked for.

    Only the frames in ``frames`` are decoded. The header is read and every argument is
    checked when this function is called; decoding happens while iterating.

    With ``image_size``, JPEG 2000 frames of breast images (Modality ``MG``) that carry a
    VOI window are decoded at a reduced resolution (:func:`decode_level`): the stored
    low-pass band of the wavelet pyramid, a quarter of each side or less, for a fraction of
    the cost. The window, the orientation (decided on the frame's full-resolution edge
    columns) and the letterbox geometry (``scale`` maps full-resolution pixels) stay those
    of the full decode; only the pixels are resampled from the coarser band.

    Args:
        path: The DICOM file.
        frames: 0-based frame indices; ``None`` for all frames. Duplicates are dropped
            and frames are yielded in ascending index order.
        view: ``lcc``, ``lmlo``, ``rcc`` or ``rmlo`` (any case), to orient the frames like
            Duke's reference reader: when :func:`image_side` of the lowest requested frame
            (as stored) differs from the view's side, every returned frame is rotated by
            180 degrees. ``None`` returns frames as stored.
        image_size: Letterbox every frame into an ``image_size`` square (longer side
            scaled to it, centred, black padding); ``None`` keeps the native size.
        full_resolution: Always decode the full frame (the path before reduced decoding).

    Returns:
        An iterator of :class:`Frame`, one per requested index.

    Raises:
        DicomReadError: Bad file, bad index (out of range), bad view or image size; while
            iterating, a frame that cannot be decoded or windowed.
        NotImplementedError: Colour images, or a transfer syntax whose decoder plugin is
            not installed (the message says which package to install).
    """
    header = _read_header(path)
    name, info = header.path, header.info
    side = _view_side(view, name)
    if image_size is not None:
        try:
            size_ok = as_index(image_size) >= 1
        except TypeError:
            size_ok = False
        if not size_ok:
            raise DicomReadError(f"{name}: image_size {image_size!r} is not a positive integer")
    if info.photometric not in _MONOCHROME or int(header.ds.get("SamplesPerPixel", 1)) != 1:
        raise NotImplementedError(
            f"{name}: Photometric Interpretation {info.photometric!r} (Samples per Pixel "
            f"{header.ds.get('SamplesPerPixel', '?')}) is a colour image; only MONOCHROME1 and "
            "MONOCHROME2 images are supported"
        )
    _check_decoder(UID(info.transfer_syntax), name)
    indices = _indices(frames, info.n_frames, name)
    size = as_index(image_size) if image_size is not None else None
    reduced, note = _reduced_allowed(header, indices, size, full_resolution)
    if reduced:
        return _iter_reduced(header, indices, side=side, image_size=size)  # type: ignore[arg-type]
    return _iter_frames(header, indices, whole=frames is None, side=side, image_size=size, note=note)


def _view_side(view: str | None, name: str) -> str | None:
    if view is None:
        return None
    if not isinstance(view, str) or view.strip().lower() not in VIEWS:
        raise DicomReadError(
            f"{name}: view {view!r} is not one of {', '.join(VIEWS)} (upper case accepted)"
        )
    return view.strip()[0].upper()


def _indices(frames: Sequence[int] | None, n_frames: int, name: str) -> list[int]:
    if frames is None:
        return list(range(n_frames))
    if isinstance(frames, (str, bytes)):
        raise DicomReadError(f"{name}: frames must be a sequence of integers, got {frames!r}")
    out = set()
    for value in frames:
        try:
            i = as_index(value)
        except TypeError:
            raise DicomReadError(
                f"{name}: frame index {value!r} is not an integer; valid indices are "
                f"0..{n_frames - 1}"
            ) from None
        if not 0 <= i < n_frames:
            raise DicomReadError(
                f"{name}: frame index {i} is out of range: the file has {n_frames} frame(s), "
                f"valid indices are 0..{n_frames - 1}"
            )
        out.add(i)
    return sorted(out)


def _plugin_package(tsyntax: UID) -> str:
    if tsyntax in JPEG2000TransferSyntaxes:
        return "pylibjpeg-openjpeg"
    if tsyntax in JPEGLSTransferSyntaxes or tsyntax in JPEGTransferSyntaxes:
        return "pylibjpeg-libjpeg"
    if tsyntax in RLETransferSyntaxes:
        return "pylibjpeg-rle"
    return "pylibjpeg"


def _check_decoder(tsyntax: UID, name: str) -> None:
    """Fail before decoding when pydicom has no working decoder for the transfer syntax."""
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise NotImplementedError(
            f"{name}: transfer syntax {tsyntax.name!r} ({tsyntax}) is not supported by "
            "pydicom's pixel data decoders"
        ) from None
    if not decoder.is_available:
        package = _plugin_package(tsyntax)
        missing = "; ".join(decoder.missing_dependencies) or "no plugin registered"
        raise NotImplementedError(
            f"{name}: cannot decode {tsyntax.name!r} ({tsyntax}) pixel data: no decoding "
            f"plugin is installed. Install one with `pip install pylibjpeg {package}` "
            f"(pydicom reports: {missing})"
        )


def _iter_frames(
    header: _Header,
    indices: list[int],
    *,
    whole: bool,
    side: str | None,
    image_size: int | None,
    note: str | None = None,
) -> Iterator[Frame]:
    name, ds, info = header.path, header.ds, header.info
    if not indices:
        return
    pixels = _pixel_source(header, None if whole else indices)
    rotate: bool | None = None
    tables: dict[tuple[Any, ...], Any] = {}  # value tables of this volume, per window
    try:
        for index in indices:
            try:
                raw = next(pixels)
            except StopIteration:
                raise DicomReadError(
                    f"{name}: pydicom yielded no frame {index} of {info.n_frames}; the pixel "
                    "data is shorter than the header says"
                ) from None
            except (DicomReadError, MemoryError):
                raise
            except NotImplementedError as exc:
                raise NotImplementedError(f"{name}: frame {index}: {exc}") from exc
            except Exception as exc:  # decoders raise RuntimeError, ValueError, ...
                raise DicomReadError(
                    f"{name}: frame {index} of {info.n_frames} could not be decoded "
                    f"({UID(info.transfer_syntax).name}): "
                    f"{type(exc).__name__}: {exc}. The file is corrupt or truncated"
                ) from exc
            if raw.ndim != 2:
                raise NotImplementedError(
                    f"{name}: frame {index} decoded to shape {raw.shape}; only single-sample "
                    "(monochrome) images are supported"
                )
            if rotate is None:
                # Decided once, on the lowest requested frame as stored, as Duke's reader does.
                rotate = side is not None and image_side(raw) != side
            image, center, width, source = _render_checked(raw, ds, index, info, tables, name)
            del raw
            if rotate:
                image = np.ascontiguousarray(np.flip(image, (0, 1)))
            scale, pad_x, pad_y = 1.0, 0, 0
            if image_size is not None:
                image, scale, pad_x, pad_y = letterbox(image, as_index(image_size))
            yield Frame(
                index=index,
                image=image,
                window_center=center,
                window_width=width,
                window_source=source,
                rotated=bool(rotate),
                scale=scale,
                pad_x=pad_x,
                pad_y=pad_y,
                decode_note=note,
            )
    finally:
        pixels.close()  # closes the file pydicom opened


def decode_level(rows: int, columns: int, levels: int, image_size: int) -> int:
    """Resolution levels to discard before letterboxing a frame into ``image_size``.

    The coarsest level whose longer side is still at least ``image_size``, never more
    than the codestream's decomposition levels nor :data:`MAX_DECODE_LEVEL`.

    Args:
        rows: Full-resolution rows.
        columns: Full-resolution columns.
        levels: Decomposition levels of the codestream (its COD marker).
        image_size: Side of the letterboxed output.

    Returns:
        0 (decode in full) up to ``min(levels, MAX_DECODE_LEVEL)``.
    """
    from tasks import j2k

    level = 0
    for candidate in range(1, min(levels, MAX_DECODE_LEVEL) + 1):
        if max(j2k.reduced_shape(rows, columns, candidate)) < image_size:
            break
        level = candidate
    return level


def _reduced_allowed(
    header: _Header, indices: list[int], image_size: int | None, full_resolution: bool
) -> tuple[bool, str | None]:
    """Whether the frames may be decoded at a reduced resolution, else why not (or None)."""
    info, ds = header.info, header.ds
    if image_size is None or full_resolution or not indices:
        return False, None
    if UID(info.transfer_syntax) not in JPEG2000TransferSyntaxes:
        return False, None  # no resolution levels to discard: decoded in full, as always
    if info.modality not in _REDUCED_MODALITIES:
        return False, (f"modality {info.modality or 'missing'}: reduced decoding is validated on "
                       "breast images (MG) only, decoded in full")
    if header.pixels_at is None:
        return False, "pixel data offset unknown, decoded in full"
    if not _has_voi_lut(ds) and any(_window(ds, i)[0] is None for i in indices):
        return False, "no VOI window in the file: the frame-range window needs the full frame"
    from tasks import j2k

    ok, why = j2k.available()
    if not ok:
        return False, f"reduced decoding unavailable ({why}), decoded in full"
    return True, None


def _iter_reduced(header: _Header, indices: list[int], *, side: str | None, image_size: int) -> Iterator[Frame]:
    """:func:`_iter_frames` for JPEG 2000 frames decoded at :func:`decode_level`."""
    from pydicom.encaps import get_frame

    from tasks import j2k

    name, ds, info = header.path, header.ds, header.info
    syntax = UID(info.transfer_syntax).name
    extended = None
    if ds.get("ExtendedOffsetTable") is not None and ds.get("ExtendedOffsetTableLengths") is not None:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)

    with open(name, "rb") as fh:

        def codestream(index: int) -> bytes:
            fh.seek(header.pixels_at)
            try:
                return get_frame(fh, index, number_of_frames=info.n_frames, extended_offsets=extended)
            except Exception as exc:  # pydicom raises ValueError, struct.error, ...
                raise DicomReadError(
                    f"{name}: frame {index} of {info.n_frames}: its codestream could not be located "
                    f"({type(exc).__name__}: {exc}); the file is corrupt or truncated"
                ) from exc

        def levels_of(data: bytes, index: int) -> dict[str, int]:
            try:
                return j2k.codestream_info(data)
            except j2k.J2KError as exc:
                raise DicomReadError(f"{name}: frame {index} of {info.n_frames} ({syntax}): {exc}") from exc

        first = codestream(indices[0])
        cinfo = levels_of(first, indices[0])
        if (cinfo["rows"], cinfo["columns"]) != (info.rows, info.columns) or cinfo["components"] != 1:
            note = (f"codestream is {cinfo['columns']} x {cinfo['rows']} with {cinfo['components']} "
                    f"component(s), the header says {info.columns} x {info.rows}: decoded in full")
            yield from _iter_frames(header, indices, whole=False, side=side, image_size=image_size, note=note)
            return
        level = decode_level(info.rows, info.columns, cinfo["levels"], image_size)
        if level == 0:
            yield from _iter_frames(header, indices, whole=False, side=side, image_size=image_size)
            return

        rotate: bool | None = None
        tables: dict[tuple[Any, ...], Any] = {}
        for k, index in enumerate(indices):
            data = first if k == 0 else codestream(index)
            frame_level = level if k == 0 else min(level, levels_of(data, index)["levels"])
            note = None
            try:
                values, precision, signed = j2k.decode(data, level=frame_level)
            except j2k.J2KError as exc:
                # A codestream the reduced path cannot handle is decoded in full instead.
                note = f"reduced decode at level {frame_level} failed ({exc}), decoded in full"
                frame_level = 0
                try:
                    values, precision, signed = j2k.decode(data)
                except j2k.J2KError as exc2:
                    raise DicomReadError(
                        f"{name}: frame {index} of {info.n_frames} could not be decoded ({syntax}): "
                        f"{exc2}. The file is corrupt or truncated"
                    ) from exc2
            raw = j2k.to_stored(values, precision, signed, info.pixel_representation)
            del values
            if rotate is None:
                # Decided once, on the lowest requested frame's full-resolution edge columns
                # (decoding only the code-blocks they touch), exactly as in the full path.
                rotate = side is not None and _edge_side(data, cinfo, info, name, index) != side
            image, center, width, source = _render_checked(raw, ds, index, info, tables, name)
            del raw
            if rotate:
                image = np.ascontiguousarray(np.flip(image, (0, 1)))
            image, scale, pad_x, pad_y = letterbox(
                image, image_size, native_shape=(info.rows, info.columns), level=frame_level,
                rotated=bool(rotate),
            )
            yield Frame(index=index, image=image, window_center=center, window_width=width,
                        window_source=source, rotated=bool(rotate), scale=scale, pad_x=pad_x,
                        pad_y=pad_y, decode_level=frame_level, decode_note=note)


def _edge_side(data: bytes, cinfo: dict[str, int], info: VolumeInfo, name: str, index: int) -> str:
    """:func:`image_side` of a frame from its full-resolution first and last columns."""
    from tasks import j2k

    x0, y0 = cinfo["x0"], cinfo["y0"]
    try:
        columns = [
            j2k.to_stored(*j2k.decode(data, area=(x, y0, x + 1, y0 + info.rows)), info.pixel_representation)
            for x in (x0, x0 + info.columns - 1)
        ]
    except j2k.J2KError as exc:
        raise DicomReadError(
            f"{name}: frame {index}: the edge columns could not be decoded to orient the frame: {exc}"
        ) from exc
    return image_side(np.hstack(columns))


def _render_checked(
    raw: np.ndarray, ds: Dataset, index: int, info: VolumeInfo, tables: dict[tuple[Any, ...], Any], name: str
) -> tuple[np.ndarray, float | None, float | None, str]:
    """:func:`_render` with its errors named after the file and frame."""
    try:
        return _render(raw, ds, index, info, tables=tables)
    except (DicomReadError, MemoryError):
        raise
    except NotImplementedError as exc:
        raise NotImplementedError(f"{name}: frame {index}: {exc}") from exc
    except Exception as exc:
        raise DicomReadError(
            f"{name}: frame {index}: the modality LUT / VOI window could not be "
            f"applied: {type(exc).__name__}: {exc}"
        ) from exc


def _pixel_source(header: _Header, indices: list[int] | None) -> Iterator[np.ndarray]:
    """pydicom's frame iterator over the file: only ``indices`` (all frames when None)."""
    name = header.path
    if UID(header.info.transfer_syntax) != DeflatedExplicitVRLittleEndian:
        # From the path, pydicom reads the header and then seeks to each requested frame's
        # bytes (codestream), so nothing else is read or decoded; indices=None streams
        # the whole volume in one pass.
        return iter_pixels(name, indices=indices)
    # pydicom's file-based path cannot inflate a deflated dataset; deflated files are
    # small images, so inflate the whole dataset and hand it over.
    try:
        ds = dcmread(name)
    except Exception as exc:
        raise DicomReadError(
            f"{name}: the deflated dataset could not be inflated ({type(exc).__name__}: {exc}); "
            "the file is corrupt or truncated"
        ) from exc
    if not any(kw in ds for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DicomReadError(
            f"{name}: no (7FE0,0010) Pixel Data element: the file holds no image data"
        )
    return iter_pixels(ds, indices=indices)


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DS element, as float."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0]
    return float(value)


def _functional_item(
    ds: Dataset, index: int, sequence: str, required: tuple[str, ...]
) -> tuple[Dataset | None, str]:
    """The first item of ``sequence`` holding ``required``: the frame's own, else the shared one."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    groups = [(per_frame[index] if index < len(per_frame) else None, "per-frame"),
              (shared[0] if shared else None, "shared")]
    for group, where in groups:
        items = (group.get(sequence) or []) if group is not None else []
        if items and all(kw in items[0] for kw in required):
            return items[0], where
    return None, ""


def _modality_source(ds: Dataset, index: int) -> Dataset | None:
    """The dataset to hand ``apply_modality_lut``, or None when there is no transform."""
    item, _ = _functional_item(
        ds, index, "PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")
    )
    if item is not None:
        small = Dataset()
        small.RescaleSlope = item.RescaleSlope
        small.RescaleIntercept = item.RescaleIntercept
        return small
    if ds.get("ModalityLUTSequence") or ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        return ds  # read-only use; pydicom needs its file_meta for OW LUT data
    return None


def _window(ds: Dataset, index: int) -> tuple[Dataset | None, str]:
    """The window item for the frame and where it came from ('' when there is none)."""
    item, where = _functional_item(
        ds, index, "FrameVOILUTSequence", ("WindowCenter", "WindowWidth")
    )
    if item is not None:
        return item, where
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return ds, "top-level"
    return None, ""


def _has_voi_lut(ds: Dataset) -> bool:
    seq = ds.get("VOILUTSequence") or []
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def _render(
    raw: np.ndarray, ds: Dataset, index: int, info: VolumeInfo,
    *, tables: dict[tuple[Any, ...], tuple[np.ndarray, float | None, float | None, str]] | None = None,
) -> tuple[np.ndarray, float | None, float | None, str]:
    """Modality LUT, VOI window, 0..255 and MONOCHROME1 inversion for one stored frame.

    Every step is a function of the stored value alone (given a window), so for 8/16-bit
    integer frames much larger than their value domain the same steps run once over the
    domain (pydicom's functions, unchanged) and the frame is mapped through the resulting
    uint8 table: identical output, at a fraction of the cost of windowing millions of
    pixels in floating point. The frame-range fallback depends on the frame, so it does not.
    ``tables`` (one dict per volume) keeps the tables of the frames that share a window.
    """
    domain_size = 1 << (8 * raw.dtype.itemsize)
    window_item = _window(ds, index)[0]
    if (raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2 and raw.size > 4 * domain_size
            and (window_item is not None or _has_voi_lut(ds))):
        key = (raw.dtype.str, id(window_item), id(_functional_item(
            ds, index, "PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept"))[0]))
        cached = tables.get(key) if tables is not None else None
        if cached is None:
            info_min = int(np.iinfo(raw.dtype).min)
            domain = np.arange(info_min, info_min + domain_size, dtype=raw.dtype)[None, :]
            cached = _render_pixels(domain, ds, index, info)
            if tables is not None:
                tables[key] = cached
        table, center, width, source = cached
        positions = raw
        if raw.dtype.kind == "i":
            # Signed values index the table from its start (-2**(n-1) -> 0): flipping the
            # sign bit of the two's-complement pattern does exactly that.
            unsigned = np.dtype(f"u{raw.dtype.itemsize}")
            positions = raw.view(unsigned) ^ unsigned.type(domain_size // 2)
        return np.take(table[0], positions), center, width, source
    return _render_pixels(raw, ds, index, info)


def _render_pixels(
    raw: np.ndarray, ds: Dataset, index: int, info: VolumeInfo
) -> tuple[np.ndarray, float | None, float | None, str]:
    """The per-pixel steps of :func:`_render` (pydicom's modality LUT and VOI functions)."""
    arr: np.ndarray = raw
    modality = _modality_source(ds, index)
    if modality is not None:
        arr = apply_modality_lut(arr, modality)

    window_item, source = _window(ds, index)
    if source in ("top-level", "") and _has_voi_lut(ds):
        # pydicom prefers the VOI LUT Sequence over a top-level window (apply_voi_lut's
        # default); a functional-group window, being more specific, still wins over it.
        out = apply_voi(arr, ds)
        y_min, y_max = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        center = width = None
        source = "top-level"
    elif window_item is not None:
        # A small dataset: pydicom's apply_windowing only reads top-level elements, and it
        # writes to the dataset it is given (BitsStored, RescaleSlope), so never the header.
        small = Dataset()
        small.PhotometricInterpretation = info.photometric
        small.BitsStored = info.bits_stored
        small.PixelRepresentation = info.pixel_representation
        center = _first(window_item.WindowCenter)
        width = _first(window_item.WindowWidth)
        small.WindowCenter = center
        small.WindowWidth = width
        function = window_item.get("VOILUTFunction", ds.get("VOILUTFunction"))
        if function:
            small.VOILUTFunction = str(function)
        out = apply_windowing(arr, small)
        # The output range pydicom maps the window onto, for this small dataset (no
        # rescale or modality LUT on it): that of the stored pixel values.
        if info.pixel_representation:
            y_min = -float(2 ** (info.bits_stored - 1))
            y_max = float(2 ** (info.bits_stored - 1) - 1)
        else:
            y_min, y_max = 0.0, float(2**info.bits_stored - 1)
    else:
        # No window anywhere: stretch the frame's own range.
        y_min, y_max = float(arr.min()), float(arr.max())
        center, width = (y_min + y_max) / 2.0, y_max - y_min
        out = arr
        source = "frame-range"
    del arr

    image = np.asarray(out, dtype=np.float32)  # per-frame float32 from here on
    del out
    span = y_max - y_min
    if span > 0:
        image -= np.float32(y_min)
        image *= np.float32(255.0 / span)
        np.clip(image, 0.0, 255.0, out=image)
        np.rint(image, out=image)
    else:
        image[...] = 0.0
    result = image.astype(np.uint8)
    if info.photometric == "MONOCHROME1":
        # MONOCHROME1 stores dense tissue as low values; invert so that bright = dense.
        np.subtract(np.uint8(255), result, out=result)
    return result, center, width, source


# ---------------------------------------------------------------------------------------
# Geometry


def image_side(frame: np.ndarray) -> str:
    """The breast side of a frame as stored, by Duke's reference rule.

    The breast touches the image edge whose column has the larger sum:
    ``"R" if frame[:, 0].sum() < frame[:, -1].sum() else "L"``.

    Args:
        frame: A 2-D frame (stored values, before windowing).

    Returns:
        ``"L"`` or ``"R"``.
    """
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"image_side expects a 2-D frame, got shape {frame.shape}")
    # Integer sums stay exact (numpy widens them to 64 bits).
    left = frame[:, 0].sum()
    right = frame[:, -1].sum()
    return "R" if left < right else "L"


def letterbox(
    image: np.ndarray, size: int, *, native_shape: tuple[int, int] | None = None, level: int = 0,
    rotated: bool = False,
) -> tuple[np.ndarray, float, int, int]:
    """Scale the longer side of a uint8 image to ``size`` and centre it on black.

    Area averaging (BOX) when shrinking, bilinear when enlarging (Pillow).

    For a frame decoded with ``level`` JPEG 2000 resolution levels discarded, pass the
    full-resolution ``native_shape``: the geometry (scale, output size, padding) is that of
    the full-resolution frame, so boxes in full-resolution pixels map exactly, and the
    reduced image is resampled from the region that covers the full frame. The low-pass
    sample ``k`` of level ``r`` is centred on full-resolution pixel ``k * 2**r`` (the
    wavelet filters are centred on even samples), not on the middle of a ``2**r`` block.

    Args:
        image: 2-D ``uint8`` image (reduced when ``level > 0``).
        size: Side of the square output in pixels.
        native_shape: Full-resolution ``(rows, columns)``; default: ``image.shape``.
        level: Resolution levels discarded when ``image`` was decoded.
        rotated: Whether ``image`` was rotated by 180 degrees after decoding.

    Returns:
        ``(out, scale, pad_x, pad_y)``: the ``size`` x ``size`` image, the scale
        ``size / max(rows, columns)`` of the full-resolution frame, and the left and top
        padding in pixels.
    """
    from PIL import Image

    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"letterbox expects a 2-D uint8 image, got {image.dtype} {image.shape}")
    size = as_index(size)
    if size < 1:
        raise ValueError(f"letterbox size must be a positive integer, got {size}")
    rows, cols = native_shape if native_shape is not None else image.shape
    scale = size / max(rows, cols)
    new_h = min(size, max(1, round(rows * scale)))
    new_w = min(size, max(1, round(cols * scale)))
    box = None
    if level:
        step = 1 << level
        r_rows, r_cols = image.shape
        # Full-resolution coordinate of the centre of reduced pixel 0 (of the last one,
        # counted from the far edge, after a 180-degree rotation).
        off_x = cols - (r_cols - 1) * step - 0.5 if rotated else 0.5
        off_y = rows - (r_rows - 1) * step - 0.5 if rotated else 0.5
        box = (max(0.0, -off_x / step + 0.5), max(0.0, -off_y / step + 0.5),
               min(float(r_cols), (cols - off_x) / step + 0.5),
               min(float(r_rows), (rows - off_y) / step + 0.5))
    if box is not None or (new_h, new_w) != image.shape:
        pil = Image.fromarray(np.ascontiguousarray(image), mode="L")
        # Shrinking a 2457-row frame to a few hundred pixels: area averaging (BOX) uses every
        # source pixel, so small bright structures are not aliased away, and is the fastest.
        # Enlarging small images: bilinear.
        shrink = scale < 1 if box is None else size < max(box[2] - box[0], box[3] - box[1])
        resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
        resized = np.asarray(pil.resize((new_w, new_h), resample, box=box))
    else:
        resized = image
    out = np.zeros((size, size), dtype=np.uint8)
    pad_y = (size - new_h) // 2
    pad_x = (size - new_w) // 2
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return out, scale, pad_x, pad_y


def box_to_image(
    x: float, y: float, width: float, height: float, *, scale: float, pad_x: int, pad_y: int
) -> tuple[float, float, float, float]:
    """Map a box from oriented native pixels to the letterboxed image.

    Args:
        x: Left edge (BCS-DBT ``X``) in native pixels of the oriented frame.
        y: Top edge (``Y``).
        width: Box width (``Width``).
        height: Box height (``Height``).
        scale: The frame's :attr:`Frame.scale`.
        pad_x: The frame's :attr:`Frame.pad_x`.
        pad_y: The frame's :attr:`Frame.pad_y`.

    Returns:
        ``(x, y, width, height)`` in output pixels.
    """
    return (x * scale + pad_x, y * scale + pad_y, width * scale, height * scale)


# ---------------------------------------------------------------------------------------
# Export


def export_slices(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    frames: Sequence[int] | None = None,
    view: str | None = None,
    image_size: int | None = None,
    full_resolution: bool = False,
) -> list[dict]:
    """Write frames as 8-bit grayscale PNGs named by frame index (``0005.png``).

    Each PNG is written atomically. Arguments are as for :func:`read_frames`.

    Args:
        path: The DICOM file.
        out_dir: Folder for the PNGs (created if needed).
        frames: 0-based frame indices; ``None`` for all.
        view: ``lcc``, ``lmlo``, ``rcc`` or ``rmlo`` to orient like the reference reader.
        image_size: Letterbox side in pixels; ``None`` for native size.
        full_resolution: Decode every frame in full (no reduced JPEG 2000 decode).

    Returns:
        One dict per frame: ``frame, path, width, height, window_center, window_width,
        window_source, rotated, scale, pad_x, pad_y, decode_level, decode_note``.
    """
    from tasks.io import atomic_write_png

    out = Path(out_dir)
    records: list[dict] = []
    for frame in read_frames(path, frames, view=view, image_size=image_size, full_resolution=full_resolution):
        target = atomic_write_png(out / f"{frame.index:04d}.png", frame.image)
        records.append(
            {
                "frame": frame.index,
                "path": str(target),
                "width": int(frame.image.shape[1]),
                "height": int(frame.image.shape[0]),
                "window_center": frame.window_center,
                "window_width": frame.window_width,
                "window_source": frame.window_source,
                "rotated": frame.rotated,
                "scale": frame.scale,
                "pad_x": frame.pad_x,
                "pad_y": frame.pad_y,
                "decode_level": frame.decode_level,
                "decode_note": frame.decode_note,
            }
        )
    return records
