"""Reduced-resolution JPEG 2000 decoding: the stored low-pass bands of the wavelet pyramid.

A JPEG 2000 codestream is a wavelet pyramid: discarding ``r`` resolution levels gives the
low-pass band the encoder stored, ``ceil(n / 2**r)`` pixels per side, for a fraction of
the decode cost (measured on 2457 x 1890 frames: 4x at r = 1, 16x at r = 2, 41x at r = 3).

pylibjpeg-openjpeg's ``openjpeg.decode`` cannot discard levels, but the libopenjp2 it
bundles (statically, inside its ``_openjpeg`` extension module, which pydicom already
loads) exports the ``opj_*`` functions; this module calls them through :mod:`ctypes`:
``opj_dparameters_t.cp_reduce = r`` before ``opj_setup_decoder``. At ``r = 0`` the output
equals ``openjpeg.decode``'s. :func:`to_stored` turns the decoder's 32-bit samples into the
array pydicom itself would return (container size from the J2K precision, signedness from
Pixel Representation, pydicom's J2K sign correction), so everything downstream (modality
LUT, window) runs on the same stored values as pydicom's own decode.

When the library or one of its symbols cannot be reached, :func:`available` says why and
the reader decodes every frame in full.
"""

from __future__ import annotations

import ctypes
import math
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint,
    c_uint16,
    c_uint32,
    c_void_p,
)
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "J2KError",
    "available",
    "codestream_info",
    "decode",
    "reduced_shape",
    "to_stored",
]

_OPJ_PATH_LEN = 4096
_CODEC_J2K, _CODEC_JP2 = 0, 2
_JP2_SIGNATURE = b"\x00\x00\x00\x0c\x6a\x50\x20\x20"
_STREAM_CHUNK = 1 << 20


class J2KError(RuntimeError):
    """libopenjp2 could not decode a codestream; the message carries its own error text."""


class _DParameters(Structure):
    """``opj_dparameters_t`` (openjpeg.h, 2.x)."""

    _fields_ = [
        ("cp_reduce", c_uint32),
        ("cp_layer", c_uint32),
        ("infile", c_char * _OPJ_PATH_LEN),
        ("outfile", c_char * _OPJ_PATH_LEN),
        ("decod_format", c_int),
        ("cod_format", c_int),
        ("DA_x0", c_uint32),
        ("DA_x1", c_uint32),
        ("DA_y0", c_uint32),
        ("DA_y1", c_uint32),
        ("m_verbose", c_int),
        ("tile_index", c_uint32),
        ("nb_tile_to_decode", c_uint32),
        ("jpwl_correct", c_int),
        ("jpwl_exp_comps", c_int),
        ("jpwl_max_tiles", c_int),
        ("flags", c_uint),
        # Headroom: should a future 2.x append a field, the library writes into this
        # instead of past the end of the structure.
        ("_reserved", c_char * 512),
    ]


class _ImageComp(Structure):
    """``opj_image_comp_t``."""

    _fields_ = [
        ("dx", c_uint32), ("dy", c_uint32), ("w", c_uint32), ("h", c_uint32),
        ("x0", c_uint32), ("y0", c_uint32), ("prec", c_uint32), ("bpp", c_uint32),
        ("sgnd", c_uint32), ("resno_decoded", c_uint32), ("factor", c_uint32),
        ("data", POINTER(c_int32)), ("alpha", c_uint16),
    ]


class _Image(Structure):
    """``opj_image_t``."""

    _fields_ = [
        ("x0", c_uint32), ("y0", c_uint32), ("x1", c_uint32), ("y1", c_uint32),
        ("numcomps", c_uint32), ("color_space", c_int), ("comps", POINTER(_ImageComp)),
        ("icc_profile_buf", c_void_p), ("icc_profile_len", c_uint32),
    ]


_READ_FN = CFUNCTYPE(c_size_t, c_void_p, c_size_t, c_void_p)
_SKIP_FN = CFUNCTYPE(c_int64, c_int64, c_void_p)
_SEEK_FN = CFUNCTYPE(c_int, c_int64, c_void_p)
_MSG_FN = CFUNCTYPE(None, c_char_p, c_void_p)


@lru_cache(maxsize=1)
def _library() -> tuple[Any, str]:
    """The libopenjp2 functions of pylibjpeg-openjpeg's extension, or (None, why not)."""
    try:
        import _openjpeg  # pylibjpeg-openjpeg's extension module, libopenjp2 linked in
    except ImportError as exc:
        return None, f"pylibjpeg-openjpeg is not installed ({exc})"
    try:
        lib = ctypes.CDLL(_openjpeg.__file__)
        signatures: dict[str, tuple[Any, list[Any]]] = {
            "opj_create_decompress": (c_void_p, [c_int]),
            "opj_set_default_decoder_parameters": (None, [POINTER(_DParameters)]),
            "opj_setup_decoder": (c_int, [c_void_p, POINTER(_DParameters)]),
            "opj_set_error_handler": (c_int, [c_void_p, _MSG_FN, c_void_p]),
            "opj_stream_create": (c_void_p, [c_size_t, c_int]),
            "opj_stream_set_read_function": (None, [c_void_p, _READ_FN]),
            "opj_stream_set_skip_function": (None, [c_void_p, _SKIP_FN]),
            "opj_stream_set_seek_function": (None, [c_void_p, _SEEK_FN]),
            "opj_stream_set_user_data": (None, [c_void_p, c_void_p, c_void_p]),
            "opj_stream_set_user_data_length": (None, [c_void_p, ctypes.c_uint64]),
            "opj_read_header": (c_int, [c_void_p, c_void_p, POINTER(POINTER(_Image))]),
            "opj_set_decode_area": (c_int, [c_void_p, POINTER(_Image), c_int32, c_int32, c_int32, c_int32]),
            "opj_decode": (c_int, [c_void_p, c_void_p, POINTER(_Image)]),
            "opj_end_decompress": (c_int, [c_void_p, c_void_p]),
            "opj_image_destroy": (None, [POINTER(_Image)]),
            "opj_stream_destroy": (None, [c_void_p]),
            "opj_destroy_codec": (None, [c_void_p]),
            "opj_version": (c_char_p, []),
        }
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        version = lib.opj_version().decode()
    except (OSError, AttributeError) as exc:
        return None, f"libopenjp2 in {getattr(_openjpeg, '__file__', '_openjpeg')} is not usable ({exc})"
    if not version.startswith("2."):
        return None, f"libopenjp2 {version} is not a 2.x release"
    return lib, version


def available() -> tuple[bool, str]:
    """Whether reduced decoding works here, and the libopenjp2 version or why not."""
    lib, text = _library()
    return lib is not None, text


def _codestream_start(codestream: bytes) -> int:
    """Offset of the SOC marker: 0 for a raw codestream, after the JP2 boxes otherwise."""
    if not codestream.startswith(_JP2_SIGNATURE):
        return 0
    offset = 12
    while offset + 8 <= len(codestream):
        length = int.from_bytes(codestream[offset:offset + 4], "big")
        if codestream[offset + 4:offset + 8] == b"jp2c":
            return offset + 8
        if length < 8:
            break
        offset += length
    raise J2KError("JP2 file without a contiguous codestream (jp2c) box")


def codestream_info(codestream: bytes) -> dict[str, int]:
    """Size, precision and decomposition levels from the codestream's main header.

    Reads the SIZ marker (image size, precision and signedness of component 0) and the COD
    (and any COC) markers: the number of wavelet decomposition levels is the most levels a
    decoder can discard. Parsing stops at the first SOT (tile-part) marker.

    Args:
        codestream: A JPEG 2000 codestream (raw J2K or inside a JP2 file).

    Returns:
        ``{"rows", "columns", "precision", "signed", "levels"}``.

    Raises:
        J2KError: No SOC/SIZ/COD marker where the standard puts them.
    """
    pos = _codestream_start(codestream)
    if codestream[pos:pos + 4] != b"\xff\x4f\xff\x51":
        raise J2KError("not a JPEG 2000 codestream: no SOC marker followed by SIZ")
    info: dict[str, int] = {}
    pos += 2
    levels: list[int] = []
    end = len(codestream)
    while pos + 4 <= end:
        marker = int.from_bytes(codestream[pos:pos + 2], "big")
        length = int.from_bytes(codestream[pos + 2:pos + 4], "big")
        body = codestream[pos + 4:pos + 2 + length]
        if marker == 0xFF51:  # SIZ: Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, ..., Csiz, Ssiz0
            x1, y1 = int.from_bytes(body[2:6], "big"), int.from_bytes(body[6:10], "big")
            x0, y0 = int.from_bytes(body[10:14], "big"), int.from_bytes(body[14:18], "big")
            ssiz = body[36]
            info.update(columns=x1 - x0, rows=y1 - y0, x0=x0, y0=y0,
                        precision=(ssiz & 0x7F) + 1, signed=int(bool(ssiz & 0x80)))
        elif marker == 0xFF52:  # COD: Scod, SGcod (4 bytes), SPcod: decomposition levels first
            levels.append(body[5])
        elif marker == 0xFF53:  # COC: Ccoc (1 or 2 bytes), Scoc, SPcoc: levels first
            ccoc = 2 if info.get("components", 1) >= 257 else 1
            levels.append(body[ccoc + 1])
        elif marker == 0xFF90:  # SOT: end of the main header
            break
        if marker == 0xFF51:
            info["components"] = int.from_bytes(body[34:36], "big")
        pos += 2 + length
    if "rows" not in info or not levels:
        raise J2KError("JPEG 2000 main header without SIZ or COD marker")
    info["levels"] = min(levels)
    return info


def reduced_shape(rows: int, columns: int, level: int, *, x0: int = 0, y0: int = 0) -> tuple[int, int]:
    """Rows and columns of the image after discarding ``level`` resolution levels.

    The reference grid is divided by ``2**level`` with rounding up (ISO/IEC 15444-1, B.5),
    so 2457 rows become 615 at level 2, not the 614 that rounding to nearest gives.
    """
    step = 1 << level
    return (math.ceil((y0 + rows) / step) - math.ceil(y0 / step),
            math.ceil((x0 + columns) / step) - math.ceil(x0 / step))


class _MemoryStream:
    """An OpenJPEG input stream over bytes in memory, with the decoder's error messages.

    Python callbacks are called a handful of times per frame (1 MiB chunks), so they cost
    microseconds. The object holds the ctypes callbacks, so they live as long as it does.
    """

    def __init__(self, codestream: bytes) -> None:
        self.data = bytes(codestream)
        self.size = len(self.data)
        self.pos = 0
        self.errors: list[str] = []
        # The bytes object's own buffer (immutable, alive as long as self): no copy.
        self.base = ctypes.cast(ctypes.c_char_p(self.data), c_void_p).value or 0
        self.callbacks = (_READ_FN(self.read), _SKIP_FN(self.skip), _SEEK_FN(self.seek),
                          _MSG_FN(self.on_error))

    def read(self, dest: int, n: int, _user: int) -> int:
        if self.pos >= self.size:
            return c_size_t(-1).value
        n = min(n, self.size - self.pos)
        ctypes.memmove(dest, self.base + self.pos, n)
        self.pos += n
        return n

    def skip(self, n: int, _user: int) -> int:
        if self.pos + n > self.size or self.pos + n < 0:
            self.pos = self.size
            return -1
        self.pos += n
        return n

    def seek(self, n: int, _user: int) -> int:
        if n < 0 or n > self.size:
            return 0
        self.pos = n
        return 1

    def on_error(self, msg: bytes, _user: int) -> None:
        self.errors.append(msg.decode(errors="replace").strip())


def decode(codestream: bytes, *, level: int = 0,
           area: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, int, bool]:
    """Decode component 0 of a codestream, discarding ``level`` resolution levels.

    Args:
        codestream: A JPEG 2000 codestream (raw J2K or JP2).
        level: Resolution levels to discard (0: full resolution).
        area: ``(x0, y0, x1, y1)`` in full-resolution pixels to decode only that region
            (libopenjp2 then decodes only the code-blocks it touches).

    Returns:
        ``(values, precision, signed)``: the samples as ``int32`` (rows, columns), as the
        decoder produced them, and the component's precision and signedness.

    Raises:
        J2KError: libopenjp2 is not reachable or refused the codestream (its message).
    """
    lib, why = _library()
    if lib is None:
        raise J2KError(f"reduced JPEG 2000 decoding unavailable: {why}")
    source = _MemoryStream(codestream)
    size, errors, callbacks = source.size, source.errors, source.callbacks
    fmt = _CODEC_JP2 if source.data.startswith(_JP2_SIGNATURE) else _CODEC_J2K
    codec = stream = None
    image = POINTER(_Image)()
    try:
        codec = lib.opj_create_decompress(fmt)
        stream = lib.opj_stream_create(_STREAM_CHUNK, 1)
        if not codec or not stream:
            raise J2KError("libopenjp2 could not create a decoder")
        lib.opj_set_error_handler(codec, callbacks[3], None)
        lib.opj_stream_set_read_function(stream, callbacks[0])
        lib.opj_stream_set_skip_function(stream, callbacks[1])
        lib.opj_stream_set_seek_function(stream, callbacks[2])
        lib.opj_stream_set_user_data_length(stream, size)
        params = _DParameters()
        lib.opj_set_default_decoder_parameters(ctypes.byref(params))
        params.cp_reduce = level
        params.decod_format = fmt
        if not lib.opj_setup_decoder(codec, ctypes.byref(params)):
            raise J2KError(f"libopenjp2 refused the decoder setup: {'; '.join(errors)}")
        if not lib.opj_read_header(stream, codec, ctypes.byref(image)):
            raise J2KError(f"libopenjp2 could not read the header: {'; '.join(errors)}")
        if area is not None and not lib.opj_set_decode_area(codec, image, *area):
            raise J2KError(f"libopenjp2 refused the decode area {area}: {'; '.join(errors)}")
        if not lib.opj_decode(codec, stream, image) or not lib.opj_end_decompress(codec, stream):
            raise J2KError(f"libopenjp2 could not decode at level {level}: {'; '.join(errors)}")
        comp = image.contents.comps[0]
        rows, cols = int(comp.h), int(comp.w)
        if not comp.data or rows == 0 or cols == 0:
            raise J2KError(f"libopenjp2 returned no samples at level {level}")
        values = np.ctypeslib.as_array(comp.data, shape=(rows, cols)).copy()
        return values, int(comp.prec), bool(comp.sgnd)
    finally:
        if image:
            lib.opj_image_destroy(image)
        if stream:
            lib.opj_stream_destroy(stream)
        if codec:
            lib.opj_destroy_codec(codec)


def to_stored(values: np.ndarray, precision: int, signed: bool, pixel_representation: int) -> np.ndarray:
    """The decoder's samples as the array pydicom returns for the frame.

    pylibjpeg-openjpeg writes each sample into a container of 1, 2 or 4 bytes chosen by
    the J2K precision; pydicom reads it as signed when Pixel Representation is 1, and when
    the codestream's signedness disagrees with Pixel Representation it sign-corrects by
    shifting left and back right over the unused bits
    (``pydicom.pixels.decoders.base._apply_sign_correction``). The same steps here.
    """
    if not 0 < precision <= 32:
        raise J2KError(f"J2K precision {precision} is not supported (1..32 bits)")
    itemsize = 1 if precision <= 8 else 2 if precision <= 16 else 4
    out = values.astype(f"{'i' if pixel_representation else 'u'}{itemsize}")
    shift = 8 * itemsize - precision
    if shift and int(signed) != int(pixel_representation):
        np.left_shift(out, shift, out=out)
        np.right_shift(out, shift, out=out)
    return out
