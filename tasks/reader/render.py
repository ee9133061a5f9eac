"""Stored pixel values to an 8-bit image with pydicom's own functions.

The Modality LUT / rescale (``apply_modality_lut``), taken from the frame's functional
groups (Pixel Value Transformation) when the file is an enhanced multi-frame one; the VOI
window (``apply_windowing``) or VOI LUT (``apply_voi``), looked up per frame, then shared,
then top level (tomosynthesis keeps it in the functional groups, pydicom looks only at the
top level); without any window the frame's own min..max. The windowed range is mapped to
0..255 and MONOCHROME1 is inverted (bright = dense).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

from tasks.reader.header import DicomReadError, VolumeInfo


def render_checked(
    raw: np.ndarray, ds: Dataset, index: int, info: VolumeInfo, tables: dict[tuple[Any, ...], Any], name: str
) -> tuple[np.ndarray, float | None, float | None, str]:
    """:func:`render` with its errors named after the file and frame."""
    try:
        return render(raw, ds, index, info, tables=tables)
    except (DicomReadError, MemoryError):
        raise
    except NotImplementedError as exc:
        raise NotImplementedError(f"{name}: frame {index}: {exc}") from exc
    except Exception as exc:
        raise DicomReadError(
            f"{name}: frame {index}: the modality LUT / VOI window could not be "
            f"applied: {type(exc).__name__}: {exc}"
        ) from exc


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DS element, as float."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0]
    return float(value)


def functional_item(
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
    item, _ = functional_item(
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


def voi_window(ds: Dataset, index: int) -> tuple[Dataset | None, str]:
    """The window item for the frame and where it came from ('' when there is none)."""
    item, where = functional_item(
        ds, index, "FrameVOILUTSequence", ("WindowCenter", "WindowWidth")
    )
    if item is not None:
        return item, where
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return ds, "top-level"
    return None, ""


def has_voi_lut(ds: Dataset) -> bool:
    """Whether the file has a usable top-level VOI LUT Sequence (descriptor and data)."""
    seq = ds.get("VOILUTSequence") or []
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def render(
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
    window_item = voi_window(ds, index)[0]
    if (raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2 and raw.size > 4 * domain_size
            and (window_item is not None or has_voi_lut(ds))):
        key = (raw.dtype.str, id(window_item), id(functional_item(
            ds, index, "PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept"))[0]))
        cached = tables.get(key) if tables is not None else None
        if cached is None:
            info_min = int(np.iinfo(raw.dtype).min)
            domain = np.arange(info_min, info_min + domain_size, dtype=raw.dtype)[None, :]
            cached = render_pixels(domain, ds, index, info)
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
    return render_pixels(raw, ds, index, info)


def render_pixels(
    raw: np.ndarray, ds: Dataset, index: int, info: VolumeInfo
) -> tuple[np.ndarray, float | None, float | None, str]:
    """The per-pixel steps of :func:`render` (pydicom's modality LUT and VOI functions)."""
    arr: np.ndarray = raw
    modality = _modality_source(ds, index)
    if modality is not None:
        arr = apply_modality_lut(arr, modality)

    window_item, source = voi_window(ds, index)
    if source in ("top-level", "") and has_voi_lut(ds):
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
