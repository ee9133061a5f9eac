"""Geometry of the reader's frames: the breast side, letterboxing, boxes into image pixels."""

from __future__ import annotations

from operator import index as as_index

import numpy as np

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
