"""Decoding the requested frames: pydicom's frame iterator, or JPEG 2000 at reduced resolution.

:func:`iter_frames` decodes through ``pydicom.pixels.iter_pixels`` (only the requested
frames' codestreams are read). :func:`iter_reduced` decodes JPEG 2000 frames of breast
images at :func:`decode_level` through :mod:`tasks.reader.j2k`, keeping the window, orientation
and letterbox geometry of the full decode. Both yield :class:`Frame`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from operator import index as as_index
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.pixels import iter_pixels
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, JPEG2000TransferSyntaxes

from tasks.reader.geometry import image_side, letterbox
from tasks.reader.header import DicomHeader, DicomReadError, VolumeInfo
from tasks.reader.render import has_voi_lut, render_checked, voi_window

#: Most JPEG 2000 resolution levels the reader discards. Measured on the full-size
#: synthetic frame (tests/tasks/reader/test_frames.py, docs/scaling.md): discarding 2 levels keeps
#: the 8-bit output within 1 grey level on average and 4 at the 99.9th percentile of the
#: full decode + the same resize inside the breast at 224, 299 and 500 px; discarding 3
#: breaks it (mean 1.1, p99.9 5 at 224 px), so the rule stops at 2.
MAX_DECODE_LEVEL = 2

#: Modalities the reduced decode is validated on. Radiographs, MR and CT with sharp edges
#: and narrow windows (pydicom-data's RG3, MR2, 693) break the bound already at 1 level.
_REDUCED_MODALITIES = ("MG",)


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

    def is_blank(self) -> bool:
        """Whether the image area (inside the letterbox padding) holds a single value: all-zero or
        constant pixel data, or a window that maps the whole frame to one grey."""
        h, w = self.image.shape[:2]
        # One pixel in from the padding: the resampled edge may blend image and padding.
        y0, x0 = int(self.pad_y) + 1, int(self.pad_x) + 1
        content = self.image[y0:max(y0, h - y0), x0:max(x0, w - x0)]
        if content.size == 0:
            content = self.image
        return bool(content.min() == content.max())


def iter_frames(
    header: DicomHeader,
    indices: list[int],
    *,
    whole: bool,
    side: str | None,
    image_size: int | None,
    note: str | None = None,
) -> Iterator[Frame]:
    """Decode ``indices`` with pydicom (all frames in one pass when ``whole``) and render them."""
    name, ds, info = header.path, header.ds, header.info
    if not indices:
        return
    rotate = side is not None and volume_side(header) != side
    pixels = _pixel_source(header, None if whole else indices)
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
            image, center, width, source = render_checked(raw, ds, index, info, tables, name)
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
    from tasks.reader import j2k

    level = 0
    for candidate in range(1, min(levels, MAX_DECODE_LEVEL) + 1):
        if max(j2k.reduced_shape(rows, columns, candidate)) < image_size:
            break
        level = candidate
    return level


def reduced_allowed(
    header: DicomHeader, indices: list[int], image_size: int | None, full_resolution: bool
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
    if not has_voi_lut(ds) and any(voi_window(ds, i)[0] is None for i in indices):
        return False, "no VOI window in the file: the frame-range window needs the full frame"
    from tasks.reader import j2k

    ok, why = j2k.available()
    if not ok:
        return False, f"reduced decoding unavailable ({why}), decoded in full"
    return True, None


def iter_reduced(header: DicomHeader, indices: list[int], *, side: str | None, image_size: int) -> Iterator[Frame]:
    """:func:`iter_frames` for JPEG 2000 frames decoded at :func:`decode_level`."""
    from pydicom.encaps import get_frame

    from tasks.reader import j2k

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
            yield from iter_frames(header, indices, whole=False, side=side, image_size=image_size, note=note)
            return
        level = decode_level(info.rows, info.columns, cinfo["levels"], image_size)
        if level == 0:
            yield from iter_frames(header, indices, whole=False, side=side, image_size=image_size)
            return

        rotate = False
        if side is not None:
            # Decided once per volume, on its reference frame's full-resolution edge columns
            # (decoding only the code-blocks they touch), exactly as in the full path.
            ref = reference_frame(info.n_frames)
            rotate = _edge_side(first if ref == indices[0] else codestream(ref), cinfo, info, name, ref) != side
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
            image, center, width, source = render_checked(raw, ds, index, info, tables, name)
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


def reference_frame(n_frames: int) -> int:
    """The frame a volume's orientation is decided on: the central one (``n_frames // 2``).

    One frame per volume, whatever frames are requested, so a whole-volume read (``score``),
    a chunk of it and prepare's single slice rotate alike. The central frame holds the
    fullest outline of the breast against the chest-wall edge.
    """
    return max(0, int(n_frames)) // 2


def volume_side(header: DicomHeader) -> str:
    """:func:`image_side` of the volume's :func:`reference_frame` as stored (decoded in full)."""
    name, info = header.path, header.info
    ref = reference_frame(info.n_frames)
    pixels = _pixel_source(header, [ref])
    try:
        raw = next(pixels)
    except (DicomReadError, MemoryError, NotImplementedError):
        raise
    except StopIteration:
        raise DicomReadError(f"{name}: pydicom yielded no frame {ref} of {info.n_frames} to orient the volume") from None
    except Exception as exc:  # decoders raise RuntimeError, ValueError, ...
        raise DicomReadError(
            f"{name}: frame {ref} of {info.n_frames} (the volume's reference for its orientation) could not be "
            f"decoded ({UID(info.transfer_syntax).name}): {type(exc).__name__}: {exc}. The file is corrupt or truncated"
        ) from exc
    finally:
        pixels.close()
    if raw.ndim != 2:
        raise NotImplementedError(f"{name}: frame {ref} decoded to shape {raw.shape}; only monochrome images")
    return image_side(raw)


def _edge_side(data: bytes, cinfo: dict[str, int], info: VolumeInfo, name: str, index: int) -> str:
    """:func:`image_side` of a frame from its full-resolution first and last columns."""
    from tasks.reader import j2k

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


def _pixel_source(header: DicomHeader, indices: list[int] | None) -> Iterator[np.ndarray]:
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
