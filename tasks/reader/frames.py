"""Read monochrome DICOM images, BCS-DBT tomosynthesis volumes first, as 8-bit frames.

The reader decodes only the frames it is asked for (``pydicom.pixels.iter_pixels`` with
``indices``), so one slice of a 95-frame JPEG 2000 volume costs one codestream, not 95.
Pixel handling is pydicom's own:

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

The reader's modules: :mod:`tasks.reader.header` (header and structure checks,
:func:`read_info`), :mod:`tasks.reader.decode` (decoding the requested frames, in full or
at reduced JPEG 2000 resolution), :mod:`tasks.reader.render` (steps 2-4),
:mod:`tasks.reader.geometry` (orientation side, letterbox, box mapping). This module is the
entry point: :func:`read_frames` checks the arguments and picks the decode path.

Errors: bad input raises :class:`DicomReadError` (a ``ValueError``), valid but unsupported
input (colour, missing decoder plugin) raises ``NotImplementedError``; every message names
the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from operator import index as as_index
from pathlib import Path

from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
)

from tasks.reader.decode import Frame, iter_frames, iter_reduced, reduced_allowed
from tasks.reader.header import DicomReadError, read_header
from tasks.core.schema import VIEWS

__all__ = [
    "VIEWS",
    "DicomReadError",
    "Frame",
    "export_slices",
    "read_frames",
]

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


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
    the cost. The window, the orientation (decided on the reference frame's full-resolution edge
    columns) and the letterbox geometry (``scale`` maps full-resolution pixels) stay those
    of the full decode; only the pixels are resampled from the coarser band.

    Args:
        path: The DICOM file.
        frames: 0-based frame indices; ``None`` for all frames. Duplicates are dropped
            and frames are yielded in ascending index order.
        view: ``lcc``, ``lmlo``, ``rcc`` or ``rmlo`` (any case), to orient the frames like
            Duke's reference reader: when :func:`image_side` of the volume's reference frame
            (:func:`tasks.reader.decode.reference_frame`, the central one, as stored) differs
            from the view's side, every returned frame is rotated by 180 degrees. One decision
            per volume, whatever frames are asked for, so a whole-volume read and a single
            slice agree. ``None`` returns frames as stored.
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
    header = read_header(path)
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
            # The tag, never its value: a malformed header value may carry anything.
            f"{name}: Photometric Interpretation (0028,0004) is not MONOCHROME1 or MONOCHROME2, or Samples "
            "per Pixel (0028,0002) is not 1: only single-sample grayscale images are supported"
        )
    _check_decoder(UID(info.transfer_syntax), name)
    indices = _indices(frames, info.n_frames, name)
    size = as_index(image_size) if image_size is not None else None
    reduced, note = reduced_allowed(header, indices, size, full_resolution)
    if reduced:
        return iter_reduced(header, indices, side=side, image_size=size)  # type: ignore[arg-type]
    return iter_frames(header, indices, whole=frames is None, side=side, image_size=size, note=note)


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
    from tasks.core.files import atomic_write_png

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
