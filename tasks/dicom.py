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
    "box_to_image",
    "export_slices",
    "image_side",
    "letterbox",
    "read_frames",
    "read_info",
]

#: The views of the BCS-DBT file-path CSV; the first letter is the breast side.
VIEWS: tuple[str, ...] = ("lcc", "lmlo", "rcc", "rmlo")

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")

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


@dataclass(frozen=True)
class _Header:
    """The parsed header of one file, read once per call."""

    path: str
    ds: Dataset
    info: VolumeInfo


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
            if tsyntax != DeflatedExplicitVRLittleEndian:
                _check_pixel_data(fh, ds, tsyntax, name)
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
    return _Header(path=name, ds=ds, info=info)


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


def _check_pixel_data(fh: Any, ds: Dataset, tsyntax: UID, name: str) -> None:
    """Check that pixel data follows the header and is complete, seeking rather than reading."""
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
        return

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


# ---------------------------------------------------------------------------------------
# Frames


def read_frames(
    path: str | os.PathLike[str],
    frames: Sequence[int] | None = None,
    *,
    view: str | None = None,
    image_size: int | None = None,
) -> Iterator[Frame]:
    """Decode, window and (optionally) orient and letterbox the frames asked for.

    Only the frames in ``frames`` are decoded. The header is read and every argument is
    checked when this function is called; decoding happens while iterating.

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
    return _iter_frames(header, indices, whole=frames is None, side=side, image_size=image_size)


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
            try:
                image, center, width, source = _render(raw, ds, index, info, tables=tables)
            except (DicomReadError, MemoryError):
                raise
            except NotImplementedError as exc:
                raise NotImplementedError(f"{name}: frame {index}: {exc}") from exc
            except Exception as exc:
                raise DicomReadError(
                    f"{name}: frame {index}: the modality LUT / VOI window could not be "
                    f"applied: {type(exc).__name__}: {exc}"
                ) from exc
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
            )
    finally:
        pixels.close()  # closes the file pydicom opened


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
        return table[0][positions], center, width, source
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


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """Scale the longer side of a uint8 image to ``size`` and centre it on black.

    Bilinear resizing in Pillow, which widens its kernel when shrinking (antialiased, like
    torchvision's default ``Resize``), so no aliasing and no ringing.

    Args:
        image: 2-D ``uint8`` image.
        size: Side of the square output in pixels.

    Returns:
        ``(out, scale, pad_x, pad_y)``: the ``size`` x ``size`` image, the scale
        ``size / max(rows, columns)``, and the left and top padding in pixels.
    """
    from PIL import Image

    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"letterbox expects a 2-D uint8 image, got {image.dtype} {image.shape}")
    size = as_index(size)
    if size < 1:
        raise ValueError(f"letterbox size must be a positive integer, got {size}")
    rows, cols = image.shape
    scale = size / max(rows, cols)
    new_h = min(size, max(1, round(rows * scale)))
    new_w = min(size, max(1, round(cols * scale)))
    if (new_h, new_w) != (rows, cols):
        pil = Image.fromarray(np.ascontiguousarray(image), mode="L")
        # Shrinking a 2457-row frame to a few hundred pixels: area averaging (BOX) uses every
        # source pixel, so small bright structures are not aliased away, and is the fastest.
        # Enlarging small images: bilinear.
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        resized = np.asarray(pil.resize((new_w, new_h), resample))
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
) -> list[dict]:
    """Write frames as 8-bit grayscale PNGs named by frame index (``0005.png``).

    Each PNG is written atomically. Arguments are as for :func:`read_frames`.

    Args:
        path: The DICOM file.
        out_dir: Folder for the PNGs (created if needed).
        frames: 0-based frame indices; ``None`` for all.
        view: ``lcc``, ``lmlo``, ``rcc`` or ``rmlo`` to orient like the reference reader.
        image_size: Letterbox side in pixels; ``None`` for native size.

    Returns:
        One dict per frame: ``frame, path, width, height, window_center, window_width,
        window_source, rotated, scale, pad_x, pad_y``.
    """
    from tasks.io import atomic_write_png

    out = Path(out_dir)
    records: list[dict] = []
    for frame in read_frames(path, frames, view=view, image_size=image_size):
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
            }
        )
    return records
